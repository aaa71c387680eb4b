"""Logging: structlog, JSON lines by default, human-readable on a terminal.

Events are names, not sentences: ``log.info("instance_accepted", sop_instance_uid=...)``.
A processor drops any PHI-bearing key (patient name, ID, birth date) that slips into an
event, so a log line never carries them; log UIDs instead.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO, cast

import structlog

from screener.config import LoggingSettings

#: Keys that must never appear in a log line (PS3.15 E.1: basic de-identification profile).
PHI_KEYS = frozenset(
    {
        "patient_name",
        "patientname",
        "patient_id",
        "patientid",
        "patient_birth_date",
        "patientbirthdate",
        "other_patient_ids",
        "patient_address",
    }
)


def drop_phi(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: remove PHI keys from the event."""
    for key in [k for k in event_dict if k.lower() in PHI_KEYS]:
        del event_dict[key]
    return event_dict


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of writing (it may be replaced)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure_logging(settings: LoggingSettings, stream: Any = None) -> None:
    """Set up structlog (and route stdlib logging, e.g. pynetdicom's, through the same level)."""
    out = stream or _CurrentStderr()
    level = getattr(logging, settings.level.upper())
    use_console = settings.format == "console" or (
        settings.format == "auto" and hasattr(out, "isatty") and out.isatty()
    )
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            drop_phi,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, out)),
        cache_logger_on_first_use=False,
    )
    # pynetdicom logs data set dumps (PHI) at DEBUG; keep it to warnings and above.
    logging.basicConfig(
        stream=stream or sys.stderr,
        level=max(level, logging.WARNING),
        format="%(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("pynetdicom").setLevel(max(level, logging.WARNING))
