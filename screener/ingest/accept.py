"""The one accept path shared by the C-STORE handler and the folder watcher.

``Acceptor.accept(data)`` checks the data set, writes it atomically into the spool and
records the instance and its job in one database transaction. It returns only when the
instance is durable; any failure leaves nothing half-written and raises an
:class:`IngestError` subclass that the caller turns into a DIMSE status (PS3.4 B.2.3) or a
rejected file.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from screener import metrics
from screener.config import Settings
from screener.db import AuditEvent, Database, Instance, Job, JobState, Study, utcnow
from screener.errors import IngestError
from screener.imaging.codestream import native_length
from screener.ingest.population import apply_population, screened_ages
from screener.ingest.selection import Skip, apply_selection
from screener.ingest.sopclasses import IMAGE_STORAGE_SOP_CLASSES
from screener.ingest.spool import OutOfResources, Spool
from screener.ingest.uids import uid_problem

log = structlog.get_logger(__name__)

Source = Literal["dicom", "folder", "recovered"]

#: PixelData tag (7FE0,0010) as it appears in a little endian stream.
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


class NotUnderstood(IngestError):
    """The data set cannot be parsed (C-STORE status C000, Error: Cannot understand)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NotDicom(NotUnderstood):
    """The bytes are not a DICOM data set at all."""


class DoesNotMatchSOPClass(IngestError):
    """A required part of the image IOD is missing (C-STORE status A900)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class UnsupportedSOPClass(DoesNotMatchSOPClass):
    """Not an image SOP class screener handles (C-STORE status 0122, PS3.7 C.4.2.1.1)."""


@dataclass(frozen=True)
class Accepted:
    outcome: Literal["queued", "skipped", "duplicate", "replaced"]
    sop_instance_uid: str
    study_instance_uid: str
    job_id: int | None
    skip: Skip | None = None


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


def parse(data: bytes, *, allow_raw: bool) -> tuple[Dataset, bytes]:
    """Parse ``data``; return the data set and the bytes to spool (a DICOM Part 10 file).

    A raw data set without preamble and file meta (``allow_raw``, the watcher's case) is
    re-encoded as a Part 10 file, since the spool holds only those.
    """
    try:
        return dcmread(io.BytesIO(data)), data
    except InvalidDicomError:
        if not allow_raw:
            raise NotDicom("not_dicom", "no DICOM preamble and file meta information") from None
    except Exception as exc:  # pydicom raises a variety of errors on malformed input
        raise NotUnderstood("unparseable", f"the data set cannot be parsed: {exc}") from None
    try:
        ds = dcmread(io.BytesIO(data), force=True)
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            raise NotDicom(
                "not_dicom", "not a DICOM file (no preamble, no SOP Class / Instance UID)"
            )
        ds.ensure_file_meta()
        ds.file_meta.TransferSyntaxUID = ds.file_meta.get(
            "TransferSyntaxUID", ExplicitVRLittleEndian
        )
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = io.BytesIO()
        dcmwrite(out, ds, enforce_file_format=True)
        return ds, out.getvalue()
    except NotDicom:
        raise
    except Exception as exc:
        raise NotDicom("not_dicom", f"not a readable DICOM file: {exc}") from None


def _expected_native_length(ds: Dataset) -> int | None:
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    bits = _int(ds, "BitsAllocated")
    if not rows or not cols or not bits:
        return None
    samples = _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    return native_length(rows, cols, frames, samples, bits)


#: The UIDs an instance is filed under and that its SR copies (PS3.3 C.12.1, C.7.2.1, C.7.3.1).
_UID_ATTRIBUTES = (
    ("SOPClassUID", "(0008,0016)"),
    ("SOPInstanceUID", "(0008,0018)"),
    ("StudyInstanceUID", "(0020,000D)"),
    ("SeriesInstanceUID", "(0020,000E)"),
)


def validate(ds: Dataset, data: bytes) -> None:
    """The minimum an image must have for us to keep it (PS3.3 C.12.1, C.7.6.3)."""
    missing = [
        k
        for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
        if not _str(ds, k)
    ]
    if missing:
        raise NotUnderstood(
            "missing_uid", f"required attribute(s) missing or empty: {', '.join(missing)}"
        )
    for keyword, tag in _UID_ATTRIBUTES:
        problem = uid_problem(str(ds.get(keyword, "")).strip())
        if problem:
            # the value itself is not echoed: it may be any bytes a sender chose
            raise NotUnderstood("invalid_uid", f"{tag} {keyword} {problem} (PS3.5 9.1)")
    sop_class = UID(str(ds.SOPClassUID))
    if sop_class not in IMAGE_STORAGE_SOP_CLASSES:
        raise UnsupportedSOPClass(
            "unsupported_sop_class",
            f"SOP Class {sop_class.name} ({sop_class}) is not an image storage class screener handles",
        )
    if "PixelData" not in ds:
        if _PIXEL_DATA_TAG in data:
            raise NotUnderstood("truncated", "the Pixel Data element is truncated or malformed")
        raise DoesNotMatchSOPClass("no_pixel_data", f"{sop_class.name} instance has no Pixel Data")
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
    if transfer_syntax is None:
        return
    syntax = UID(str(transfer_syntax))
    if not _is_transfer_syntax(syntax):
        raise NotUnderstood(
            "corrupt_pixel_data",
            f"(0002,0010) Transfer Syntax UID {str(syntax)[:64]!r} is not a DICOM transfer syntax",
        )
    if not syntax.is_compressed:
        if ds["PixelData"].is_undefined_length:
            # PS3.5 A.4: only a compressed transfer syntax encapsulates its pixel data
            raise NotUnderstood(
                "corrupt_pixel_data",
                f"the Pixel Data are encapsulated (compressed) but transfer syntax {syntax.name} "
                "is not compressed",
            )
        expected = _expected_native_length(ds)
        actual = len(ds.PixelData)
        if expected is not None and actual < expected:
            raise NotUnderstood(
                "truncated",
                f"Pixel Data has {actual} bytes; Rows/Columns/Bits Allocated need {expected}",
            )


def _is_transfer_syntax(uid: UID) -> bool:
    """True for a UID that PS3.6 lists as a transfer syntax (pydicom's dictionary)."""
    try:
        return not uid.is_private and uid.is_transfer_syntax
    except ValueError:
        return False


class Acceptor:
    """Check, spool and enqueue: the whole of what ingest does."""

    def __init__(
        self,
        db: Database,
        spool: Spool,
        settings: Settings,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.spool = spool
        self.settings = settings
        self.on_queued = on_queued  # e.g. wake the workers
        self.ages = screened_ages(settings)

    def accept(
        self, data: bytes, *, source: Source, calling_ae_title: str | None = None
    ) -> Accepted:
        self.spool.check_free_space(len(data))
        ds, data = parse(data, allow_raw=source != "dicom")
        validate(ds, data)
        sha256 = hashlib.sha256(data).hexdigest()
        for attempt in range(3):  # concurrent first arrivals of one study or instance race here
            try:
                accepted = self._record(ds, data, sha256, source, calling_ae_title)
                if (m := metrics.instruments()) is not None:
                    m.received.labels(source, accepted.outcome).inc()
                return accepted
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _record(
        self, ds: Dataset, data: bytes, sha256: str, source: Source, calling_ae_title: str | None
    ) -> Accepted:
        sop_uid, study_uid = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
        target = self.spool.path_for(study_uid, sop_uid, sha256)
        written: Path | None = None
        replaced_path: str | None = None
        try:
            with self.db.transaction() as session:
                now = utcnow()
                existing = session.scalars(
                    select(Instance).where(Instance.sop_instance_uid == sop_uid).with_for_update()
                ).one_or_none()
                if existing is not None:
                    existing.receive_count += 1
                    existing.updated_at = now
                    same = existing.content_sha256 == sha256
                    # deleted by hand, not by retention (a purged one was handled: a resend
                    # of it is a duplicate, not a reason to score and report it again)
                    lost = existing.purged_at is None and not Path(existing.spool_path).is_file()
                    keep = same or self.settings.storage.duplicate_policy == "keep_first"
                    if keep and not lost:
                        event = "duplicate_ignored" if same else "changed_duplicate_ignored"
                        _audit(session, event, ds, calling_ae_title, reason="duplicate")
                        log.info(event, sop_instance_uid=sop_uid, calling_ae_title=calling_ae_title)
                        return Accepted("duplicate", sop_uid, study_uid, None)
                    written = self._write(target, data)
                    replaced_path = existing.spool_path
                    _fill_instance(
                        existing, ds, target, sha256, len(data), source, calling_ae_title
                    )
                    existing.purged_at = None
                    job, skip = self._enqueue(session, existing, ds)
                    event = "instance_restored" if lost else "instance_replaced"
                    _audit(session, event, ds, calling_ae_title, job_id=job.id)
                    outcome: Literal["queued", "skipped", "replaced"] = "replaced"
                else:
                    study = _get_or_create_study(session, ds)
                    written = self._write(target, data)
                    instance = Instance(study=study, received_at=now, receive_count=1)
                    _fill_instance(
                        instance, ds, target, sha256, len(data), source, calling_ae_title
                    )
                    session.add(instance)
                    job, skip = self._enqueue(session, instance, ds)
                    outcome = "skipped" if skip else "queued"
                    _audit(
                        session,
                        "instance_skipped" if skip else "instance_queued",
                        ds,
                        calling_ae_title,
                        job_id=job.id,
                        reason=skip.reason if skip else None,
                        message=skip.message if skip else None,
                    )
        except BaseException:
            if written is not None:
                self.spool.remove(written)
            raise
        if replaced_path and Path(replaced_path) != target:
            self.spool.remove(replaced_path)
        if job.state == JobState.QUEUED and self.on_queued is not None:
            self.on_queued()
        log.info(
            "instance_accepted",
            outcome=outcome,
            sop_instance_uid=sop_uid,
            study_instance_uid=study_uid,
            job_id=job.id,
            source=source,
            calling_ae_title=calling_ae_title,
            skip_reason=skip.reason if skip else None,
        )
        return Accepted(outcome, sop_uid, study_uid, job.id, skip)

    def _write(self, target: Path, data: bytes) -> Path | None:
        """Spool ``data``; returns the path to remove if the transaction fails.

        The file name carries the content hash, so an existing file already holds these
        bytes (a spool file being recovered): it is kept as it is, and never removed.
        """
        if target.exists():
            return None
        self.spool.write(target, data)
        return target

    def _enqueue(
        self, session: Session, instance: Instance, ds: Dataset
    ) -> tuple[Job, Skip | None]:
        skip = apply_selection(ds, self.settings.selection) or apply_population(
            ds, self.ages, self.settings.population.allow_unknown_age
        )
        now = utcnow()
        job = Job(
            instance=instance,
            state=JobState.SKIPPED if skip else JobState.QUEUED,
            reason=skip.reason if skip else None,
            last_error=skip.message if skip else None,
            priority=0,
            attempts=0,
            created_at=now,
            updated_at=now,
            finished_at=now if skip else None,
        )
        session.add(job)
        session.flush()
        return job, skip

    def record_rejected_file(self, moved_to: Path, reason: str, message: str) -> int:
        """A watched-folder file that could not be accepted: a ``rejected`` job with its reason.

        ``moved_to`` is its place in the rejected folder, named by its content digest; the
        name it was dropped with (often a patient's name or ID) is never recorded.
        """
        with self.db.transaction() as session:
            now = utcnow()
            job = Job(
                state=JobState.REJECTED,
                reason=reason,
                last_error=message,
                source_path=str(moved_to),
                priority=0,
                attempts=0,
                created_at=now,
                updated_at=now,
                finished_at=now,
            )
            session.add(job)
            session.flush()
            session.add(
                AuditEvent(
                    at=now,
                    event="file_rejected",
                    reason=reason,
                    message=message,
                    job_id=job.id,
                    path=str(moved_to),
                )
            )
            return job.id

    def record_refusal(
        self,
        reason: str,
        message: str,
        *,
        event: str = "store_refused",
        sop_instance_uid: str | None = None,
        calling_ae_title: str | None = None,
    ) -> None:
        """A C-STORE or association we refused: an audit row, never allowed to raise."""
        if (m := metrics.instruments()) is not None:
            m.refused.labels(reason).inc()
        try:
            with self.db.transaction() as session:
                session.add(
                    AuditEvent(
                        at=utcnow(),
                        event=event,
                        reason=reason,
                        message=message[:2000],
                        sop_instance_uid=sop_instance_uid,
                        calling_ae_title=calling_ae_title,
                    )
                )
        except Exception:  # the database itself may be what failed; the log still has it
            log.exception("audit_write_failed", event=event, reason=reason)

    def recover_spool(self) -> int:
        """Accept spool files with no database row (a crash between rename and commit)."""
        removed = self.spool.sweep_tmp()
        with self.db.transaction() as session:
            known = set(session.scalars(select(Instance.spool_path)))
        recovered = 0
        for path in self.spool.files():
            if str(path) in known:
                continue
            try:
                self.accept(path.read_bytes(), source="recovered")
                recovered += 1
            except IngestError as exc:
                log.warning("spool_recovery_failed", path=str(path), error=str(exc))
        if removed or recovered:
            log.info(
                "spool_recovered", partial_files_removed=removed, instances_recovered=recovered
            )
        return recovered


def _get_or_create_study(session: Session, ds: Dataset) -> Study:
    uid = str(ds.StudyInstanceUID)
    study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one_or_none()
    now = utcnow()
    if study is None:
        study = Study(study_instance_uid=uid, created_at=now)
        session.add(study)
    study.accession_number = _str(ds, "AccessionNumber", 16) or study.accession_number
    study.study_date = _str(ds, "StudyDate", 8) or study.study_date
    study.study_time = _str(ds, "StudyTime", 16) or study.study_time
    study.modality = study.modality or _str(ds, "Modality", 16)
    study.updated_at = now
    session.flush()
    return study


def _fill_instance(
    instance: Instance,
    ds: Dataset,
    path: Path,
    sha256: str,
    size: int,
    source: Source,
    calling_ae_title: str | None,
) -> None:
    instance.series_instance_uid = str(ds.SeriesInstanceUID)
    instance.sop_instance_uid = str(ds.SOPInstanceUID)
    instance.sop_class_uid = str(ds.SOPClassUID)
    instance.transfer_syntax_uid = str(ds.file_meta.get("TransferSyntaxUID", ""))
    instance.modality = _str(ds, "Modality", 16)
    instance.body_part_examined = _str(ds, "BodyPartExamined", 16)
    instance.view_position = _str(ds, "ViewPosition", 16)
    instance.rows = _int(ds, "Rows")
    instance.columns = _int(ds, "Columns")
    instance.number_of_frames = _int(ds, "NumberOfFrames") or 1
    instance.spool_path = str(path)
    instance.content_sha256 = sha256
    instance.size_bytes = size
    instance.source = source
    instance.calling_ae_title = calling_ae_title
    instance.updated_at = utcnow()


def _audit(
    session: Session,
    event: str,
    ds: Dataset,
    calling_ae_title: str | None,
    *,
    job_id: int | None = None,
    reason: str | None = None,
    message: str | None = None,
) -> None:
    session.add(
        AuditEvent(
            at=utcnow(),
            event=event,
            reason=reason,
            message=message,
            sop_instance_uid=str(ds.SOPInstanceUID),
            study_instance_uid=str(ds.StudyInstanceUID),
            job_id=job_id,
            calling_ae_title=calling_ae_title,
        )
    )


# pydicom reports a truncated sequence on its own logger; we report it ourselves.
logging.getLogger("pydicom").setLevel(logging.ERROR)

__all__ = [
    "Accepted",
    "Acceptor",
    "DoesNotMatchSOPClass",
    "NotDicom",
    "NotUnderstood",
    "OutOfResources",
    "UnsupportedSOPClass",
]
