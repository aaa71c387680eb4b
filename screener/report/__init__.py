"""Reporting back to PACS: the second-read SR (and heatmap capture) and their delivery.

``sr`` builds the DICOM objects with highdicom, ``destinations`` parses where they go,
``export`` plans, sends (C-STORE), retries and dead-letters the deliveries.
"""

from __future__ import annotations
