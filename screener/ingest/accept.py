"""The one accept path shared by the C-STORE handler and the folder watcher.

``Acceptor.accept(data)`` checks the data set, writes it atomically into the spool and
records the instance and its job in one database transaction. It returns only when the
instance is durable; any failure leaves nothing half-written and raises an
:class:`IngestError` subclass that the caller turns into a DIMSE status (PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3>) or a
rejected file. A data set over ``listener.max_dataset_mb`` (as received, or as it inflates)
is refused before pydicom reads it (:mod:`screener.ingest.inflate`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
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

from screener.config import Settings
from screener.db import AuditEvent, Database, Instance, Job, JobState, utcnow
from screener.errors import IngestError
from screener.imaging.codestream import native_length
from screener.ingest.inflate import DatasetTooLarge, check_size, limit_bytes
from screener.ingest.record import Arrival, GroupCommit, Header, Source, _int, _str
from screener.ingest.selection import Skip
from screener.ingest.skip import SkipRule
from screener.ingest.sopclasses import IMAGE_STORAGE_SOP_CLASSES
from screener.ingest.spool import OutOfResources, Spool
from screener.ingest.uids import uid_problem
from screener.runtime import metrics

log = structlog.get_logger(__name__)

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
    """Not an image SOP class screener handles (C-STORE status 0122, PS3.7 C.4.2.1.1 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_C.4.2.1.1>)."""


@dataclass(frozen=True)
class Accepted:
    outcome: Literal["queued", "skipped", "duplicate", "replaced"]
    sop_instance_uid: str
    study_instance_uid: str
    job_id: int | None
    skip: Skip | None = None


def parse(data: bytes, *, allow_raw: bool, max_bytes: int) -> tuple[Dataset, bytes]:
    """Parse ``data``; return the data set and the bytes to spool (a DICOM Part 10 file).

    ``data`` longer than ``max_bytes``, or Deflated and inflating to more, is refused
    (:class:`DatasetTooLarge`) before pydicom reads it. A raw data set without preamble and
    file meta (``allow_raw``, the watcher's case) is re-encoded as a Part 10 file, since the
    spool holds only those.
    """
    check_size(data, max_bytes)
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


#: The UIDs an instance is filed under and that its SR copies (PS3.3 C.12.1 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.12.1>, C.7.2.1, C.7.3.1).
_UID_ATTRIBUTES = (
    ("SOPClassUID", "(0008,0016)"),
    ("SOPInstanceUID", "(0008,0018)"),
    ("StudyInstanceUID", "(0020,000D)"),
    ("SeriesInstanceUID", "(0020,000E)"),
)


def validate(ds: Dataset, data: bytes) -> None:
    """The minimum an image must have for us to keep it (PS3.3 C.12.1 <https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.12.1>, C.7.6.3)."""
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
            # PS3.5 A.4 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_A.4>: only a compressed transfer syntax encapsulates its pixel data
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
    """True for a UID that PS3.6 <https://dicom.nema.org/medical/dicom/current/output/html/part06.html> lists as a transfer syntax (pydicom's dictionary)."""
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
        self.skip_rule = SkipRule.of(settings)
        self.commits = GroupCommit(db, on_group=_observe_group)
        # arrivals of one SOP Instance UID are spooled and recorded one at a time, so one
        # never removes a file another has just written under the same name
        self._uid_locks = [threading.Lock() for _ in range(64)]

    def accept(
        self, data: bytes, *, source: Source, calling_ae_title: str | None = None
    ) -> Accepted:
        """Check, spool and record ``data``; returns once the instance and its job are
        committed (one parse, one hash, one durable write, one shared transaction)."""
        self.spool.check_free_space(len(data))
        ds, data = parse(
            data,
            allow_raw=source != "dicom",
            max_bytes=limit_bytes(self.settings.listener.max_dataset_mb),
        )
        validate(ds, data)
        header = Header.of(ds)
        sha256 = hashlib.sha256(data).hexdigest()
        skip = self.skip_rule(ds)
        target = self.spool.path_for(header.study_instance_uid, header.sop_instance_uid, sha256)
        lock = self._uid_locks[hash(header.sop_instance_uid) % len(self._uid_locks)]
        with lock:
            # the file name carries the content hash: an existing file holds these bytes
            # already (a spool file being recovered, a resend) and is never removed here
            there = target.exists()
            written = None if there else self._write(target, data)
            arrival = Arrival(
                header=header,
                sha256=sha256,
                size=len(data),
                source=source,
                calling_ae_title=calling_ae_title,
                spool_path=target,
                skip=skip,
                replace=self.settings.storage.duplicate_policy != "keep_first",
                file_was_there=there,
            )
            try:
                recorded = self.commits.submit(arrival)
            except BaseException:
                if written is not None:
                    self.spool.remove(written)
                raise
            if written is not None and recorded.outcome == "duplicate":
                self.spool.remove(written)  # the first copy is what is kept (or was purged)
        if recorded.replaced_path:
            self.spool.remove(recorded.replaced_path)
        if (m := metrics.instruments()) is not None:
            m.received.labels(source, recorded.outcome).inc()
        if recorded.queued and self.on_queued is not None:
            self.on_queued()
        log.info(
            "instance_accepted",
            outcome=recorded.outcome,
            event_recorded=recorded.event,
            sop_instance_uid=header.sop_instance_uid,
            study_instance_uid=header.study_instance_uid,
            job_id=recorded.job_id,
            source=source,
            calling_ae_title=calling_ae_title,
            skip_reason=skip.reason if skip and recorded.job_id else None,
        )
        return Accepted(
            recorded.outcome,
            header.sop_instance_uid,
            header.study_instance_uid,
            recorded.job_id,
            skip if recorded.job_id is not None else None,
        )

    def _write(self, target: Path, data: bytes) -> Path:
        self.spool.write(target, data)
        return target

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


# pydicom reports a truncated sequence on its own logger; we report it ourselves.
logging.getLogger("pydicom").setLevel(logging.ERROR)


def _observe_group(size: int) -> None:
    if (m := metrics.instruments()) is not None:
        m.commit_group.observe(size)


__all__ = [
    "Accepted",
    "Acceptor",
    "DatasetTooLarge",
    "DoesNotMatchSOPClass",
    "NotDicom",
    "NotUnderstood",
    "OutOfResources",
    "UnsupportedSOPClass",
]
