"""``RescanScheduler``: the daemon's nightly rescan, at ``rescan.schedule`` local time.

A thread wakes at most every ``poll_seconds`` and compares the local wall clock with the
next run time, rather than sleeping until it: a daylight-saving change, a suspended host or
a clock set by NTP then moves the run with the clock. On the night 02:00 does not exist
(clocks go forward) the rescan runs at the first minute after it; on the night it happens
twice, once. A rescan that fails is logged and the next one is planned as usual: the
scheduler never stops the daemon.

Installations that use the systemd timer in ``deploy/`` instead set ``rescan.schedule = ""``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING

import structlog

from screener.config import Settings
from screener.errors import ConfigError
from screener.rescan.run import RescanSummary, run_rescan

if TYPE_CHECKING:
    from screener.ingest.accept import Acceptor

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
Runner = Callable[[Settings], RescanSummary]


def parse_schedule(text: str) -> time | None:
    """``"HH:MM"`` (24-hour local time) as a time; ``""`` as None (never)."""
    text = text.strip()
    if not text:
        return None
    hour, sep, minute = text.partition(":")
    try:
        if not sep or len(minute) != 2 or not 1 <= len(hour) <= 2:
            raise ValueError(text)
        return time(int(hour), int(minute))
    except ValueError:
        raise ConfigError(
            f"rescan.schedule = {text!r} is invalid: expected a daily local time HH:MM "
            '(00:00-23:59), or "" for never'
        ) from None


def next_run(at: time, now: datetime) -> datetime:
    """The first ``at`` strictly after ``now`` (today if still ahead, else tomorrow)."""
    candidate = datetime.combine(now.date(), at)
    return candidate if candidate > now else candidate + timedelta(days=1)


def daemon_runner(acceptor: Acceptor) -> Runner:
    """The daemon's rescan: through its own accept path (claimed spool, workers woken)."""

    def run(settings: Settings) -> RescanSummary:
        # In the daemon the watcher, when enabled, already takes the folder's files.
        return run_rescan(
            settings, progress=False, scan_folder=not settings.watch.enabled, acceptor=acceptor
        )

    return run


class RescanScheduler:
    """Runs a rescan every day at ``rescan.schedule``; ``start()`` / ``stop()``.

    ``acceptor`` is the daemon's (see :func:`daemon_runner`); tests give a ``runner``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        acceptor: Acceptor | None = None,
        runner: Runner | None = None,
        clock: Clock = datetime.now,
        poll_seconds: float = 30.0,
    ) -> None:
        self.settings = settings
        self.at = parse_schedule(settings.rescan.schedule)
        if runner is None:
            if acceptor is None:
                raise TypeError("RescanScheduler needs the daemon's acceptor or a runner")
            runner = daemon_runner(acceptor)
        self.runner = runner
        self.clock = clock
        self.poll_seconds = poll_seconds
        self.next_at: datetime | None = None
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.at is None:
            log.info("rescan_schedule_disabled")
            return
        self.next_at = next_run(self.at, self.clock())
        self._thread = threading.Thread(target=self._run, name="rescan-scheduler", daemon=True)
        self._thread.start()
        log.info("rescan_scheduled", next_run=self.next_at.isoformat(timespec="minutes"))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop planning; a rescan in progress is waited for at most ``timeout`` seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("rescan_still_running_at_stop")
            self._thread = None

    def _run(self) -> None:
        assert self.at is not None and self.next_at is not None
        while not self._stop.is_set():
            now = self.clock()
            if now < self.next_at:
                wait = min(self.poll_seconds, (self.next_at - now).total_seconds())
                self._stop.wait(max(wait, 0.01))
                continue
            self.run_now()
            self.next_at = next_run(self.at, self.clock())
            log.info("rescan_scheduled", next_run=self.next_at.isoformat(timespec="minutes"))

    def run_now(self) -> RescanSummary | None:
        """One rescan; a failure is logged, never raised (a stage boundary)."""
        self.runs += 1
        try:
            summary = self.runner(self.settings)
        except Exception:
            log.exception("scheduled_rescan_failed")
            return None
        log.info("scheduled_rescan_done", ok=summary.ok, **summary.counts())
        return summary
