"""The export queue: every result (and every read of one) delivered to every destination,
over its channel -- DICOM C-STORE, DICOMweb STOW-RS, HL7 v2 over MLLP, FHIR R4 -- planned,
sent, retried with backoff, dead-lettered, the same way for each.

Each delivery of one result to one destination is a row in ``exports``
(:mod:`screener.report.destinations` says which channel a destination names;
:mod:`screener.report.channels` opens it):

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

What each channel counts as delivered, transient or permanent is in its module
(:mod:`screener.report.dimse` for C-STORE).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta

import sqlalchemy
import structlog
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import aliased

from screener.config import ExportSettings, Settings
from screener.db import PAYLOAD_RESULT, Database, Export, Instance, Result, Review, utcnow
from screener.errors import ScreenerError
from screener.report.channels import open_channel
from screener.report.delivery import Channel, Delivery, Failure
from screener.report.destinations import DICOM_CHANNELS, parse_target, result_targets
from screener.report.dimse import status_is_permanent
from screener.report.ledger import (
    DEAD,
    DELIVERED,
    PENDING,
    channel_of,
    export_counts,
    retry_dead,
)
from screener.report.objects import DicomObjects, OverlayLoader
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


#: Most rows sent to one destination in one association (connection).
BATCH = 50
#: Most destinations served at once.
MAX_PARALLEL = 8

#: Export.state of a delivery planned while the site was silent: never sent by the exporter
SHADOW = "shadow"


def plan_exports(
    session: sqlalchemy.orm.Session,
    result: Result,
    settings: Settings,
    *,
    shadow: bool = False,
) -> list[Export]:
    """One pending export per destination of a result (every channel), due now, its object UID
    fixed; with ``shadow`` (the site is silent) the rows are ``shadow``, never due."""
    targets = result_targets(settings)
    if not targets:
        return []
    now = utcnow()
    exports = [
        Export(
            result=result,  # the foreign key is filled in when the batch is flushed
            destination=target.address,
            payload=PAYLOAD_RESULT,
            state=SHADOW if shadow else PENDING,
            attempts=0,
            next_attempt_at=None if shadow else now,
            sr_sop_instance_uid=str(generate_uid()),
            created_at=now,
        )
        for target in targets
    ]
    session.add_all(exports)
    return exports


def backoff(settings: ExportSettings, attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failures: doubling, capped."""
    delay = settings.backoff_seconds * 2.0 ** max(attempts - 1, 0)
    return float(min(delay, settings.backoff_max_seconds))


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
        self.objects = DicomObjects(settings, overlay_loader)
        # every configured destination's channel: a bad entry or an unreadable certificate
        # or credential file stops start-up
        self._channels: dict[str, Channel] = {}
        self._channels_lock = threading.Lock()
        for target in result_targets(settings):
            self._channels[target.address] = open_channel(target, settings, self.objects)
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
        log.info("exporter_started", destinations=sorted(self._channels))

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

    def _channel(self, destination: str) -> Channel:
        """The channel of a destination; one no longer configured (rows planned before a
        change of configuration, or by hand) is opened when first due."""
        with self._channels_lock:
            channel = self._channels.get(destination)
            if channel is None:
                target = parse_target(destination, key="exports.destination")
                channel = open_channel(target, self.settings, self.objects)
                self._channels[destination] = channel
            return channel

    def _deliver_to(self, destination: str) -> int:
        """Claim this destination's due rows in batches, each sent over one connection.

        When the destination cannot be reached the pass ends for it after that one try:
        its other due rows wait for the next pass rather than each costing a connect timeout.
        """
        try:
            channel = self._channel(destination)
        except ScreenerError as exc:  # a row planned by hand with a malformed destination
            for delivery in self._claim(destination):
                self.failed(delivery, Failure(str(exc), permanent=True))
            return 0
        delivered = 0
        while not self._stop.is_set():
            deliveries = self._claim(destination)
            if not deliveries:
                break
            sent, reached = channel.send(deliveries, self)
            delivered += sent
            if not reached or len(deliveries) < BATCH:
                break
        return delivered

    def _claim(self, destination: str) -> list[Delivery]:
        """Due rows of one destination, pushed out of reach of other exporters while sent."""
        now = utcnow()
        # long enough for a batch to a live peer; short enough that rows claimed by an
        # exporter that died are soon due again
        lease = timedelta(seconds=self.export.timeout_seconds * 4)
        read = aliased(Review)
        with self.db.transaction() as session:
            rows = session.execute(
                select(Export, Result, Instance.spool_path, read)
                .join(Result, Result.id == Export.result_id)
                .join(Instance, Instance.id == Result.instance_id)
                .outerjoin(read, read.id == Export.review_id)
                .where(
                    Export.destination == destination,
                    Export.state == PENDING,
                    Export.next_attempt_at <= now,
                )
                .order_by(Export.next_attempt_at, Export.id)
                .limit(BATCH)
                .with_for_update(of=Export, skip_locked=True)  # PostgreSQL; SQLite: BEGIN IMMEDIATE
            ).all()
            deliveries = []
            for export, result, spool_path, review in rows:
                export.next_attempt_at = now + lease
                if not export.sr_sop_instance_uid:  # a row planned by hand
                    export.sr_sop_instance_uid = str(generate_uid())
                deliveries.append(
                    Delivery(
                        export_id=export.id,
                        object_uid=export.sr_sop_instance_uid,
                        payload=export.payload or PAYLOAD_RESULT,
                        result=result,
                        spool_path=spool_path,
                        review=review,
                        assessed_uid=export.assessed_uid,
                    )
                )
        return deliveries

    # -- recording outcomes (the channels' Recorder) ------------------------------------

    def delivered(self, delivery: Delivery, receipt: str | None = None) -> int:
        """Record a success; the result's ``reported_at`` is its first delivery anywhere."""
        with self.db.transaction() as session:
            export = session.get(Export, delivery.export_id, with_for_update=True)
            if export is None or export.state != PENDING:
                return 0
            now = utcnow()
            export.state = DELIVERED
            export.attempts += 1
            export.delivered_at = now
            export.next_attempt_at = None
            export.last_error = None
            export.receipt = receipt[:2000] if receipt else None
            if not delivery.is_assessment:
                result = session.get(Result, export.result_id, with_for_update=True)
                if result is not None and result.reported_at is None:
                    result.reported_at = now  # the first destination that has it
            attempts, destination = export.attempts, export.destination
        log.info(
            _event(delivery, destination, "delivered"),
            destination=destination,
            channel=channel_of(destination),
            sop_instance_uid=delivery.object_uid,
            result_id=delivery.result.id,
            attempts=attempts,
        )
        return 1

    def failed(self, delivery: Delivery, failure: Failure) -> None:
        """Count a failed attempt: back off (transient) or dead-letter (permanent, or the last).

        ``last_error`` says which kind it was (``"permanent: ..."`` / ``"transient: ..."``),
        so does the log event (``permanent=``).
        """
        kind = "permanent" if failure.permanent else "transient"
        with self.db.transaction() as session:
            export = session.get(Export, delivery.export_id, with_for_update=True)
            if export is None or export.state != PENDING:
                return
            export.attempts += 1
            export.last_error = f"{kind}: {failure.reason}"[:2000]
            if failure.permanent or export.attempts >= self.export.max_attempts:
                export.state = DEAD
                export.next_attempt_at = None
            else:
                delay = backoff(self.export, export.attempts)
                export.next_attempt_at = utcnow() + timedelta(seconds=delay)
            state, attempts, due = export.state, export.attempts, export.next_attempt_at
            destination = export.destination
        event = _event(
            delivery, destination, "dead_lettered" if state == DEAD else "delivery_failed"
        )
        log.warning(
            event,
            destination=destination,
            channel=channel_of(destination),
            sop_instance_uid=delivery.object_uid,
            result_id=delivery.result.id,
            attempts=attempts,
            next_attempt_at=due.isoformat() if due else None,
            permanent=failure.permanent,
            error=failure.reason,
        )


def _event(delivery: Delivery, destination: str, outcome: str) -> str:
    """The log event of an outcome, named by what was sent: ``sr_``, ``assessment_`` (DICOM
    channels), ``message_`` (an HL7 ORU^R01, a FHIR Bundle)."""
    if channel_of(destination) not in DICOM_CHANNELS:
        return f"message_{outcome}"
    return f"{'assessment' if delivery.is_assessment else 'sr'}_{outcome}"
