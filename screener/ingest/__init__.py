"""Ingest: the DICOM listener and the folder watcher, both feeding one accept path.

Both only check, spool and enqueue (:mod:`screener.ingest.accept`); nothing slow happens
on the way in.
"""

from __future__ import annotations
