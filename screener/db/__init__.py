"""The results database: SQLAlchemy 2.0 models, engine set-up and Alembic migrations."""

from __future__ import annotations

# summary is imported for its flush hook: every session keeps the worklist's study_scores
from screener.db import summary
from screener.db.engine import Database, utcnow
from screener.db.models import (
    OUTSIDE_DOMAIN,
    PAYLOAD_ASSESSMENT,
    PAYLOAD_RESULT,
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
    StudyScoreRow,
)

__all__ = [
    "OUTSIDE_DOMAIN",
    "PAYLOAD_ASSESSMENT",
    "PAYLOAD_RESULT",
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
    "StudyScoreRow",
    "summary",
    "utcnow",
]
