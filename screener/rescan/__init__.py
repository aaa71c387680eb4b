"""Nightly backlog rescans: what the PACS has and we missed, failed jobs, stale scores, the folder.

``run_rescan(settings, ...)`` does one rescan and returns a :class:`RescanSummary`;
``RescanScheduler`` runs it daily inside ``screener serve``; ``screener rescan`` runs it
from the command line (or a systemd timer, ``deploy/screener-rescan.timer``).
"""

from __future__ import annotations

from screener.rescan.query import RescanError
from screener.rescan.run import RescanSummary, StudyRef, run_rescan
from screener.rescan.schedule import RescanScheduler, next_run, parse_schedule

__all__ = [
    "RescanError",
    "RescanScheduler",
    "RescanSummary",
    "StudyRef",
    "next_run",
    "parse_schedule",
    "run_rescan",
]
