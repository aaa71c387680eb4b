"""The worker loop: drain the queue in micro-batches.

Take up to ``worker.max_batch`` jobs, or whatever is there after ``worker.max_wait_ms``, so
a lone study is not held back and a backlog runs at full batch size. Each batch goes to a
:class:`Processor`; a job that fails is recorded with its reason and never stops the batch.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from screener import queue
from screener.config import Settings
from screener.db import Database
from screener.queue import LeasedJob

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class JobFailure:
    reason: str
    message: str
    retryable: bool


class Processor(Protocol):
    """Turns a batch of leased jobs into outcomes: None for success, or a failure."""

    def process(self, jobs: list[LeasedJob]) -> list[JobFailure | None]: ...


class SpoolCheckProcessor:
    """Until the model is wired in, a job is done once its spooled file is confirmed readable.

    No result is stored; the README says so.
    """

    def process(self, jobs: list[LeasedJob]) -> list[JobFailure | None]:
        outcomes: list[JobFailure | None] = []
        for job in jobs:
            path = Path(job.spool_path)
            if not path.is_file():
                outcomes.append(
                    JobFailure("spool_file_missing", f"spooled file {path} is missing", retryable=False)
                )
            else:
                outcomes.append(None)
        return outcomes


class Worker:
    def __init__(self, db: Database, settings: Settings, processor: Processor, owner: str | None = None) -> None:
        self.db = db
        self.settings = settings
        self.processor = processor
        self.owner = owner or queue.worker_id()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take_batch(self) -> list[LeasedJob]:
        """Up to max_batch jobs; waits at most max_wait_ms for a partial batch to fill."""
        w, q = self.settings.worker, self.settings.queue
        batch = queue.dequeue(self.db, self.owner, w.max_batch, q.lease_seconds, q.max_attempts)
        if not batch:
            return batch
        deadline = time.monotonic() + w.max_wait_ms / 1000
        while len(batch) < w.max_batch and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
            batch += queue.dequeue(
                self.db, self.owner, w.max_batch - len(batch), q.lease_seconds, q.max_attempts
            )
        return batch

    def run_once(self) -> int:
        """Take and process one batch; returns the number of jobs handled."""
        batch = self.take_batch()
        if not batch:
            return 0
        started = time.monotonic()
        try:
            outcomes = self.processor.process(batch)
        except Exception as exc:  # stage boundary: a crashing processor fails the batch, not us
            log.exception("batch_failed", jobs=len(batch))
            outcomes = [JobFailure("processor_error", f"{type(exc).__name__}: {exc}", True)] * len(batch)
        done = failed = 0
        for job, outcome in zip(batch, outcomes, strict=True):
            if outcome is None:
                done += queue.complete(self.db, job.job_id, self.owner)
            else:
                failed += 1
                queue.fail(
                    self.db,
                    job.job_id,
                    self.owner,
                    outcome.reason,
                    outcome.message,
                    max_attempts=self.settings.queue.max_attempts,
                    retryable=outcome.retryable,
                )
                log.warning("job_failed", job_id=job.job_id, sop_instance_uid=job.sop_instance_uid, reason=outcome.reason)
        log.info("batch_done", jobs=len(batch), done=done, failed=failed, seconds=round(time.monotonic() - started, 3))
        return len(batch)

    def run(self) -> None:
        log.info("worker_started", owner=self.owner, max_batch=self.settings.worker.max_batch)
        while not self._stop.is_set():
            try:
                handled = self.run_once()
            except Exception:  # e.g. the database is unreachable: wait and try again
                log.exception("worker_error")
                handled = 0
            if not handled:
                self._stop.wait(self.settings.worker.poll_seconds)
        log.info("worker_stopped", owner=self.owner)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the batch in hand, then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
