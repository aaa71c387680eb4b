"""Heartbeats: each running ``serve`` and worker process writes a row every
``metrics.heartbeat_seconds`` to the shared database, so ``screener status`` on any host can tell
what runs, where, and what stopped (cleanly, or silently: killed or crashed).

The row carries what an operator asks first: the listener's address, the model loaded, the
spool's free space, the last C-STORE. No PHI.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select

from screener.db import Database, Heartbeat, utcnow
from screener.db.engine import as_utc

log = structlog.get_logger(__name__)

#: A process silent for this many of its own beat intervals, without a clean stop, is taken
#: for dead (each row records its interval: ``every_s``).
SILENT_BEATS = 3
#: Stopped processes older than this are not listed.
FORGET_AFTER = timedelta(days=7)

Details = Callable[[], dict[str, Any]]


class Heart:
    """This process's row: ``beat()`` now and then, ``stop()`` on a clean exit."""

    def __init__(
        self,
        db: Database,
        component: str,
        details: Details | None = None,
        every_seconds: float = 10.0,
    ) -> None:
        self.db = db
        self.every = every_seconds
        self.component = component
        self.details = details
        self.host = socket.gethostname()[:128]
        self.pid = os.getpid()
        self.key = f"{component}@{self.host}:{self.pid}"
        self.started_at = utcnow()
        self._last = 0.0

    def due(self, monotonic: float) -> bool:
        return monotonic - self._last >= self.every

    def beat(self, monotonic: float | None = None, *, stopped: bool = False) -> None:
        """Write the row; never raises (a database outage shows as silence)."""
        import time

        self._last = time.monotonic() if monotonic is None else monotonic
        try:
            payload = {"every_s": self.every, **(self.details() if self.details else {})}
            details = json.dumps(payload, default=str)
            now = utcnow()
            with self.db.transaction() as session:
                row = session.scalars(
                    select(Heartbeat).where(Heartbeat.key == self.key)
                ).one_or_none()
                if row is None:
                    row = Heartbeat(
                        key=self.key,
                        component=self.component,
                        host=self.host,
                        pid=self.pid,
                        started_at=self.started_at,
                    )
                    session.add(row)
                row.beat_at = now
                row.stopped_at = now if stopped else None
                row.details = details
        except Exception:  # the database may be what failed; the next beat tries again
            log.warning("heartbeat_failed", component=self.component, exc_info=True)

    def stop(self) -> None:
        self.beat(stopped=True)


class HeartbeatThread:
    """Beats every ``heart.every`` seconds from a thread (worker processes)."""

    def __init__(self, heart: Heart) -> None:
        self.heart = heart
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.heart.beat()
            if self._stop.wait(self.heart.every):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.heart.stop()


@dataclass
class ProcessState:
    component: str
    host: str
    pid: int
    state: str  # running, stopped, silent
    started_at: datetime
    beat_at: datetime
    seconds_since_beat: float
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "host": self.host,
            "pid": self.pid,
            "state": self.state,
            "started_at": self.started_at.isoformat(),
            "beat_at": self.beat_at.isoformat(),
            "seconds_since_beat": round(self.seconds_since_beat, 1),
            "details": self.details,
        }


def processes(db: Database, now: datetime | None = None) -> list[ProcessState]:
    """Every process seen within :data:`FORGET_AFTER`, running ones first."""
    now = now or utcnow()
    with db.transaction() as session:
        rows = session.scalars(
            select(Heartbeat)
            .where(Heartbeat.beat_at >= now - FORGET_AFTER)
            .order_by(Heartbeat.beat_at.desc())
        ).all()
    out = []
    for r in rows:
        age = (now - as_utc(r.beat_at)).total_seconds()
        details = json.loads(r.details) if r.details else {}
        silent_after = SILENT_BEATS * float(details.get("every_s", 10.0))
        state = "stopped" if r.stopped_at else "running" if age <= silent_after else "silent"
        out.append(
            ProcessState(
                r.component,
                r.host,
                r.pid,
                state,
                as_utc(r.started_at),
                as_utc(r.beat_at),
                age,
                details,
            )
        )
    order = {"running": 0, "silent": 1, "stopped": 2}
    out.sort(key=lambda p: (order[p.state], p.component, p.host, p.pid))
    return out
