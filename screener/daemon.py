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
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.orm import Session

from screener import metrics
from screener.config import Settings
from screener.db import AuditEvent, Database, Result, utcnow
from screener.db.migrate import upgrade
from screener.errors import ScreenerError
from screener.heartbeat import Heart, HeartbeatThread
from screener.ingest.accept import Acceptor
from screener.ingest.exposure import listener_exposure, warn_if_open
from screener.ingest.listener import Listener
from screener.ingest.ownership import claim_spool
from screener.ingest.spool import Spool
from screener.ingest.watcher import FolderWatcher
from screener.lifecycle import die_with_parent
from screener.metrics import HealthServer
from screener.report.export import Exporter
from screener.rescan import RescanScheduler
from screener.retention import RetentionTimer
from screener.scoring import ResultHook, load_heatmap
from screener.tls import server_context
from screener.wakeup import PipeEvent, Wakeable
from screener.worker import Processor, Worker

if TYPE_CHECKING:
    from screener.monitor.drift import DriftMonitor
    from screener.web.server import WebThread

log = structlog.get_logger(__name__)


def compose_worker(
    settings: Settings,
    *,
    processor: Processor | None = None,
    db: Database | None = None,
    index: int = 0,
    wake: Wakeable | None = None,
    on_completed: Callable[[], None] | None = None,
) -> Worker:
    """The one place a worker is built: serve's worker processes, ``screener worker`` and
    ``screener worker --once``, and the in-process worker of tests.

    Without ``processor`` the model bundle scores (``worker.device`` and
    ``worker.inference_threads`` applied first), and each result plans its SR deliveries
    when ``export.destinations`` is set.
    """
    if processor is None:
        from screener.logs import native_output_as_event
        from screener.model.opening import open_model
        from screener.scoring import ModelProcessor

        # TensorFlow's start-up notices become one event; on a GPU set-up they may matter
        level = "warning" if settings.worker.device.startswith("gpu") else "debug"
        with native_output_as_event("tensorflow_startup_output", level=level):
            bundle = open_model(settings, index=index, processes=settings.worker.processes)
            processor = ModelProcessor(settings, bundle, on_result=_export_planner(settings))
    return Worker(
        db or Database(settings.database.url),
        settings,
        processor,
        wake=wake,
        on_completed=on_completed,
    )


def _export_planner(settings: Settings) -> ResultHook | None:
    if not settings.export.destinations:
        return None
    from screener.report.export import plan_exports
    from screener.site import mode_in

    def on_result(session: Session, result: Result) -> None:
        # silent start: the mode for the bundle that scored it, read in the result's transaction
        shadow = not mode_in(session, settings, result.model_uid).live
        plan_exports(session, result, settings.export, shadow=shadow)

    return on_result


def worker_process_main(
    settings: Settings,
    index: int,
    standalone: bool = False,
    wake: PipeEvent | None = None,
    exports_planned: PipeEvent | None = None,
    parent_pid: int | None = None,
    loaded: Any = None,
) -> None:
    """Entry point of one worker process: model loaded once, then drain the queue.

    SIGTERM asks it to finish the batch in hand and stop. Under ``screener serve`` the
    parent decides when a worker stops (Ctrl-C reaches the whole process group, so it is
    ignored here) and the worker dies with it (``parent_pid``); ``standalone``
    (``screener worker``) also stops on Ctrl-C.
    """
    from screener.logs import configure_logging

    if parent_pid is not None:
        die_with_parent(parent_pid)
    stop = threading.Event()
    signal.signal(signal.SIGINT, (lambda *_: stop.set()) if standalone else signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    configure_logging(settings.logging)
    worker = compose_worker(
        settings,
        index=index,
        wake=wake,
        on_completed=exports_planned.set if exports_planned is not None else None,
    )
    if loaded is not None:  # the model is in memory: this worker counts as ready
        loaded[index] = 1
    model = getattr(getattr(worker.processor, "bundle", None), "metadata", {})
    heartbeat = HeartbeatThread(
        Heart(
            worker.db,
            "worker",
            details=lambda: {
                "index": index,
                "device": settings.worker.device,
                "model": f"{model.get('name')} {model.get('version')}" if model else None,
            },
            every_seconds=settings.metrics.heartbeat_seconds,
        )
    )
    heartbeat.start()

    def _stop_when_told() -> None:
        stop.wait()
        worker.stop(timeout=0)

    threading.Thread(target=_stop_when_told, daemon=True).start()
    worker.run()
    heartbeat.stop()
    worker.db.dispose()


class CrashLoop(ScreenerError):
    """A child process keeps dying: ``serve`` ends non-zero so that systemd restarts it."""


@dataclass
class _Child:
    """One supervised worker process and its restart history."""

    index: int
    process: BaseProcess | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic times
    restart_at: float | None = None  # when a dead one is due to start again


@dataclass
class WorkerProcesses:
    """``worker.processes`` worker processes sharing the queue (one per GPU where there are
    GPUs), supervised: one that dies unasked is restarted with backoff and recorded."""

    settings: Settings
    on_restart: Callable[[str, str], None] | None = None  # (what, why): recorded by the daemon
    children: list[_Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self.stopping = False
        self.wake = PipeEvent(self._ctx)  # set when a job is queued here
        self.exports_planned = PipeEvent(self._ctx)  # set by a worker: results to send
        # per worker index: 1 once that process has loaded the model (readiness)
        self.loaded = self._ctx.Array("b", max(1, self.settings.worker.processes), lock=False)

    @property
    def processes(self) -> list[BaseProcess]:
        return [c.process for c in self.children if c.process is not None]

    def _spawn(self, child: _Child) -> None:
        proc = self._ctx.Process(
            target=worker_process_main,
            args=(
                self.settings,
                child.index,
                False,
                self.wake,
                self.exports_planned,
                os.getpid(),
                self.loaded,
            ),
            name=f"screener-worker-{child.index}",
        )
        self.loaded[child.index] = 0
        proc.start()
        child.process, child.restart_at = proc, None

    def all_loaded(self) -> bool:
        """Every worker process is alive and has its model in memory."""
        return bool(self.children) and all(
            c.process is not None and c.process.is_alive() and self.loaded[c.index]
            for c in self.children
        )

    def start(self) -> None:
        self.children = [_Child(i) for i in range(self.settings.worker.processes)]
        for child in self.children:
            self._spawn(child)
        log.info("worker_processes_started", processes=len(self.children))

    def supervise(self, now: float | None = None) -> None:
        """Restart worker processes that died; raise :class:`CrashLoop` when they keep dying.

        Called every second by the daemon's main thread (children die with the thread that
        started them, see :mod:`screener.lifecycle`).
        """
        if self.stopping:
            return
        now = time.monotonic() if now is None else now
        w = self.settings.worker
        for child in self.children:
            proc = child.process
            if proc is not None and proc.is_alive():
                continue
            if proc is not None:  # died unasked: record it and schedule a restart
                code = proc.exitcode
                why = (
                    f"killed by {signal.Signals(-code).name}"
                    if code is not None and code < 0
                    else f"exited with code {code}"
                )
                child.process = None
                child.restarts = [t for t in child.restarts if now - t < w.restart_window_seconds]
                if len(child.restarts) >= w.max_restarts:
                    log.error("worker_crash_loop", index=child.index, restarts=len(child.restarts))
                    raise CrashLoop(
                        f"worker process {child.index} {why} after {len(child.restarts)} "
                        f"restarts within {w.restart_window_seconds:.0f} s "
                        "(worker.max_restarts); stopping so that the service manager restarts "
                        "screener"
                    )
                delay = min(w.restart_backoff_seconds * 2 ** len(child.restarts), 60.0)
                child.restart_at = now + delay
                log.error("worker_process_died", index=child.index, why=why, restart_in_s=delay)
                if self.on_restart is not None:
                    self.on_restart(f"worker-{child.index}", f"worker process {why}")
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts.append(now)
                self._spawn(child)
                log.warning("worker_process_restarted", index=child.index)

    def stop(self, timeout: float = 120.0) -> None:
        """SIGTERM each worker: it finishes the batch in hand; kill it after ``timeout``."""
        self.stopping = True
        for proc in self.processes:
            if proc.is_alive():
                proc.terminate()
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
    health: HealthServer | None = None
    metrics_dir: str | None = None
    #: name, version and UID of the bundle the worker processes load (read once, at compose)
    model: dict[str, str] = field(default_factory=dict)
    retention: RetentionTimer | None = None
    heart: Heart | None = None
    web: WebThread | None = None  # when [web] port is set
    monitor: DriftMonitor | None = None  # drift against the bundle's reference.json

    def start(self) -> None:
        if self.listener or self.watcher:
            # only where instances are accepted: on a worker-only host sharing the spool, a
            # listener's file between its rename and its commit is not an orphan
            claim_spool(self.db, self.acceptor.spool, adopt=self.settings.storage.adopt_spool)
            self.acceptor.recover_spool()
        if self.listener:
            warn_if_open(self.settings.listener, self.settings.tls)  # any caller, no TLS?
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
        if self.health:
            self.health.start()
        if self.retention:
            self.retention.start()
        if self.web:
            self.web.start()
        if self.monitor:
            self.monitor.start()
        if self.heart:
            self.heart.beat()
        log.info(
            "daemon_started",
            listener=self.listener is not None,
            watcher=self.watcher is not None,
            workers=(
                self.worker_processes.settings.worker.processes if self.worker_processes else 0
            )
            + (1 if self.worker else 0),
            database=self.db.dialect,
            database_url=self.db.safe_url,
            config_file=self.settings.config_file,
            model_bundle=self.settings.model.bundle,
        )
        self.log_site_mode()

    def log_site_mode(self) -> None:
        """The ``site_mode`` start-up event: shadow or live, for which bundle, since when."""
        from screener.site import site_mode

        mode = site_mode(self.db, self.settings, self.model.get("uid"))
        since = mode.since.isoformat() if mode.since else None
        log_at = log.warning if not mode.live else log.info
        log_at("site_mode", mode=mode.mode, bundle_uid=mode.bundle_uid, since=since, line=mode.line)

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
        if self.health:
            self.health.stop()
        if self.web:
            self.web.stop()
        if self.retention:
            self.retention.stop()
        if self.monitor:
            self.monitor.stop()
        metrics.cleanup(self.metrics_dir)
        if self.heart:
            self.heart.stop()
        self.db.dispose()
        log.info("daemon_stopped")

    def record_restart(self, what: str, why: str) -> None:
        """A child that died unasked: an audit row (``screener status`` counts them)."""
        try:
            with self.db.transaction() as session:
                session.add(
                    AuditEvent(
                        at=utcnow(), event="process_restarted", reason=what, message=why[:2000]
                    )
                )
        except Exception:  # the database may be what failed; the log still has it
            log.exception("audit_write_failed", event="process_restarted")

    def supervise(self) -> None:
        """Restart what died: worker processes (with backoff) and the exporter's thread."""
        if self.worker_processes:
            self.worker_processes.supervise()
        if self.exporter and not self.exporter.running:
            log.error("exporter_died")
            self.record_restart("exporter", "the exporter thread ended")
            self.exporter.start()
        if self.heart and self.heart.due(time.monotonic()):
            self.heart.beat()

    def heartbeat_details(self) -> dict[str, Any]:
        """What ``screener status`` shows of this daemon (no PHI)."""
        listener = self.listener
        procs = self.worker_processes
        details: dict[str, Any] = {
            "roles": [
                r
                for r, on in (
                    ("listener", bool(listener or self.watcher)),
                    ("worker", bool(procs or self.worker)),
                    ("exporter", self.exporter is not None),
                )
                if on
            ],
            "spool_free_mb": shutil.disk_usage(self.acceptor.spool.root).free // (1024 * 1024),
            "config_file": self.settings.config_file,
        }
        if listener is not None and listener.bound:
            host = self.settings.listener.host
            details["listener"] = f"{self.settings.listener.ae_title}@{host}:{listener.port}" + (
                " (TLS)" if listener.ssl_context else ""
            )
            details["last_c_store"] = listener.last_store_at
            details["listener_exposure"] = listener_exposure(
                self.settings.listener, self.settings.tls, listener.port
            ).as_dict()  # screener status warns when it is open to any caller
        if procs is not None:
            details["workers_alive"] = (
                f"{len([p for p in procs.processes if p.is_alive()])}/{len(procs.children)}"
            )
        if self.model:
            details["model"] = f"{self.model['name']} {self.model['version']}"
        if self.monitor is not None and self.monitor.latest is not None:
            details["drift"] = self.monitor.latest.as_dict()  # screener status, the web
        return details

    def run(self) -> int:
        """Start, block until SIGINT or SIGTERM, then stop cleanly; returns the exit status.

        A child that keeps dying (:class:`CrashLoop`) stops the daemon with status 3, so
        that systemd (``Restart=on-failure``) starts it afresh.
        """
        stop = threading.Event()
        status = 0

        def _signal(signum: int, _frame: FrameType | None) -> None:
            log.info("signal_received", signal=signal.Signals(signum).name)
            stop.set()

        previous = {s: signal.signal(s, _signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not stop.wait(1.0):
                self.supervise()
        except CrashLoop as exc:
            log.error("daemon_crash_loop", error=str(exc))
            status = 3
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return status


def compose(settings: Settings, processor: Processor | None = None) -> Daemon:
    """Build the daemon's stages from the settings and connect them.

    With ``processor`` the worker runs as a thread in this process using it (tests, and
    accept-only set-ups); otherwise ``worker.processes`` worker processes score with the
    model bundle, which is checked here so a missing model stops start-up at once.
    """
    metrics_dir = None
    if settings.metrics.port:
        if processor is None and settings.worker.enabled:
            metrics_dir = metrics.prepare()  # before prometheus_client or a worker starts
        else:
            metrics.enable_in_process()
    db = Database(settings.database.url)
    upgrade(db)
    spool = Spool(settings.storage.spool_dir, settings.storage.min_free_mb)
    acceptor = Acceptor(db, spool, settings)
    listener = None
    if settings.listener.enabled:
        tls = server_context(settings.tls) if settings.listener.tls else None
        listener = Listener(settings.listener, acceptor, ssl_context=tls)
    watcher = FolderWatcher(settings.watch, acceptor) if settings.watch.enabled else None
    daemon = Daemon(settings, db, acceptor, listener, watcher, metrics_dir=metrics_dir)
    exporter = Exporter(
        db, settings, overlay_loader=partial(load_heatmap, settings)
    )  # checks destinations
    ingest = settings.listener.enabled or settings.watch.enabled
    if settings.export.destinations and settings.export.enabled:
        daemon.exporter = exporter
    if settings.rescan.schedule and ingest:
        daemon.scheduler = RescanScheduler(settings, acceptor=acceptor)  # wakes the workers
    if settings.worker.enabled:
        if processor is not None:
            wake = threading.Event()
            daemon.worker = compose_worker(
                settings, processor=processor, db=db, wake=wake, on_completed=exporter.wake.set
            )
            acceptor.on_queued = wake.set
        else:
            from screener.model.bundle import read_metadata

            meta = read_metadata(settings.model.bundle)  # raises ModelError naming the path
            daemon.model = {k: str(meta[k]) for k in ("name", "version", "uid")}
            daemon.worker_processes = WorkerProcesses(settings, on_restart=daemon.record_restart)
            if settings.monitor.enabled:
                from screener.monitor.drift import DriftMonitor
                from screener.monitor.reference import read_reference

                reference = read_reference(settings.model.bundle)  # ModelError if malformed
                daemon.monitor = DriftMonitor(db, settings.monitor, reference, daemon.model["uid"])
            acceptor.on_queued = daemon.worker_processes.wake.set
            exporter.wake = daemon.worker_processes.exports_planned
    daemon.heart = Heart(
        db,
        "serve",
        details=daemon.heartbeat_details,
        every_seconds=settings.metrics.heartbeat_seconds,
    )
    if settings.storage.purge_interval_minutes > 0 and ingest:
        daemon.retention = RetentionTimer(db, settings)
    if settings.metrics.port:
        daemon.health = _health_server(settings, daemon)
    if settings.web.port:
        from screener.web.server import WebThread

        daemon.web = WebThread(settings, db, acceptor)  # the users are checked here, before start
    return daemon


def _latest_drift(daemon: Daemon) -> Any:
    """The drift monitor's latest window (a DriftReport), if the daemon runs one."""
    monitor = getattr(daemon, "monitor", None)  # duck-typed daemons in tests have none
    return monitor.latest if monitor is not None else None


def _health_server(settings: Settings, daemon: Daemon) -> HealthServer:
    """``[metrics]``: /metrics, /healthz, /readyz with the readiness checks of this daemon."""
    from sqlalchemy import text

    def database() -> str | None:
        with daemon.db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return None

    def model_loaded() -> str | None:
        procs = daemon.worker_processes
        if procs is not None and not procs.all_loaded():
            return "a worker process has not loaded the model bundle yet"
        return None

    def listener() -> str | None:
        if daemon.listener is not None and not daemon.listener.bound:
            return "the DICOM listener is not bound"
        return None

    checks = {"database": database, "model": model_loaded, "listener": listener}
    return HealthServer(
        settings.metrics.host,
        settings.metrics.port,
        metrics.registry_for(daemon.db, daemon.model, partial(_latest_drift, daemon)),
        checks,
    )
