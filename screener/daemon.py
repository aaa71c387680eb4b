"""The daemon, wired in one place: database -> spool -> accept path -> listener, watcher -> worker.

``compose(settings)`` builds every stage and connects them; ``Daemon.run()`` starts them,
waits for SIGINT / SIGTERM and shuts down in order: stop accepting (listener, watcher), let
in-flight stores finish, then let the worker finish its batch. Nothing acknowledged is lost:
an instance is durable before Success is returned, and a job interrupted mid-batch returns
to the queue when its lease expires.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from types import FrameType

import structlog

from screener.config import Settings
from screener.db import Database
from screener.db.migrate import upgrade
from screener.ingest.accept import Acceptor
from screener.ingest.listener import Listener
from screener.ingest.spool import Spool
from screener.ingest.watcher import FolderWatcher
from screener.worker import Processor, SpoolCheckProcessor, Worker

log = structlog.get_logger(__name__)


@dataclass
class Daemon:
    settings: Settings
    db: Database
    acceptor: Acceptor
    listener: Listener | None
    watcher: FolderWatcher | None
    worker: Worker | None

    def start(self) -> None:
        self.acceptor.recover_spool()
        if self.listener:
            self.listener.start()
        if self.watcher:
            self.watcher.start()
        if self.worker:
            self.worker.start()
        log.info(
            "daemon_started",
            listener=self.listener is not None,
            watcher=self.watcher is not None,
            worker=self.worker is not None,
            database=self.db.dialect,
        )

    def stop(self) -> None:
        log.info("daemon_stopping")
        if self.listener:
            self.listener.stop()
        if self.watcher:
            self.watcher.stop()
        if self.worker:
            self.worker.stop()
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
    """Build the daemon's stages from the settings and connect them."""
    db = Database(settings.database.url)
    upgrade(db)
    spool = Spool(settings.storage.spool_dir, settings.storage.min_free_mb)
    acceptor = Acceptor(db, spool, settings)
    listener = Listener(settings.listener, acceptor) if settings.listener.enabled else None
    watcher = FolderWatcher(settings.watch, acceptor) if settings.watch.enabled else None
    worker = (
        Worker(db, settings, processor or SpoolCheckProcessor()) if settings.worker.enabled else None
    )
    return Daemon(settings, db, acceptor, listener, watcher, worker)
