"""The results database: SQLAlchemy 2.0 models, engine set-up and Alembic migrations."""

from __future__ import annotations

from screener.db.engine import Database, utcnow
from screener.db.models import (
    OUTSIDE_DOMAIN,
    AuditEvent,
    Base,
    Export,
    Heartbeat,
    Installation,
    Instance,
    Job,
    JobState,
    Result,
    Review,
    Study,
)

__all__ = [
    "OUTSIDE_DOMAIN",
    "AuditEvent",
    "Base",
    "Database",
    "Export",
    "Heartbeat",
    "Installation",
    "Instance",
    "Job",
    "JobState",
    "Result",
    "Review",
    "Study",
    "utcnow",
]
