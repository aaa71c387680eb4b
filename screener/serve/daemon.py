"""The daemon, wired in one place.

    database -> spool -> accept path -> DICOM listener, folder watcher, web upload  (ingest)
               (listener.processes > 1: more listener processes on the port, supervised)
    queue -> worker processes (screener.serve.workers): decode pool -> model bundle
          -> results, audit draw, SR deliveries planned                          (scoring)
    results -> exporter: DICOM SR (and heatmap capture) C-STOREd to PACS, with retries;
               nothing leaves while the site is silent (screener.site.mode)
    rescan scheduler: C-FIND / C-MOVE missed studies back to the listener (nightly)
    retention timer: purge settled images from the spool, prune the audit trail
    web worklist (screener.web), health and metrics (screener.serve.health)
    heartbeats of every process (screener.runtime.heartbeat), the drift monitor

``compose(settings)`` builds every stage and connects them; ``Daemon.run()`` starts them,
waits for SIGINT / SIGTERM and shuts down in order: stop accepting (listener, watcher), let
in-flight stores finish, then let the workers finish the batches in hand. Nothing
acknowledged is lost: an instance is durable before Success is returned, and a job
interrupted mid-batch returns to the queue when its lease expires.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog

from screener.config import Settings
from screener.db import AuditEvent, Database, utcnow
from screener.db.migrate import upgrade
from screener.dicomnet.tls import server_context
from screener.ingest.accept import Acceptor
from screener.ingest.exposure import listener_exposure, warn_if_open
from screener.ingest.listener import Listener
from screener.ingest.ownership import claim_spool
from screener.ingest.spool import Spool
from screener.ingest.watcher import FolderWatcher
from screener.report.destinations import result_targets
from screener.report.export import Exporter
from screener.rescan import RescanScheduler
from screener.runtime import metrics
from screener.runtime.heartbeat import Heart
from screener.serve.health import HealthServer, registry_for
from screener.serve.workers import CrashLoop, ListenerProcesses, WorkerProcesses, compose_worker
from screener.work.retention import RetentionTimer
from screener.work.scoring import load_heatmap
from screener.work.worker import Processor, Worker

if TYPE_CHECKING:
    from screener.monitor.drift import DriftMonitor
    from screener.web.server import WebThread

log = structlog.get_logger(__name__)


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
    #: listener.processes - 1 more listeners on the port, started once it is bound
    listener_processes: ListenerProcesses | None = None

    def start(self) -> None:
        if self.listener or self.watcher:
            # only where instances are accepted: on a worker-only host sharing the spool, a
            # listener's file between its rename and its commit is not an orphan
            claim_spool(self.db, self.acceptor.spool, adopt=self.settings.storage.adopt_spool)
            self.acceptor.recover_spool()
        if self.listener:
            warn_if_open(self.settings.listener, self.settings.tls)  # any caller, no TLS?
            self.listener.start()
            if self.settings.listener.processes > 1:
                self.listener_processes = ListenerProcesses(
                    self.settings,
                    self.listener.port,
                    wake=self.worker_processes.wake if self.worker_processes else None,
                    on_restart=self.record_restart,
                )
                self.listener_processes.start()
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
        from screener.site.mode import site_mode

        mode = site_mode(self.db, self.settings, self.model.get("uid"))
        since = mode.since.isoformat() if mode.since else None
        log_at = log.warning if not mode.live else log.info
        log_at("site_mode", mode=mode.mode, bundle_uid=mode.bundle_uid, since=since, line=mode.line)

    def stop(self) -> None:
        log.info("daemon_stopping")
        if self.scheduler:  # first: a rescan's C-MOVE still needs the listener
            self.scheduler.stop()
        if self.listener_processes:
            self.listener_processes.stopping = True  # no restart while they stop
        if self.listener:
            self.listener.stop()
        if self.listener_processes:
            self.listener_processes.stop()
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
        if self.listener_processes:
            self.listener_processes.supervise()
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
        extra = self.listener_processes
        if extra is not None:
            details["listener_processes_alive"] = (
                f"{1 + len([p for p in extra.processes if p.is_alive()])}/{1 + len(extra.children)}"
            )
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
        reuse_port = settings.listener.processes > 1  # the others join it on the port
        listener = Listener(settings.listener, acceptor, ssl_context=tls, reuse_port=reuse_port)
    watcher = FolderWatcher(settings.watch, acceptor) if settings.watch.enabled else None
    daemon = Daemon(settings, db, acceptor, listener, watcher, metrics_dir=metrics_dir)
    exporter = Exporter(
        db, settings, overlay_loader=partial(load_heatmap, settings)
    )  # checks destinations
    ingest = settings.listener.enabled or settings.watch.enabled
    if result_targets(settings) and settings.export.enabled:
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
        registry_for(
            daemon.db,
            daemon.model,
            partial(_latest_drift, daemon),
            [target.address for target in result_targets(settings)],
        ),
        checks,
    )
