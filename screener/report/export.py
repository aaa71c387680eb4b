"""Delivering SRs to PACS by C-STORE: planned, sent, retried with backoff, dead-lettered.

Each delivery of one result to one destination is a row in ``exports``:

* :func:`plan_exports` (called by the worker in the transaction that stores the result)
  adds one ``pending`` row per destination and fixes the SR's SOP Instance UID there, so
  every retry sends the *same* instance and a PACS never holds two SRs for one delivery.
  While the site is silent (:mod:`screener.site.mode`) the rows are ``shadow`` instead: recorded,
  never picked by the exporter, not sent by going live.
* :class:`Exporter` sends due rows, one association per destination and pass, destinations
  in parallel with a short connect timeout: a destination that is down or refuses costs only
  its own rows a retry and never delays another destination or screening. Each pass first
  reads the site's mode from the database: in shadow it sends nothing.
* A row is claimed (its ``next_attempt_at`` pushed out) before it is sent, and marked
  ``delivered`` in the transaction that follows the C-STORE success.
* Every failure is either *transient* or *permanent* (:class:`Failure`). A transient one
  (the destination cannot be reached, refuses or aborts the association, does not answer,
  is out of resources) counts an attempt and backs off exponentially (``backoff_seconds``
  doubling, capped at ``backoff_max_seconds``); after ``max_attempts`` the row is
  ``dead``. A permanent one -- the same request would fail the same way: the SR cannot be
  built from its source, the destination does not take the SOP class, or it says the data
  set is wrong or not allowed -- makes the row ``dead`` at once. ``last_error`` starts with
  ``transient:`` or ``permanent:`` and the log event says ``permanent=True|False``. A dead
  row waits for :func:`retry_dead` (``screener exports retry``), e.g. after the
  configuration or the source was fixed.

C-STORE statuses follow PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3> / PS3.7 C.4.2.1 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_C.4.2.1>: Success and the Warning statuses
(0xB000 coercion, 0xB006 elements discarded, 0xB007 data set does not match SOP class)
deliver; 0x0111 Duplicate SOP Instance on a resend also counts as delivered (the PACS has
this very instance); every other status is a failure, permanent or transient as
:func:`status_is_permanent` says.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import sqlalchemy
import structlog
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, code_to_category
from sqlalchemy import select

from screener.config import ExportSettings, Settings
from screener.db import OUTSIDE_DOMAIN, Database, Export, Instance, Result, utcnow
from screener.db.engine import as_utc
from screener.dicomnet.netopts import tune_socket
from screener.dicomnet.tls import client_context
from screener.errors import ScreenerError
from screener.report.destinations import Destination, parse_destination, parse_destinations
from screener.report.header import ReportError, derived_uid
from screener.report.ledger import DEAD, DELIVERED, PENDING, export_counts, retry_dead
from screener.report.sr import SR_SOP_CLASSES, ScreeningFinding, build_heatmap_capture, build_sr
from screener.runtime.wakeup import Wakeable
from screener.site.mode import loaded_bundle_uid, mode_in

__all__ = [
    "Exporter",
    "Failure",
    "backoff",
    "export_counts",
    "plan_exports",
    "retry_dead",
    "status_is_permanent",
]

log = structlog.get_logger(__name__)


#: Seconds to wait for a TCP connection: a destination that is down must fail fast.
CONNECT_TIMEOUT = 3.0
#: Most rows sent to one destination in one association.
BATCH = 50
#: Most destinations served at once.
MAX_PARALLEL = 8

STATUS_SUCCESS = 0x0000
STATUS_DUPLICATE_SOP_INSTANCE = 0x0111  # PS3.7 C.4.2.1 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_C.4.2.1>: the peer already holds this instance

#: C-STORE failure statuses that a resend of the same data set cannot cure (PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3>,
#: PS3.7 C.4.2.1 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_C.4.2.1> and Annex C): the destination judged the request itself, not its own state.
_PERMANENT_STATUSES = frozenset(
    {
        0x0105,  # No such attribute
        0x0106,  # Invalid attribute value
        0x0112,  # No such SOP Instance
        0x0113,  # No such event type
        0x0114,  # No such argument
        0x0115,  # Invalid argument value
        0x0117,  # Invalid object instance
        0x0118,  # No such SOP Class
        0x0119,  # Class-instance conflict
        0x0120,  # Missing attribute
        0x0121,  # Missing attribute value
        0x0122,  # Refused: SOP Class not supported (PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3>)
        0x0123,  # No such action
        0x0124,  # Refused: Not authorized (PS3.7 Annex C <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#chapter_C>, general statuses)
        0x0211,  # Unrecognized operation
        0x0212,  # Mistyped argument
    }
)


def status_is_permanent(status: int) -> bool:
    """Whether a failed C-STORE status means that sending the same SR again will fail again.

    PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3> (Storage Service Class statuses) and PS3.7 C.4.2.1 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_C.4.2.1> / Annex C:

    * permanent: 0xA9xx Error: Data Set does not match SOP Class, 0xCxxx Error: Cannot
      understand, 0x0122 Refused: SOP Class not supported, 0x0124 Refused: Not authorized,
      and the other statuses that reject the request itself (:data:`_PERMANENT_STATUSES`);
    * transient: 0xA7xx Refused: Out of Resources, 0x0110 Processing failure, 0x0210
      Duplicate invocation, 0x0213 Resource limitation, 0xFE00 Cancel, and any status the
      standard does not define (``max_attempts`` still bounds the retries).
    """
    return status in _PERMANENT_STATUSES or status & 0xFF00 == 0xA900 or status & 0xF000 == 0xC000


@dataclass(frozen=True)
class Failure:
    """Why one delivery failed, and whether trying again can help (see the module docstring)."""

    reason: str
    permanent: bool = False


SR_3D = SR_SOP_CLASSES["3d"]

#: Proposed for every object we send (docs/conformance.md 4.2.2): Explicit VR Little Endian
#: first, Implicit VR Little Endian, which every DICOM AE supports (PS3.5 10.1 <https://dicom.nema.org/medical/dicom/current/output/html/part05.html#sect_10.1>).
EXPORT_TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
SOP_CLASS_NAMES = {
    SR_SOP_CLASSES["3d"]: "Comprehensive 3D SR",
    SR_SOP_CLASSES["comprehensive"]: "Comprehensive SR",
    str(SecondaryCaptureImageStorage): "Secondary Capture",
}


def _not_accepted(sop_class: str) -> str:
    name = SOP_CLASS_NAMES.get(sop_class, sop_class)
    hint = " (try export.sr_kind = comprehensive)" if sop_class == SR_3D else ""
    return f"the destination does not accept {name}{hint}"


#: Given a result, the worker's heatmap overlay (RGB uint8) or None; see Exporter.
OverlayLoader = Callable[[Result], npt.NDArray[np.uint8] | None]


#: Export.state of a delivery planned while the site was silent: never sent by the exporter
SHADOW = "shadow"


def plan_exports(
    session: sqlalchemy.orm.Session,
    result: Result,
    settings: ExportSettings,
    *,
    shadow: bool = False,
) -> list[Export]:
    """One pending export per configured destination, due now, its SR UID fixed; with
    ``shadow`` (the site is silent) the rows are ``shadow``, never due."""
    destinations = parse_destinations(settings.destinations)
    if not destinations:
        return []
    now = utcnow()
    exports = [
        Export(
            result=result,  # the foreign key is filled in when the batch is flushed
            destination=str(destination),
            state=SHADOW if shadow else PENDING,
            attempts=0,
            next_attempt_at=None if shadow else now,
            sr_sop_instance_uid=str(generate_uid()),
            created_at=now,
        )
        for destination in destinations
    ]
    session.add_all(exports)
    return exports


def backoff(settings: ExportSettings, attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failures: doubling, capped."""
    delay = settings.backoff_seconds * 2.0 ** max(attempts - 1, 0)
    return float(min(delay, settings.backoff_max_seconds))


@dataclass(frozen=True)
class _Job:
    """What one send needs, read in the claiming transaction (no PHI beyond the file)."""

    export_id: int
    sr_sop_instance_uid: str
    result: Result
    spool_path: str


class Exporter:
    """Sends due exports; ``start()`` runs :meth:`deliver_due` every ``export.poll_seconds``.

    ``overlay_loader``, when ``export.heatmap_capture`` is on, gives the heatmap overlay of
    a result; its Secondary Capture travels in the same association as the SR, with a SOP
    Instance UID derived from the SR's (so a retry resends the same capture).
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        overlay_loader: OverlayLoader | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.export = settings.export
        parse_destinations(self.export.destinations)  # a bad entry stops start-up
        # DICOM TLS to every destination; a certificate that cannot be read stops start-up
        self.tls_context = client_context(settings.tls) if self.export.tls else None
        self.overlay_loader = overlay_loader
        # the site's mode is decided for this bundle (screener.site.mode), read once here
        self.bundle_uid = loaded_bundle_uid(settings)
        self._live: bool | None = None  # the mode the last pass found, to log its changes
        # set by the workers when results are committed: deliver now, not at the next poll
        self.wake: Wakeable = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the background loop ----------------------------------------------------------

    def start(self) -> None:
        """Start the loop; again after its thread has ended (the daemon's supervisor does)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="exporter", daemon=True)
        self._thread.start()
        log.info("exporter_started", destinations=list(self.export.destinations))

    @property
    def running(self) -> bool:
        """True while the background loop started by :meth:`start` is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float | None = None) -> None:
        """Stop polling; associations in flight finish the row they are sending."""
        if self._thread is None:
            return
        self._stop.set()
        self.wake.set()
        self._thread.join(timeout if timeout is not None else self.export.timeout_seconds * 2)
        self._thread = None
        log.info("exporter_stopped")

    def _run(self) -> None:
        """Each due destination in its own task; a slow one is left running, never waited for."""
        busy: dict[str, Future[int]] = {}
        with ThreadPoolExecutor(MAX_PARALLEL, thread_name_prefix="export") as pool:
            while not self._stop.is_set():
                self.wake.clear()  # before the pass: a result committed during it wakes the next
                try:
                    for destination, task in list(busy.items()):
                        if task.done():
                            del busy[destination]
                            if task.exception() is not None:
                                log.error(
                                    "export_destination_failed",
                                    destination=destination,
                                    error=str(task.exception()),
                                )
                    for destination in self._due_destinations():
                        if destination not in busy:
                            task = pool.submit(self._deliver_to, destination)
                            # a pass that found this destination busy skipped it: look again
                            task.add_done_callback(lambda _: self.wake.set())
                            busy[destination] = task
                except Exception:  # stage boundary: a database outage must not end the loop
                    log.exception("export_pass_failed")
                self.wake.wait(self.export.poll_seconds)

    # -- one pass -----------------------------------------------------------------------

    def deliver_due(self) -> int:
        """One pass: every due pending export, destinations in parallel; returns how many delivered."""
        destinations = self._due_destinations()
        if len(destinations) <= 1:
            return sum(self._deliver_to(d) for d in destinations)
        workers = min(len(destinations), MAX_PARALLEL)
        with ThreadPoolExecutor(workers, thread_name_prefix="export") as pool:
            return sum(pool.map(self._deliver_to, destinations))

    def _due_destinations(self) -> list[str]:
        """Destinations with due pending rows; none while the site is silent."""
        with self.db.transaction() as session:
            mode = mode_in(session, self.settings, self.bundle_uid)
            if mode.live != self._live:
                self._live = mode.live
                log.info("exporter_site_mode", mode=mode.mode, bundle_uid=self.bundle_uid)
            if not mode.live:
                return []
            return list(
                session.scalars(
                    select(Export.destination)
                    .where(Export.state == PENDING, Export.next_attempt_at <= utcnow())
                    .distinct()
                )
            )

    def _deliver_to(self, destination: str) -> int:
        """Claim this destination's due rows in batches, each sent over one association.

        When the destination cannot be reached the pass ends for it after that one try:
        its other due rows wait for the next pass rather than each costing a connect timeout.
        """
        try:
            peer = parse_destination(destination, key="exports.destination")
        except ScreenerError as exc:  # a row planned by hand with a malformed destination
            for job in self._claim(destination):
                self._failed(job, destination, str(exc), permanent=True)
            return 0
        delivered = 0
        while not self._stop.is_set():
            jobs = self._claim(destination)
            if not jobs:
                break
            sent, reached = self._send(peer, jobs)
            delivered += sent
            if not reached or len(jobs) < BATCH:
                break
        return delivered

    def _claim(self, destination: str) -> list[_Job]:
        """Due rows of one destination, pushed out of reach of other exporters while sent."""
        now = utcnow()
        # long enough for a batch to a live peer; short enough that rows claimed by an
        # exporter that died are soon due again
        lease = timedelta(seconds=self.export.timeout_seconds * 4)
        with self.db.transaction() as session:
            rows = session.execute(
                select(Export, Result, Instance.spool_path)
                .join(Result, Result.id == Export.result_id)
                .join(Instance, Instance.id == Result.instance_id)
                .where(
                    Export.destination == destination,
                    Export.state == PENDING,
                    Export.next_attempt_at <= now,
                )
                .order_by(Export.next_attempt_at, Export.id)
                .limit(BATCH)
                .with_for_update(of=Export, skip_locked=True)  # PostgreSQL; SQLite: BEGIN IMMEDIATE
            ).all()
            jobs = []
            for export, result, spool_path in rows:
                export.next_attempt_at = now + lease
                if not export.sr_sop_instance_uid:  # a row planned by hand
                    export.sr_sop_instance_uid = str(generate_uid())
                jobs.append(_Job(export.id, export.sr_sop_instance_uid, result, spool_path))
        return jobs

    def _send(self, peer: Destination, jobs: list[_Job]) -> tuple[int, bool]:
        """One association to ``peer``; each job's outcome is recorded as soon as it is known.

        Returns how many were delivered and whether the association was established.
        """
        datasets: dict[int, list[pydicom.Dataset]] = {}
        for job in jobs:
            try:
                datasets[job.export_id] = self._build(job)
            except Exception as exc:  # stage boundary: one unreadable source fails only its row
                # the same source builds the same failure: dead at once, unless the machine
                # itself was short of a resource (too many open files, memory, I/O)
                self._failed(
                    job,
                    str(peer),
                    f"cannot build the SR: {exc}",
                    permanent=not _resource_shortage(exc),
                )
        ready = [job for job in jobs if job.export_id in datasets]
        if not ready:
            return 0, True
        ae = AE(ae_title=self.settings.listener.ae_title)
        ae.connection_timeout = min(CONNECT_TIMEOUT, self.export.timeout_seconds)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.export.timeout_seconds
        syntaxes = list(EXPORT_TRANSFER_SYNTAXES)
        sop_classes = {str(ds.SOPClassUID) for group in datasets.values() for ds in group}
        for sop_class in sorted(sop_classes):
            ae.add_requested_context(sop_class, syntaxes)
        tls_args = (self.tls_context, peer.host) if self.tls_context else None
        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            tls_args=tls_args,
            evt_handlers=[(evt.EVT_CONN_OPEN, tune_socket)],  # TCP_NODELAY
        )
        if not assoc.is_established:
            refused = [str(cx.abstract_syntax) for cx in assoc.rejected_contexts]
            # every context rejected: PS3.8 9.3.3.2 <https://dicom.nema.org/medical/dicom/current/output/html/part08.html#sect_9.3.3.2>
            if refused and not assoc.accepted_contexts:
                # the destination does not take this SOP class: resending will not change that
                failure = Failure(_not_accepted(refused[0]), permanent=True)
            else:
                how = (
                    "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
                )
                # cannot connect / A-ASSOCIATE-RJ / A-ABORT: the destination may be back later
                failure = Failure(
                    f"association with {peer} {how} (no C-STORE SCP reachable or it refused us)"
                )
            for job in ready:
                self._failed(job, str(peer), failure.reason, permanent=failure.permanent)
            return 0, False
        delivered = 0
        try:
            for job in ready:
                if not assoc.is_established:  # aborted mid-way: the rest count a failed attempt
                    self._failed(job, str(peer), f"association with {peer} ended before this SR")
                    continue
                try:
                    outcome = self._store(assoc, datasets[job.export_id])
                except Exception as exc:  # stage boundary: record, go on with the next row
                    # the data sets were encoded in _build: what fails here is the transport
                    outcome = Failure(f"C-STORE could not be sent: {exc}")
                if outcome is None:
                    delivered += self._delivered(job, str(peer))
                else:
                    self._failed(job, str(peer), outcome.reason, permanent=outcome.permanent)
        finally:
            if assoc.is_established:
                assoc.release()
        return delivered, True

    def _store(self, assoc: Any, datasets: list[pydicom.Dataset]) -> Failure | None:
        """C-STORE each data set of one delivery; None when all were accepted, else why not."""
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        for ds in datasets:
            name = SOP_CLASS_NAMES.get(str(ds.SOPClassUID), str(ds.SOPClassUID))
            # context rejected: PS3.8 9.3.3.2 <https://dicom.nema.org/medical/dicom/current/output/html/part08.html#sect_9.3.3.2>
            if str(ds.SOPClassUID) not in accepted:
                return Failure(_not_accepted(str(ds.SOPClassUID)), permanent=True)
            rsp = assoc.send_c_store(ds)
            if "Status" not in rsp:  # A-ABORT, or no answer within the DIMSE timeout
                return Failure("no C-STORE response (association aborted or DIMSE timeout)")
            status = int(rsp.Status)
            category = code_to_category(status)
            # PS3.4 B.2.3 <https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3>: Warning statuses mean the instance was stored
            if status == STATUS_SUCCESS or category == "Warning":
                continue
            if status == STATUS_DUPLICATE_SOP_INSTANCE:
                continue  # PS3.7 C.4.2.1 <https://dicom.nema.org/medical/dicom/current/output/html/part07.html#sect_C.4.2.1>: the peer already has this very SOP Instance
            meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, (category, "unknown status"))[1]
            return Failure(
                f"C-STORE of {name} answered 0x{status:04X} ({meaning})",
                permanent=status_is_permanent(status),
            )
        return None

    def _build(self, job: _Job) -> list[pydicom.Dataset]:
        """The SR (and, if configured, the heatmap capture) of one delivery."""
        result = job.result
        header = pydicom.dcmread(job.spool_path, stop_before_pixels=True)
        assessed = result.label != OUTSIDE_DOMAIN
        finding = ScreeningFinding(
            probability=float(result.probability),
            positive=assessed and result.probability >= result.threshold,
            assessed=assessed,
            threshold=float(result.threshold),
            model_name=result.model_name,
            model_version=result.model_version,
            model_uid=result.model_uid,
            frame_number=result.frame_number or 1,
        )
        sr = build_sr(
            header,
            finding,
            kind=self.export.sr_kind,
            sop_instance_uid=job.sr_sop_instance_uid,
            instance_number=result.id,
            content_datetime=as_utc(result.scored_at),
        )
        datasets = [sr]
        if self.export.heatmap_capture and self.overlay_loader is not None:
            overlay = self.overlay_loader(result)
            if overlay is not None:
                capture_uid = derived_uid("heatmap", job.sr_sop_instance_uid)
                datasets.append(
                    build_heatmap_capture(
                        header,
                        overlay,
                        sop_instance_uid=capture_uid,
                        instance_number=result.id,
                        model_name=result.model_name,
                    )
                )
        for ds in datasets:
            _check_encodes(ds)
        return datasets

    # -- recording outcomes -------------------------------------------------------------

    def _delivered(self, job: _Job, destination: str) -> int:
        with self.db.transaction() as session:
            export = session.get(Export, job.export_id, with_for_update=True)
            if export is None or export.state != PENDING:
                return 0
            now = utcnow()
            export.state = DELIVERED
            export.attempts += 1
            export.delivered_at = now
            export.next_attempt_at = None
            export.last_error = None
            result = session.get(Result, export.result_id, with_for_update=True)
            if result is not None and result.reported_at is None:
                result.reported_at = now  # the first destination that has it
            attempts = export.attempts
        log.info(
            "sr_delivered",
            destination=destination,
            sop_instance_uid=job.sr_sop_instance_uid,
            result_id=job.result.id,
            attempts=attempts,
        )
        return 1

    def _failed(self, job: _Job, destination: str, error: str, *, permanent: bool = False) -> None:
        """Count a failed attempt: back off (transient) or dead-letter (permanent, or the last).

        ``last_error`` says which kind it was (``"permanent: ..."`` / ``"transient: ..."``),
        so does the log event (``permanent=``).
        """
        kind = "permanent" if permanent else "transient"
        with self.db.transaction() as session:
            export = session.get(Export, job.export_id, with_for_update=True)
            if export is None or export.state != PENDING:
                return
            export.attempts += 1
            export.last_error = f"{kind}: {error}"[:2000]
            if permanent or export.attempts >= self.export.max_attempts:
                export.state = DEAD
                export.next_attempt_at = None
            else:
                delay = backoff(self.export, export.attempts)
                export.next_attempt_at = utcnow() + timedelta(seconds=delay)
            state, attempts, due = export.state, export.attempts, export.next_attempt_at
        event = "sr_dead_lettered" if state == DEAD else "sr_delivery_failed"
        log.warning(
            event,
            destination=destination,
            sop_instance_uid=job.sr_sop_instance_uid,
            result_id=job.result.id,
            attempts=attempts,
            next_attempt_at=due.isoformat() if due else None,
            permanent=permanent,
            error=error,
        )


#: errno values of a machine short of a resource: building again later may succeed.
_RESOURCE_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR, errno.EIO}
)


def _resource_shortage(exc: BaseException) -> bool:
    """Whether a build failed for want of a resource here rather than because of its input."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS


def _check_encodes(ds: pydicom.Dataset) -> None:
    """Encode ``ds`` as it will be sent, so that a data set pydicom cannot write is a build
    error (permanent) rather than a C-STORE that fails to start (transient).

    The message names the exception type only: pydicom's text may quote a value (PHI).
    """
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False  # Explicit VR Little Endian
    try:
        write_dataset(fp, ds)
    except Exception as exc:
        raise ReportError(
            f"the {SOP_CLASS_NAMES.get(str(ds.SOPClassUID), 'data set')} cannot be encoded "
            f"in Explicit VR Little Endian ({type(exc).__name__})"
        ) from exc
    finally:
        fp.close()
