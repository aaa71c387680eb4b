"""Recording accepted instances: SQLAlchemy Core statements and a group commit.

An instance is answered Success only after its row and its job are committed. Committing
each one alone costs a transaction (and on SQLite an fsync of the write-ahead log) per
instance, and concurrent associations then queue on the database's one writer lock, where
SQLite's busy handler sleeps. :class:`GroupCommit` instead lets the first waiting caller
commit everything that has arrived meanwhile in one transaction (leader-based group commit,
as databases do for their own logs): each caller still returns only after the commit that
holds its rows, and a single association pays no extra thread hop.

The statements are Core inserts and updates with the values read once from the data set
(:class:`Header`): the ORM's unit of work cost several times more per instance
(benchmarks/RESULTS.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, cast

from pydicom import Dataset
from sqlalchemy import Connection, CursorResult, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from screener.db import AuditEvent, Database, Instance, Job, JobState, Study, summary, utcnow
from screener.ingest.selection import Skip

#: "web": the upload page; "dicomweb": STOW-RS (screener.web.dicomweb)
Source = Literal["dicom", "folder", "recovered", "web", "dicomweb"]
Outcome = Literal["queued", "skipped", "duplicate", "replaced"]

_STUDIES = cast(Table, Study.__table__)
_INSTANCES = cast(Table, Instance.__table__)
_JOBS = cast(Table, Job.__table__)
_AUDIT = cast(Table, AuditEvent.__table__)


def _new_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


#: At most this many instances in one transaction (bounds the time a leader holds others).
MAX_GROUP = 64


def _str(ds: Dataset, keyword: str, limit: int = 64) -> str | None:
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        return None
    return str(value).strip()[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Header:
    """What the database keeps of an instance, read once from its data set (no PHI)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None
    body_part_examined: str | None
    view_position: str | None
    rows: int | None
    columns: int | None
    number_of_frames: int
    accession_number: str | None
    study_date: str | None
    study_time: str | None
    study_description: str | None = None
    # input facts for drift monitoring (screener.monitor): PS3.3 C.7.6.3 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.6.3>, C.7.5.1
    bits_stored: int | None = None
    photometric_interpretation: str | None = None
    manufacturer: str | None = None

    @classmethod
    def of(cls, ds: Dataset) -> Header:
        return cls(
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
            modality=_str(ds, "Modality", 16),
            body_part_examined=_str(ds, "BodyPartExamined", 16),
            view_position=_str(ds, "ViewPosition", 16),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            number_of_frames=_int(ds, "NumberOfFrames") or 1,
            accession_number=_str(ds, "AccessionNumber", 16),
            study_date=_str(ds, "StudyDate", 8),
            study_time=_str(ds, "StudyTime", 16),
            study_description=_str(ds, "StudyDescription", 64),
            bits_stored=_int(ds, "BitsStored"),
            photometric_interpretation=_str(ds, "PhotometricInterpretation", 16),
            manufacturer=_str(ds, "Manufacturer", 64),
        )


@dataclass(frozen=True)
class Arrival:
    """A checked instance, its file already durable in the spool, waiting for its rows."""

    header: Header
    sha256: str
    size: int
    source: Source
    calling_ae_title: str | None
    spool_path: Path
    skip: Skip | None  # the selection or population rule it fails, if any
    replace: bool  # storage.duplicate_policy = "replace": a changed resend replaces
    #: whether ``spool_path`` held these bytes before this arrival wrote them
    file_was_there: bool


@dataclass(frozen=True)
class Recorded:
    outcome: Outcome
    job_id: int | None
    #: the file the instance had before, now replaced (the caller removes it)
    replaced_path: str | None = None
    queued: bool = False
    #: the audit event recorded (``instance_queued``, ``duplicate_ignored``, ...)
    event: str = ""


def _instance_values(a: Arrival, now: datetime) -> dict[str, Any]:
    h = a.header
    return {
        "series_instance_uid": h.series_instance_uid,
        "sop_instance_uid": h.sop_instance_uid,
        "sop_class_uid": h.sop_class_uid,
        "transfer_syntax_uid": h.transfer_syntax_uid,
        "modality": h.modality,
        "body_part_examined": h.body_part_examined,
        "view_position": h.view_position,
        "rows": h.rows,
        "columns": h.columns,
        "number_of_frames": h.number_of_frames,
        "bits_stored": h.bits_stored,
        "photometric_interpretation": h.photometric_interpretation,
        "manufacturer": h.manufacturer,
        "spool_path": str(a.spool_path),
        "content_sha256": a.sha256,
        "size_bytes": a.size,
        "source": a.source,
        "calling_ae_title": a.calling_ae_title,
        "updated_at": now,
    }


# Statements built once: only their parameters change per instance (building a statement
# costs more than running it on SQLite).
_FIND_INSTANCE = (
    select(
        _INSTANCES.c.id,
        _INSTANCES.c.content_sha256,
        _INSTANCES.c.spool_path,
        _INSTANCES.c.purged_at,
    )
    .where(_INSTANCES.c.sop_instance_uid == bindparam("uid"))
    .with_for_update()
)
_FIND_STUDY = select(_STUDIES.c.id).where(_STUDIES.c.study_instance_uid == bindparam("uid"))
_UPDATE_STUDY = (
    update(_STUDIES)
    .where(_STUDIES.c.id == bindparam("study_id"))
    .values(
        accession_number=func.coalesce(bindparam("acc"), _STUDIES.c.accession_number),
        study_date=func.coalesce(bindparam("date"), _STUDIES.c.study_date),
        study_time=func.coalesce(bindparam("time"), _STUDIES.c.study_time),
        study_description=func.coalesce(bindparam("desc"), _STUDIES.c.study_description),
        modality=func.coalesce(_STUDIES.c.modality, bindparam("modality")),
        updated_at=bindparam("now"),
    )
)
_BUMP_INSTANCE = (
    update(_INSTANCES)
    .where(_INSTANCES.c.id == bindparam("instance_id"))
    .values(receive_count=_INSTANCES.c.receive_count + 1)
)
_INSERT_STUDY = insert(_STUDIES)
_INSERT_INSTANCE = insert(_INSTANCES)
_INSERT_JOB = insert(_JOBS)
_INSERT_AUDIT = insert(_AUDIT)


def _audit(
    conn: Connection,
    a: Arrival,
    event: str,
    now: datetime,
    *,
    job_id: int | None = None,
    reason: str | None = None,
    message: str | None = None,
) -> None:
    conn.execute(
        _INSERT_AUDIT,
        {
            "at": now,
            "event": event,
            "reason": reason,
            "message": message,
            "sop_instance_uid": a.header.sop_instance_uid,
            "study_instance_uid": a.header.study_instance_uid,
            "job_id": job_id,
            "calling_ae_title": a.calling_ae_title,
            "path": None,
        },
    )


def _enqueue(conn: Connection, a: Arrival, instance_id: int, now: datetime) -> int:
    skip = a.skip
    result = conn.execute(
        _INSERT_JOB,
        {
            "instance_id": instance_id,
            "state": JobState.SKIPPED.value if skip else JobState.QUEUED.value,
            "reason": skip.reason if skip else None,
            "last_error": skip.message if skip else None,
            "source_path": None,
            "priority": 0,
            "attempts": 0,
            "lease_owner": None,
            "lease_expires_at": None,
            "created_at": now,
            "started_at": None,
            "updated_at": now,
            "finished_at": now if skip else None,
        },
    )
    return _new_id(result)


def _study_id(conn: Connection, h: Header, now: datetime) -> int:
    """The study's row for a new instance, made or brought up to date (PS3.3 C.7.2.1 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.7.2.1>
    attributes we list by)."""
    found = conn.execute(_FIND_STUDY, {"uid": h.study_instance_uid}).scalar_one_or_none()
    if found is None:
        result = conn.execute(
            _INSERT_STUDY,
            {
                "study_instance_uid": h.study_instance_uid,
                "accession_number": h.accession_number,
                "study_date": h.study_date,
                "study_time": h.study_time,
                "study_description": h.study_description,
                "modality": h.modality,
                "created_at": now,
                "updated_at": now,
            },
        )
        return _new_id(result)
    conn.execute(
        _UPDATE_STUDY,
        {
            "study_id": found,
            "acc": h.accession_number,
            "date": h.study_date,
            "time": h.study_time,
            "desc": h.study_description,
            "modality": h.modality,
            "now": now,
        },
    )
    # a new image in a study that may be scored already: the worklist's count of its images
    summary.count_new_image(conn, int(found), now)
    return int(found)


def record(conn: Connection, a: Arrival) -> Recorded:
    """The rows of one arrival, inside the caller's transaction."""
    now = utcnow()
    h = a.header
    existing = conn.execute(_FIND_INSTANCE, {"uid": h.sop_instance_uid}).one_or_none()
    if existing is None:
        study_id = _study_id(conn, h, now)
        result = conn.execute(
            _INSERT_INSTANCE,
            {
                "study_id": study_id,
                "received_at": now,
                "receive_count": 1,
                "purged_at": None,
                **_instance_values(a, now),
            },
        )
        instance_id = _new_id(result)
        job_id = _enqueue(conn, a, instance_id, now)
        skip = a.skip
        event = "instance_skipped" if skip else "instance_queued"
        _audit(
            conn,
            a,
            event,
            now,
            job_id=job_id,
            reason=skip.reason if skip else None,
            message=skip.message if skip else None,
        )
        if skip:
            return Recorded("skipped", job_id, event=event)
        return Recorded("queued", job_id, queued=True, event=event)
    same = existing.content_sha256 == a.sha256
    # deleted by hand, not by retention (a purged one was handled: a resend of it is a
    # duplicate, not a reason to score and report it again)
    if existing.spool_path == str(a.spool_path):  # same bytes: this arrival may have rewritten it
        present = a.file_was_there
    else:
        present = Path(existing.spool_path).is_file()
    lost = existing.purged_at is None and not present
    if (same or not a.replace) and not lost:
        conn.execute(_BUMP_INSTANCE, {"instance_id": existing.id, "updated_at": now})
        event = "duplicate_ignored" if same else "changed_duplicate_ignored"
        _audit(conn, a, event, now, reason="duplicate")
        return Recorded("duplicate", None, event=event)
    conn.execute(
        _BUMP_INSTANCE,
        {"instance_id": existing.id, "purged_at": None, **_instance_values(a, now)},
    )
    job_id = _enqueue(conn, a, existing.id, now)
    event = "instance_restored" if lost else "instance_replaced"
    _audit(conn, a, event, now, job_id=job_id)
    replaced = existing.spool_path if existing.spool_path != str(a.spool_path) else None
    return Recorded(
        "replaced",
        job_id,
        replaced_path=replaced,
        queued=a.skip is None,
        event=event,
    )


@dataclass(eq=False)
class _Waiting:
    arrival: Arrival
    done: bool = False
    recorded: Recorded | None = None
    error: BaseException | None = None


class GroupCommit:
    """Commit concurrent arrivals together; every caller returns after its own commit."""

    def __init__(
        self,
        db: Database,
        on_group: Callable[[int], None] | None = None,
    ) -> None:
        """``on_group(n)``: called after each commit with the number of instances in it."""
        self.db = db
        self.on_group = on_group
        self._waiting: list[_Waiting] = []
        self._lock = threading.Lock()  # guards _waiting
        self._leader = threading.Lock()  # held by the caller committing a group

    def submit(self, arrival: Arrival) -> Recorded:
        """Record ``arrival``; returns once committed, or raises what its commit raised."""
        mine = _Waiting(arrival)
        with self._lock:
            self._waiting.append(mine)
        with self._leader:
            if not mine.done:
                with self._lock:
                    group = self._waiting[:MAX_GROUP]
                    del self._waiting[:MAX_GROUP]
                self._commit(group)
        if mine.error is not None:
            raise mine.error
        assert mine.recorded is not None
        return mine.recorded

    def _commit(self, group: Sequence[_Waiting]) -> None:
        try:
            with self.db.engine.begin() as conn:
                recorded = [record(conn, w.arrival) for w in group]
            for w, r in zip(group, recorded, strict=True):
                w.recorded = r
            if self.on_group is not None:
                self.on_group(len(group))
        except BaseException as exc:
            if len(group) == 1 and not isinstance(exc, IntegrityError):
                group[0].error = exc
            else:  # one bad arrival must not fail the others: each again, alone
                for w in group:
                    self._commit_alone(w)
        finally:
            for w in group:
                w.done = True

    def _commit_alone(self, w: _Waiting) -> None:
        for attempt in range(3):  # a first arrival raced by another process's (PostgreSQL)
            try:
                with self.db.engine.begin() as conn:
                    w.recorded = record(conn, w.arrival)
                w.error = None
                return
            except IntegrityError as exc:
                w.error = exc
                if attempt == 2:
                    return
            except BaseException as exc:
                w.error = exc
                return
