"""screener: a DICOM-aware daemon that flags chest X-rays likely showing pneumonia.

The flow, as the sub-packages are laid out:

    ingest (listener, watcher) -> queue (db jobs) -> imaging (pixel pipeline)
    -> model (inference) -> results -> report / export

``screener.serve.daemon`` wires the stages together in one place; the CLI lives in
``screener.cli`` and ``screener.commands``.
"""

from __future__ import annotations

__version__ = "0.1.0"
