"""The worker loop: drain the queue in micro-batches, decoding ahead of inference.

Take up to ``worker.max_batch`` jobs, or whatever is there after ``worker.max_wait_ms``, so a
lone study is not held back and a backlog runs at full batch size. A batch is handled in
three stages: ``prepare`` starts decoding its pixels (in a process pool), ``finish`` scores
it, and a recorder thread writes the outcome. The loop prepares batch *k+1* before scoring
batch *k*, and records batch *k-1* while it scores: the model waits neither for pixels nor
for the database while work is queued.

A job that fails is recorded with its reason and never stops the batch it was in. Results
are written in the same transaction that marks the job done, and only while this worker
still holds the job's lease.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
from sqlalchemy.orm import Session

from screener.config import Settings
from screener.db import Database, utcnow
from screener.db.engine import as_utc
from screener.runtime import metrics
from screener.runtime.wakeup import Wakeable
from screener.work import queue
from screener.work.queue import LeasedJob

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class JobFailure:
    reason: str
    message: str
    retryable: bool


@dataclass(frozen=True)
class JobDone:
    """Success; ``record`` adds the job's results to the completing transaction."""

    record: Callable[[Session, LeasedJob], None] | None = None


Outcome = JobDone | JobFailure


class Processor(Protocol):
    """Two stages per batch: start the slow input work, then produce one outcome per job."""

    def prepare(self, jobs: list[LeasedJob]) -> Any: ...

    def finish(self, jobs: list[LeasedJob], prepared: Any) -> list[Outcome]: ...

    def close(self) -> None: ...


class SpoolCheckProcessor:
    """Accept-only deployments and tests: a job is done once its spooled file is confirmed.

    No result is stored.
    """

    def prepare(self, jobs: list[LeasedJob]) -> None:
        return None

    def finish(self, jobs: list[LeasedJob], prepared: Any) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for job in jobs:
            if Path(job.spool_path).is_file():
                outcomes.append(JobDone())
            else:
                outcomes.append(
                    JobFailure(
                        "spool_file_missing", f"spooled file {job.spool_path} is missing", False
                    )
                )
        return outcomes

    def close(self) -> None:
        return None


#: How long a partial batch waits for the next job of a stream before it runs as it is.
FILL_TICK_SECONDS = 0.02


class Worker:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        processor: Processor,
        owner: str | None = None,
        wake: Wakeable | None = None,
        on_completed: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.processor = processor
        self.owner = owner or queue.worker_id()
        self.wake = wake  # set by the accept path when a job is queued: no poll delay
        self.on_completed = on_completed  # after a batch's results are committed (exporter)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._recorder: ThreadPoolExecutor | None = None  # only while run() runs
        self._recording: Future[None] | None = None

    def _idle(self) -> None:
        """Wait for a wake-up (or the poll interval, the fallback for other hosts' ingest)."""
        timeout = self.settings.worker.poll_seconds
        if self.wake is None:
            self._stop.wait(timeout)
            return
        if self.wake.wait(timeout):
            self.wake.clear()

    def take_batch(self, wait: bool = True) -> list[LeasedJob]:
        """Up to max_batch jobs; with ``wait``, a partial batch waits for more while they keep
        coming (a stream being received), at most max_wait_ms. A tick without a new job ends
        the wait: a lone study is not held back for company that is not on its way."""
        w, q = self.settings.worker, self.settings.queue
        batch = queue.dequeue(self.db, self.owner, w.max_batch, q.lease_seconds, q.max_attempts)
        if not batch or not wait:
            return batch
        deadline = time.monotonic() + w.max_wait_ms / 1000
        while len(batch) < w.max_batch and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(min(FILL_TICK_SECONDS, max(0.0, deadline - time.monotonic())))
            more = queue.dequeue(
                self.db, self.owner, w.max_batch - len(batch), q.lease_seconds, q.max_attempts
            )
            if not more:
                break
            batch += more
        return batch

    def _prepare(self, batch: list[LeasedJob]) -> Any:
        try:
            return self.processor.prepare(batch)
        except Exception as exc:  # stage boundary: fail this batch, keep the worker
            log.exception("batch_prepare_failed", jobs=len(batch))
            return exc

    def _finish(self, batch: list[LeasedJob], prepared: Any) -> None:
        """Score the batch, then record it: in the recorder thread when there is one, so the
        database work of this batch overlaps the scoring of the next."""
        started = time.monotonic()
        outcomes = self._score(batch, prepared)
        scoring = time.monotonic() - started
        if self._recorder is None:
            self._record(batch, outcomes, scoring)
            return
        if self._recording is not None:
            self._recording.result()  # at most one batch waits to be recorded
        self._recording = self._recorder.submit(self._record_logged, batch, outcomes, scoring)

    def _score(self, batch: list[LeasedJob], prepared: Any) -> list[Outcome]:
        try:
            if isinstance(prepared, Exception):
                raise prepared
            return self.processor.finish(batch, prepared)
        except Exception as exc:  # stage boundary: a crashing processor fails the batch, not us
            log.exception("batch_failed", jobs=len(batch))
            return [JobFailure("processor_error", f"{type(exc).__name__}: {exc}", True)] * len(
                batch
            )

    def _record_logged(
        self, batch: list[LeasedJob], outcomes: list[Outcome], scoring: float
    ) -> None:
        try:
            self._record(batch, outcomes, scoring)
        except Exception:  # thread boundary: the leases expire and the jobs are retried
            log.exception("batch_record_failed", jobs=len(batch))

    def _record(self, batch: list[LeasedJob], outcomes: list[Outcome], scoring: float) -> None:
        """Complete the done jobs (with their results) in one transaction; fail the others."""
        started = time.monotonic()
        done = failed = 0
        finished = [
            (job.job_id, _bind(outcome, job))
            for job, outcome in zip(batch, outcomes, strict=True)
            if isinstance(outcome, JobDone)
        ]
        try:
            done = queue.complete_many(self.db, finished, self.owner)
        except Exception:  # one job's results failed to record: complete the rest one by one
            log.exception("batch_complete_failed", jobs=len(finished))
            for job_id, record in finished:
                try:
                    done += queue.complete(self.db, job_id, self.owner, record=record)
                except Exception as exc:
                    queue.fail(
                        self.db,
                        job_id,
                        self.owner,
                        "record_failed",
                        f"{type(exc).__name__}: {exc}",
                        max_attempts=self.settings.queue.max_attempts,
                        retryable=True,
                    )
        if done and self.on_completed is not None:
            self.on_completed()
        for job, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, JobDone):
                continue
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
            log.warning(
                "job_failed",
                job_id=job.job_id,
                sop_instance_uid=job.sop_instance_uid,
                reason=outcome.reason,
                error=outcome.message,
            )
        if (m := metrics.instruments()) is not None:
            m.batch_size.observe(len(batch))
            m.batch_seconds.observe(scoring)
            now = utcnow()
            for job, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, JobDone):
                    m.latency_seconds.observe((now - as_utc(job.queued_at)).total_seconds())
        log.info(
            "batch_done",
            jobs=len(batch),
            done=done,
            failed=failed,
            seconds=round(scoring, 3),
            record_seconds=round(time.monotonic() - started, 3),
        )

    def run_once(self) -> int:
        """Take, prepare and finish one batch; returns the number of jobs handled."""
        batch = self.take_batch()
        if batch:
            self._finish(batch, self._prepare(batch))
        return len(batch)

    def run(self) -> None:
        """Drain the queue until stopped, preparing each batch while the previous one finishes."""
        log.info("worker_started", owner=self.owner, max_batch=self.settings.worker.max_batch)
        self._recorder = ThreadPoolExecutor(1, thread_name_prefix="worker-record")
        pending: tuple[list[LeasedJob], Any] | None = None
        while True:
            stopping = self._stop.is_set()
            batch: list[LeasedJob] = []
            if not stopping:
                try:
                    batch = self.take_batch(wait=pending is None)
                except Exception:  # e.g. the database is unreachable: wait and try again
                    log.exception("worker_error")
            nxt = (batch, self._prepare(batch)) if batch else None
            if pending is not None:
                self._finish(*pending)
            pending = nxt
            if stopping and pending is None:
                break
            if pending is None and not self._stop.is_set():
                if self._recording is not None:
                    self._recording.result()  # recorded before the worker sleeps
                self._idle()
        self._recorder.shutdown(wait=True)
        self._recorder, self._recording = None, None
        self.processor.close()
        log.info("worker_stopped", owner=self.owner)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the batches in hand, then stop."""
        self._stop.set()
        if self.wake is not None:
            self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)


def _bind(outcome: JobDone, job: LeasedJob) -> Callable[[Session], None] | None:
    record = outcome.record
    if record is None:
        return None
    return lambda session: record(session, job)
