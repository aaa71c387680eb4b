"""Worker processes: how one is built (:func:`compose_worker`, the one place, used by
``serve``'s children, ``screener worker`` and the tests' in-process worker), the child's
main (:func:`worker_process_main`: it dies with its parent) and their supervision
(:class:`WorkerProcesses`: a child that dies is started again; one that keeps dying is a
:class:`CrashLoop`, which ends ``serve`` with status 3).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.orm import Session

from screener.config import Settings
from screener.db import Database, Result
from screener.errors import ScreenerError
from screener.runtime.heartbeat import Heart, HeartbeatThread
from screener.runtime.lifecycle import die_with_parent
from screener.runtime.wakeup import PipeEvent, Wakeable
from screener.work.scoring import ResultHook
from screener.work.worker import Processor, Worker

if TYPE_CHECKING:
    pass

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
    when any export destination is set (export, hl7, fhir).
    """
    if processor is None:
        from screener.model.opening import open_model
        from screener.runtime.logs import native_output_as_event
        from screener.work.scoring import ModelProcessor

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
    from screener.report.destinations import result_targets

    if not result_targets(settings):
        return None
    from screener.report.export import plan_exports
    from screener.site.mode import mode_in

    def on_result(session: Session, result: Result) -> None:
        # silent start: the mode for the bundle that scored it, read in the result's transaction
        shadow = not mode_in(session, settings, result.model_uid).live
        plan_exports(session, result, settings, shadow=shadow)

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
    from screener.runtime.logs import configure_logging

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
        started them, see :mod:`screener.runtime.lifecycle`).
        """
        if self.stopping:
            return
        now = time.monotonic() if now is None else now
        for child in self.children:
            if _due(child, now, self.settings, "worker", self.on_restart):
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


def _due(
    child: _Child,
    now: float,
    settings: Settings,
    what: str,
    on_restart: Callable[[str, str], None] | None,
) -> bool:
    """Whether ``child`` is to be started again now: a process found dead is recorded and
    given its backoff (``worker.restart_backoff_seconds``, doubling); one that died
    ``worker.max_restarts`` times within ``worker.restart_window_seconds`` is a
    :class:`CrashLoop`."""
    proc = child.process
    if proc is not None and proc.is_alive():
        return False
    w = settings.worker
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
            log.error(f"{what}_crash_loop", index=child.index, restarts=len(child.restarts))
            raise CrashLoop(
                f"{what} process {child.index} {why} after {len(child.restarts)} "
                f"restarts within {w.restart_window_seconds:.0f} s "
                "(worker.max_restarts); stopping so that the service manager restarts "
                "screener"
            )
        delay = min(w.restart_backoff_seconds * 2 ** len(child.restarts), 60.0)
        child.restart_at = now + delay
        log.error(f"{what}_process_died", index=child.index, why=why, restart_in_s=delay)
        if on_restart is not None:
            on_restart(f"{what}-{child.index}", f"{what} process {why}")
    return child.restart_at is not None and now >= child.restart_at


@dataclass
class ListenerProcesses:
    """The ``listener.processes - 1`` listener processes beside the daemon's own listener,
    on its port (``SO_REUSEPORT``), supervised as the workers are (same restart settings):
    restarted when they die, dying with the daemon."""

    settings: Settings
    port: int
    wake: PipeEvent | None = None  # the workers' (a job queued in a child wakes them)
    on_restart: Callable[[str, str], None] | None = None
    children: list[_Child] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self.stopping = False

    @property
    def processes(self) -> list[BaseProcess]:
        return [c.process for c in self.children if c.process is not None]

    def _spawn(self, child: _Child) -> None:
        from screener.ingest.listener import listener_process_main

        proc = self._ctx.Process(
            target=listener_process_main,
            args=(self.settings, child.index, self.port, os.getpid(), self.wake),
            name=f"screener-listener-{child.index}",
        )
        proc.start()
        child.process, child.restart_at = proc, None

    def start(self) -> None:
        """Start them: call from the daemon's main thread (see :mod:`screener.runtime.lifecycle`)."""
        self.children = [_Child(i) for i in range(1, self.settings.listener.processes)]
        for child in self.children:
            self._spawn(child)
        log.info("listener_processes_started", processes=len(self.children) + 1, port=self.port)

    def supervise(self, now: float | None = None) -> None:
        """Restart listener processes that died; :class:`CrashLoop` when they keep dying."""
        if self.stopping:
            return
        now = time.monotonic() if now is None else now
        for child in self.children:
            if _due(child, now, self.settings, "listener", self.on_restart):
                child.restarts.append(now)
                self._spawn(child)
                log.warning("listener_process_restarted", index=child.index)

    def stop(self, timeout: float = 45.0) -> None:
        """SIGTERM each: it stops accepting and lets in-flight stores finish; killed after
        ``timeout``."""
        self.stopping = True
        for proc in self.processes:
            if proc.is_alive():
                proc.terminate()
        for proc in self.processes:
            proc.join(timeout)
            if proc.is_alive():
                log.warning("listener_process_killed", pid=proc.pid)
                proc.kill()
                proc.join(10)
