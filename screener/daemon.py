"""The daemon, wired in one place.

    database -> spool -> accept path -> listener, folder watcher      (ingest)
    queue -> worker processes: decode pool -> model bundle -> results (scoring)
    results -> exporter: DICOM SR (and heatmap capture) C-STOREd to PACS, with retries
    rescan scheduler: C-FIND / C-MOVE missed studies back to the listener (nightly)

``compose(settings)`` builds every stage and connects them; ``Daemon.run()`` starts them,
waits for SIGINT / SIGTERM and shuts down in order: stop accepting (listener, watcher), let
in-flight stores finish, then let the workers finish the batches in hand. Nothing
acknowledged is lost: an instance is durable before Success is returned, and a job
interrupted mid-batch returns to the queue when its lease expires.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as ProcessEvent
from types import FrameType

import structlog
from sqlalchemy.orm import Session

from screener.config import Settings
from screener.db import Database, Result
from screener.db.migrate import upgrade
from screener.ingest.accept import Acceptor
from screener.ingest.listener import Listener
from screener.ingest.spool import Spool
from screener.ingest.watcher import FolderWatcher
from screener.report.export import Exporter
from screener.rescan import RescanScheduler
from screener.scoring import load_heatmap
from screener.worker import Processor, Worker

log = structlog.get_logger(__name__)


def worker_process_main(
    settings: Settings,
    index: int,
    stop: ProcessEvent,
    standalone: bool = False,
    wake: ProcessEvent | None = None,
    exports_planned: ProcessEvent | None = None,
) -> None:
    """Entry point of one worker process: model loaded once, then drain the queue.

    Under ``screener serve`` the parent decides when a worker stops (Ctrl-C reaches the whole
    process group, so it is ignored here); ``standalone`` (``screener worker``) stops on it.
    """
    from screener.logs import configure_logging
    from screener.scoring import ModelProcessor, configure_inference

    signal.signal(signal.SIGINT, (lambda *_: stop.set()) if standalone else signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    configure_logging(settings.logging)
    configure_inference(settings.worker, index, settings.worker.processes)
    db = Database(settings.database.url)
    on_result = None
    if settings.export.destinations:
        from screener.report.export import plan_exports

        def on_result(session: Session, result: Result) -> None:
            plan_exports(session, result, settings.export)

    worker = Worker(
        db,
        settings,
        ModelProcessor(settings, on_result=on_result),
        wake=wake,
        on_completed=exports_planned.set if exports_planned is not None else None,
    )

    def _stop_when_told() -> None:
        stop.wait()
        worker.stop(timeout=0)

    threading.Thread(target=_stop_when_told, daemon=True).start()
    worker.run()
    db.dispose()


@dataclass
class WorkerProcesses:
    """``worker.processes`` worker processes sharing the queue (one per GPU where there are GPUs)."""

    settings: Settings
    stop_event: ProcessEvent = field(init=False)
    processes: list[BaseProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self.stop_event = self._ctx.Event()
        self.wake = self._ctx.Event()  # set when a job is queued here
        self.exports_planned = self._ctx.Event()  # set by a worker: results to send

    def start(self) -> None:
        for index in range(self.settings.worker.processes):
            proc = self._ctx.Process(
                target=worker_process_main,
                args=(
                    self.settings,
                    index,
                    self.stop_event,
                    False,
                    self.wake,
                    self.exports_planned,
                ),
                name=f"screener-worker-{index}",
            )
            proc.start()
            self.processes.append(proc)
        log.info("worker_processes_started", processes=len(self.processes))

    def stop(self, timeout: float = 120.0) -> None:
        self.stop_event.set()
        self.wake.set()
        for proc in self.processes:
            proc.join(timeout)
            if proc.is_alive():  # its leases expire and the jobs return to the queue
                log.warning("worker_process_killed", pid=proc.pid)
                proc.kill()
                proc.join(10)


@dataclass
class Daemon:
    settings: Settings
    db: Database
    acceptor: Acceptor
    listener: Listener | None
    watcher: FolderWatcher | None
    worker: Worker | None = None
    worker_processes: WorkerProcesses | None = None
    scheduler: RescanScheduler | None = None
    exporter: Exporter | None = None

    def start(self) -> None:
        self.acceptor.recover_spool()
        if self.listener:
            self.listener.start()
        if self.watcher:
            self.watcher.start()
        if self.worker:
            self.worker.start()
        if self.worker_processes:
            self.worker_processes.start()
        if self.exporter:
            self.exporter.start()
        if self.scheduler:
            self.scheduler.start()
        log.info(
            "daemon_started",
            listener=self.listener is not None,
            watcher=self.watcher is not None,
            workers=(
                self.worker_processes.settings.worker.processes if self.worker_processes else 0
            )
            + (1 if self.worker else 0),
            database=self.db.dialect,
        )

    def stop(self) -> None:
        log.info("daemon_stopping")
        if self.scheduler:  # first: a rescan's C-MOVE still needs the listener
            self.scheduler.stop()
        if self.listener:
            self.listener.stop()
        if self.watcher:
            self.watcher.stop()
        if self.worker:
            self.worker.stop()
        if self.worker_processes:
            self.worker_processes.stop()
        if self.exporter:
            self.exporter.stop()
        self.db.dispose()
        log.info("daemon_stopped")

    def run(self) -> None:
        """Start, block until SIGINT or SIGTERM, then stop cleanly."""
        stop = threading.Event()

        def _signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal_received", signal=signal.Signals(signum).name)
            stop.set()

        previous = {s: signal.signal(s, _signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not stop.wait(1.0):
                pass
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)


def compose(settings: Settings, processor: Processor | None = None) -> Daemon:
    """Build the daemon's stages from the settings and connect them.

    With ``processor`` the worker runs as a thread in this process using it (tests, and
    accept-only set-ups); otherwise ``worker.processes`` worker processes score with the
    model bundle, which is checked here so a missing model stops start-up at once.
    """
    db = Database(settings.database.url)
    upgrade(db)
    spool = Spool(settings.storage.spool_dir, settings.storage.min_free_mb)
    acceptor = Acceptor(db, spool, settings)
    listener = Listener(settings.listener, acceptor) if settings.listener.enabled else None
    watcher = FolderWatcher(settings.watch, acceptor) if settings.watch.enabled else None
    daemon = Daemon(settings, db, acceptor, listener, watcher)
    exporter = Exporter(
        db, settings, overlay_loader=partial(load_heatmap, settings)
    )  # checks destinations
    if settings.export.destinations:
        daemon.exporter = exporter
    if settings.rescan.schedule:
        daemon.scheduler = RescanScheduler(settings)
    if settings.worker.enabled:
        if processor is not None:
            wake = threading.Event()
            daemon.worker = Worker(
                db, settings, processor, wake=wake, on_completed=exporter.wake.set
            )
            acceptor.on_queued = wake.set
        else:
            from screener.model.bundle import read_metadata

            read_metadata(settings.model.bundle)  # raises ModelError naming the path
            daemon.worker_processes = WorkerProcesses(settings)
            acceptor.on_queued = daemon.worker_processes.wake.set
            exporter.wake = daemon.worker_processes.exports_planned
    return daemon
