"""SQLAlchemy models: studies, instances, jobs (the queue), results, exports and the audit trail.

No PHI is stored beyond what a radiologist's worklist shows (accession number, study date):
no PatientName, PatientID or birth date.
"""

from __future__ import annotations

import enum
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(
    64
)  # PS3.5 9.1 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_9.1>: a UID is at most 64 characters
CS = String(
    16
)  # PS3.5 6.2 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_6.2>: Code String, at most 16 characters
AE = String(
    16
)  # PS3.5 6.2 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_6.2>: Application Entity, at most 16 characters
LO = String(
    64
)  # PS3.5 6.2 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_6.2>: Long String, at most 64 characters

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    pass


Base.metadata.naming_convention = NAMING_CONVENTION


class JobState(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    REJECTED = "rejected"


_STATES = ", ".join(f"'{s.value}'" for s in JobState)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    accession_number: Mapped[str | None] = mapped_column(CS)
    study_date: Mapped[str | None] = mapped_column(String(8))  # DA, YYYYMMDD
    study_time: Mapped[str | None] = mapped_column(String(16))  # TM
    study_description: Mapped[str | None] = mapped_column(String(64))  # LO (0008,1030)
    modality: Mapped[str | None] = mapped_column(CS)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    instances: Mapped[list[Instance]] = relationship(back_populates="study")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str | None] = mapped_column(CS)
    body_part_examined: Mapped[str | None] = mapped_column(CS)
    view_position: Mapped[str | None] = mapped_column(CS)
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int] = mapped_column(Integer, default=1)
    # input facts the drift monitor compares with the bundle's reference (screener.monitor)
    bits_stored: Mapped[int | None] = mapped_column(Integer)
    photometric_interpretation: Mapped[str | None] = mapped_column(CS)
    manufacturer: Mapped[str | None] = mapped_column(LO)
    spool_path: Mapped[str] = mapped_column(String(1024))
    content_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(
        String(16)
    )  # "dicom" (C-STORE), "folder", "recovered", "web" or "dicomweb" (STOW-RS)
    calling_ae_title: Mapped[str | None] = mapped_column(AE)
    receive_count: Mapped[int] = mapped_column(Integer, default=1)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # set when retention removed the spooled file (screener.work.retention); the row stays
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    study: Mapped[Study] = relationship(back_populates="instances")
    jobs: Mapped[list[Job]] = relationship(back_populates="instance")


class Job(Base):
    """One unit of work in the queue; the jobs table *is* the queue."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"state IN ({_STATES})", name="state"),
        Index("ix_jobs_state_priority_id", "state", "priority", "id"),
        Index("ix_jobs_state_lease_expires_at", "state", "lease_expires_at"),
        # status: finished jobs counted by state and reason from the index alone
        Index("ix_jobs_state_reason", "state", "reason"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(
        String(64)
    )  # machine-readable: why skipped/rejected/failed
    last_error: Mapped[str | None] = mapped_column(Text)  # a sentence for a human
    source_path: Mapped[str | None] = mapped_column(String(1024))  # a rejected file's new place
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    instance: Mapped[Instance | None] = relationship(back_populates="jobs")


#: Result.label of a frame the domain guard found unlike the training films: not assessed.
OUTSIDE_DOMAIN = "outside_domain"


class Result(Base):
    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    frame_number: Mapped[int] = mapped_column(Integer, default=1)
    probability: Mapped[float] = mapped_column(Float)
    #: "pneumonia" (flagged), "normal", or "outside_domain" (not assessed, never flagged)
    label: Mapped[str] = mapped_column(String(32), index=True)
    threshold: Mapped[float] = mapped_column(Float)
    #: the domain guard's distance score (None: the bundle has no guard)
    domain_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    model_uid: Mapped[str] = mapped_column(UID)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


#: Export.payload: the AI result of a scored image (an SR, an HL7 ORU, a FHIR report)
PAYLOAD_RESULT = "result"
#: Export.payload: a radiologist's read of an AI result, as an IHE AIRAI assessment SR
PAYLOAD_ASSESSMENT = "assessment"


class Export(Base):
    """One delivery of a result (or of a read of it) to one destination, over the channel its
    destination names (:mod:`screener.report.targets`): DICOM C-STORE, STOW-RS, HL7 v2, FHIR."""

    __tablename__ = "exports"
    __table_args__ = (
        # "shadow": built while the site was silent (screener.site.mode); never sent by the exporter
        CheckConstraint("state IN ('pending', 'delivered', 'dead', 'shadow')", name="state"),
        CheckConstraint("payload IN ('result', 'assessment')", name="payload"),
        Index("ix_exports_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    #: ``AE@HOST:PORT``, a STOW-RS URL, ``mllp://HOST:PORT`` or ``fhir+https://...``
    destination: Mapped[str] = mapped_column(String(512))
    payload: Mapped[str] = mapped_column(
        String(16), default=PAYLOAD_RESULT, server_default=PAYLOAD_RESULT
    )
    #: an assessment's read, and the SOP Instance UID of the AI result SR it assesses
    review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id"), index=True)
    assessed_uid: Mapped[str | None] = mapped_column(UID)
    #: what the destination answered on delivery (ACK control id, Location, Retrieve URL)
    receipt: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # lets a result and its exports be added together and inserted in one flush
    result: Mapped[Result] = relationship()


class SiteEvent(Base):
    """A site going live with a bundle, or back to a silent start (:mod:`screener.site.mode`):
    who, when, and the bundle and operating point it concerns."""

    __tablename__ = "site_events"
    __table_args__ = (CheckConstraint("event IN ('go_live', 'shadow')", name="event"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    event: Mapped[str] = mapped_column(String(16))  # "go_live" or "shadow"
    operator: Mapped[str] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    bundle_uid: Mapped[str] = mapped_column(UID)
    bundle_name: Mapped[str] = mapped_column(String(64))
    bundle_version: Mapped[str] = mapped_column(String(32))
    #: the operating point: the bundle's threshold and, when model.json has it, the
    #: sensitivity it was chosen for
    threshold: Mapped[float] = mapped_column(Float)
    target_sensitivity: Mapped[float | None] = mapped_column(Float)


class Heartbeat(Base):
    """One running process of screener (daemon, worker) and when it was last seen alive."""

    __tablename__ = "heartbeats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)  # component@host:pid
    component: Mapped[str] = mapped_column(String(32))
    host: Mapped[str] = mapped_column(String(128))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    beat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    details: Mapped[str | None] = mapped_column(Text)  # JSON: address, model, spool, ...


class Installation(Base):
    """This database's identity (one row, made by migration 0005); the spool records it."""

    __tablename__ = "installation"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """What happened and why: refusals, rejections, duplicates, failures. No PHI."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    event: Mapped[str] = mapped_column(String(64), index=True)
    reason: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    study_instance_uid: Mapped[str | None] = mapped_column(UID)
    job_id: Mapped[int | None] = mapped_column(Integer)
    calling_ae_title: Mapped[str | None] = mapped_column(AE)
    path: Mapped[str | None] = mapped_column(String(1024))
    #: the web user who did it (an upload queued, dead letters sent again); None otherwise
    actor: Mapped[str | None] = mapped_column(String(64))


class AuditCount(Base):
    """Audit events deleted by retention (``storage.audit_retention_days``), still counted:
    one row per UTC day, event and reason, so totals (``screener status``) include them."""

    __tablename__ = "audit_counts"

    day: Mapped[date] = mapped_column(Date, primary_key=True)  # the events' UTC date
    event: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(64), primary_key=True)  # "" when none was given
    events: Mapped[int] = mapped_column(BigInteger)


class Review(Base):
    """A radiologist's read of a flagged (or unflagged) study: agreement with the model."""

    __tablename__ = "reviews"
    __table_args__ = (
        CheckConstraint("verdict IN ('agree', 'disagree', 'indeterminate')", name="verdict"),
        # the latest read of each study
        Index("ix_reviews_study_id_created_at_id", "study_id", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    #: the reader's finding against the model's flag: "agree", "disagree", or
    #: "indeterminate" (the reader could not tell: counted in no agreement statistic)
    verdict: Mapped[str] = mapped_column(String(16))
    model_positive: Mapped[bool] = mapped_column(Boolean)  # the model's flag when reviewed
    #: what the reader found (None: could not tell)
    radiologist_positive: Mapped[bool | None] = mapped_column(Boolean)
    #: the read in the reader's words: "pneumonia", "no_pneumonia" or "cannot_tell"
    finding: Mapped[str | None] = mapped_column(String(16))
    probability: Mapped[float] = mapped_column(Float)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    model_uid: Mapped[str] = mapped_column(UID)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reader: Mapped[str | None] = mapped_column(String(64))  # login or web user; None before 0006


#: The worklist's order reads these columns besides flagged and audit (the partial indexes of
#: study_scores include them on PostgreSQL).
ORDER_COLUMNS = ("assessment", "probability", "received_epoch", "received_at", "study_id")


class StudyScoreRow(Base):
    """One scored study as the worklist lists it, kept in the transaction that adds a result,
    a review or an image (:mod:`screener.db.summary`), so that the worklist is one indexed
    SELECT ... ORDER BY ... LIMIT instead of a pass over every result."""

    __tablename__ = "study_scores"
    __table_args__ = (
        # ORDER BY flagged DESC walks this index; status filters within each flag group
        Index("ix_study_scores_flagged_reviewed", "flagged", "reviewed"),
        Index("ix_study_scores_received_at", "received_at"),
        Index("ix_study_scores_probability", "probability"),
        # the worklist of unread and of read studies, in flag and audit groups: partial, so
        # that no other filter is drawn to an index led by ``reviewed``; on PostgreSQL they
        # carry the order's columns, so the order and limit read the index alone
        # (the unread one on PostgreSQL only: SQLite, without statistics, would take it for
        # the worklist of the last hour too, over ix_study_scores_received_at)
        Index(
            "ix_study_scores_unread_flagged_audit",
            "flagged",
            "audit",
            postgresql_where=text("NOT reviewed"),
            postgresql_include=list(ORDER_COLUMNS),
        ).ddl_if(dialect="postgresql"),
        Index(
            "ix_study_scores_read_flagged_audit",
            "flagged",
            "audit",
            sqlite_where=text("reviewed = 1"),
            postgresql_where=text("reviewed"),
            postgresql_include=list(ORDER_COLUMNS),
        ),
        # the studies outside the model's domain (a few in a hundred), left out of the reads'
        # pictures and commissioning without a lookup per read
        Index(
            "ix_study_scores_outside_domain",
            "study_id",
            sqlite_where=text("assessment = 'outside_domain'"),
            postgresql_where=text("assessment = 'outside_domain'"),
        ),
    )

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    #: the top latest result's (see screener.views.worklist): its probability, threshold and model
    probability: Mapped[float] = mapped_column(Float)
    flagged: Mapped[bool] = mapped_column(Boolean)
    threshold: Mapped[float] = mapped_column(Float)
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    model_uid: Mapped[str] = mapped_column(UID)
    #: "assessed", "partly_outside_domain" or "outside_domain"
    assessment: Mapped[str] = mapped_column(String(32))
    images: Mapped[int] = mapped_column(Integer)
    top_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    #: the study's first instance's received_at, and the same as seconds since 1970 (UTC):
    #: a number both databases do arithmetic on for the worklist's priority
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_epoch: Mapped[float] = mapped_column(Float)
    #: the latest review still holds (it read the flag the study has now)
    reviewed: Mapped[bool] = mapped_column(Boolean)
    #: read before, but a newer result changed the flag
    reopened: Mapped[bool] = mapped_column(Boolean)
    verdict: Mapped[str | None] = mapped_column(String(16))  # the latest review's
    reader: Mapped[str | None] = mapped_column(String(64))  # the latest review's
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # ... and when
    #: not flagged, and drawn for an audit read (screener.site.audit): listed after the flagged
    audit: Mapped[bool] = mapped_column(Boolean, default=False)


class WebSession(Base):
    """A login to the web worklist, held on the server: the browser's cookie carries a random
    token whose SHA-256 is the key, so logging out (the row deleted) revokes every copy of it."""

    __tablename__ = "web_sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    #: SHA-256 of the user's ``web.users`` entry at login: a changed password ends the session
    credential: Mapped[str] = mapped_column(String(64))
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class WebCredential(Base):
    """A password hash re-made with today's scrypt cost at a successful login, for a
    ``web.users`` entry made with a weaker one; it answers for that entry (``source``, the
    entry's SHA-256) until the entry changes."""

    __tablename__ = "web_credentials"

    user: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(256))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditDraw(Base):
    """The random draw of a study for an audit read, made once when it is first scored
    (:mod:`screener.site.audit`): selected when the model does not flag it and ``u < share``. The
    share in force then is kept with it, so a read's weight (1 / share) never changes later."""

    __tablename__ = "audit_draws"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    u: Mapped[float] = mapped_column(Float)
    share: Mapped[float] = mapped_column(Float)
    drawn_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
