"""Scoring: decode spooled images in a process pool, score them with the model bundle, and
record one result per frame.

``ModelProcessor`` is the worker's :class:`~screener.work.worker.Processor`: ``prepare`` submits
each job's decode to the pool (so the next batch decodes while this one is scored),
``finish`` waits for the pixels, runs one ``Bundle.predict`` over every frame of the batch
and returns, per job, either a failure with its reason or the results to record.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import structlog
from sqlalchemy.orm import Session

from screener.config import LoggingSettings, Settings, WorkerSettings
from screener.db import OUTSIDE_DOMAIN, Result, utcnow
from screener.errors import ImageError
from screener.imaging import limits
from screener.runtime import metrics
from screener.runtime.lifecycle import die_with_parent
from screener.runtime.logs import configure_logging
from screener.work.queue import LeasedJob
from screener.work.worker import JobDone, JobFailure, Outcome

if TYPE_CHECKING:
    from screener.model import Bundle

log = structlog.get_logger(__name__)

Frames = list[npt.NDArray[np.uint8]]

#: Decode failures worth another attempt; an ImageError's reasons describe the file itself,
#: and ``decoder_crashed`` is given only to a file that killed the decoder twice.
RETRYABLE_DECODE = frozenset({"decode_error"})


@dataclass(frozen=True)
class DecodeFailure:
    reason: str
    message: str


def decode_spooled(path: str) -> Frames | DecodeFailure:
    """Runs in a pool process: the spooled file's canonical images, or why there are none."""
    from screener.imaging import load_image

    try:
        return load_image(path)
    except ImageError as exc:
        return DecodeFailure(exc.reason, str(exc))
    except FileNotFoundError:
        return DecodeFailure("spool_file_missing", f"spooled file {path} is missing")
    except MemoryError:
        cap = limits.current().address_space_mb
        return DecodeFailure(
            "decode_memory_limit",
            f"decoding needs more memory than the decode process may use ({cap} MB, "
            "worker.decode_memory_mb)",
        )
    except Exception as exc:  # process boundary: report, never raise across it
        return DecodeFailure("decode_error", f"{type(exc).__name__}: {exc}")


#: What a worker calls to decode one spooled file (a module-level function: it is pickled
#: by reference into the decode processes).
DecodeFn = Callable[[str], Frames | DecodeFailure]


def decode_limits(settings: WorkerSettings, *, memory_cap: bool) -> limits.DecodeLimits:
    """The worker settings as decode limits; ``memory_cap`` only in a decode process."""
    return limits.DecodeLimits(
        max_pixels=settings.decode_max_pixels,
        address_space_mb=settings.decode_memory_mb if memory_cap else 0,
    )


def init_decode_process(
    logging_settings: LoggingSettings, decode: limits.DecodeLimits, parent_pid: int
) -> None:
    """Runs first in each decode process: die with the worker, log JSON, decode under limits,
    and import the decoders before the first study arrives."""
    die_with_parent(parent_pid)
    configure_logging(logging_settings)
    limits.apply(decode)
    import screener.imaging  # noqa: F401


def _ready() -> None:
    """A no-op task: returns once a decode process has started and initialised."""


@dataclass(frozen=True)
class FrameScore:
    """One frame's scores; ``in_domain`` False: the domain guard found it unlike the
    training films, so it is recorded as not assessed and never flagged."""

    frame_number: int
    probability: float
    domain_score: float | None
    in_domain: bool


@dataclass
class Submitted:
    """A batch's decodes and the pool they went to (``None``: it could not take one)."""

    pool: ProcessPoolExecutor
    futures: list[Future[Frames | DecodeFailure] | None] = field(default_factory=list)


ResultHook = Callable[[Session, Result], None]


class ModelProcessor:
    """Decode ahead in a process pool; score a whole batch with one model call."""

    def __init__(
        self,
        settings: Settings,
        bundle: Bundle | None = None,
        on_result: ResultHook | None = None,
        decode: DecodeFn = decode_spooled,
    ) -> None:
        from screener.model.opening import open_model

        self.settings = settings
        self.bundle = bundle or open_model(settings)
        self.on_result = on_result
        self.decode = decode
        self._audit_seed: str | None = None  # read from the database at the first result
        # inline decoding (no pool) keeps the pixel budget; the memory cap is for the pool
        limits.apply(decode_limits(settings.worker, memory_cap=False))
        self.pool: ProcessPoolExecutor | None = None
        self._pool_size = settings.worker.decode_processes
        self._new_pool()
        self._warm_up_model()

    def _warm_up_model(self) -> None:
        """Run the model once at full and at single batch size, so the first study does not
        pay for TensorFlow's one-time set-up of its kernels."""
        size = self.bundle.input_size
        for n in {self.settings.worker.max_batch, 1}:
            self.bundle.assess(np.zeros((n, size, size), dtype=np.uint8))

    def _new_pool(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = (
            ProcessPoolExecutor(
                self._pool_size,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=init_decode_process,
                initargs=(
                    self.settings.logging,
                    decode_limits(self.settings.worker, memory_cap=True),
                    os.getpid(),
                ),
            )
            if self._pool_size > 0
            else None
        )
        if self.pool is not None:  # start the processes now, not on the first study
            for future in [self.pool.submit(_ready) for _ in range(self._pool_size)]:
                future.result()

    def prepare(self, jobs: list[LeasedJob]) -> Submitted | None:
        """Submit each job's decode; ``None`` for one the pool could not take (it broke
        while the previous batch decoded): :meth:`_gather` decodes those alone."""
        if self.pool is None:
            return None
        submitted = Submitted(self.pool)
        for job in jobs:
            try:
                submitted.futures.append(self.pool.submit(self.decode, job.spool_path))
            except BrokenProcessPool:
                submitted.futures.append(None)
        return submitted

    def _gather(
        self, jobs: list[LeasedJob], prepared: Submitted | None
    ) -> list[Frames | DecodeFailure]:
        """The decoded frames of each job.

        When a decode process dies (a codec crash, the OOM killer), every decode it had not
        returned is lost, this batch's and the next's. The pool is replaced and each of those
        jobs is decoded again *alone*: the innocent ones succeed, in this same attempt, and
        the one that kills the decoder a second time is the culprit, failed as
        ``decoder_crashed`` (not retried).
        """
        if prepared is None:
            return [self.decode(job.spool_path) for job in jobs]
        decoded: list[Frames | DecodeFailure | None] = []
        lost: list[int] = []
        for i, future in enumerate(prepared.futures):
            try:
                if future is None:
                    raise BrokenProcessPool("not submitted: the pool was broken")
                decoded.append(future.result())
            except (BrokenProcessPool, CancelledError):
                decoded.append(None)
                lost.append(i)
        if lost:
            log.error("decode_pool_broken", jobs_to_isolate=len(lost))
            if prepared.pool is self.pool:  # not yet replaced by the previous batch's gather
                self._new_pool()
            for i in lost:
                decoded[i] = self._decode_alone(jobs[i])
        return [item for item in decoded if item is not None]

    def _decode_alone(self, job: LeasedJob) -> Frames | DecodeFailure:
        assert self.pool is not None
        try:
            return self.pool.submit(self.decode, job.spool_path).result()
        except (BrokenProcessPool, CancelledError):
            log.error("decoder_crashed", job_id=job.job_id, sop_instance_uid=job.sop_instance_uid)
            self._new_pool()
            return DecodeFailure(
                "decoder_crashed",
                f"the decoding process died twice on SOP Instance {job.sop_instance_uid}, "
                "the second time decoding it alone",
            )

    def finish(self, jobs: list[LeasedJob], prepared: Submitted | None) -> list[Outcome]:
        m = metrics.instruments()
        started = time.monotonic()
        decoded = self._gather(jobs, prepared)
        if m is not None:
            m.decode_seconds.observe(time.monotonic() - started)
        frames: Frames = []
        owner: list[tuple[int, int]] = []  # (job index, frame number)
        outcomes: list[Outcome | None] = [None] * len(jobs)
        for i, item in enumerate(decoded):
            if isinstance(item, DecodeFailure):
                outcomes[i] = JobFailure(
                    item.reason, item.message, retryable=item.reason in RETRYABLE_DECODE
                )
                continue
            for number, image in enumerate(item, start=1):
                frames.append(image)
                owner.append((i, number))
        scores: dict[int, list[FrameScore]] = {}
        images: dict[int, Frames] = {}
        for (i, _number), image in zip(owner, frames, strict=True):
            images.setdefault(i, []).append(image)
        if frames:
            started = time.monotonic()
            assessed = self.bundle.assess(np.stack(frames))
            if m is not None:
                m.inference_seconds.observe(time.monotonic() - started)
            for k, (i, number) in enumerate(owner):
                scores.setdefault(i, []).append(
                    FrameScore(
                        number,
                        float(assessed.probabilities[k]),
                        None
                        if assessed.domain_scores is None
                        else float(assessed.domain_scores[k]),
                        assessed.in_domain(k) or not self.settings.population.domain_guard,
                    )
                )
        scored_at = utcnow()
        for i in range(len(jobs)):
            if outcomes[i] is None:
                outcomes[i] = JobDone(
                    record=partial(
                        self._record,
                        scores=scores.get(i, []),
                        images=images.get(i, []),
                        scored_at=scored_at,
                    )
                )
        return [o for o in outcomes if o is not None]

    def _record(
        self,
        session: Session,
        job: LeasedJob,
        *,
        scores: list[FrameScore],
        images: Frames,
        scored_at: datetime,
    ) -> None:
        b = self.bundle
        if (
            scores
        ):  # a study is drawn for an audit read once, when first scored (screener.site.audit)
            from screener.site.audit import draw_for, seed_of

            if self._audit_seed is None:
                self._audit_seed = seed_of(session, self.settings.site.audit_seed)
            draw_for(
                session, job.instance_id, self.settings.site.audit_share, self._audit_seed,
                scored_at,
            )  # fmt: skip
        for score, image in zip(scores, images, strict=True):
            result = Result(
                job_id=job.job_id,
                instance_id=job.instance_id,
                frame_number=score.frame_number,
                probability=score.probability,
                label=b.label(score.probability) if score.in_domain else OUTSIDE_DOMAIN,
                threshold=b.threshold,
                domain_score=score.domain_score,
                model_name=b.name,
                model_version=b.version,
                model_uid=b.uid,
                queued_at=job.queued_at,
                started_at=job.started_at,
                scored_at=scored_at,
            )
            # inserted with the rest of the batch at commit; that flush also refreshes the
            # study's worklist summary (screener.db.summary)
            session.add(result)
            if self.settings.export.heatmap_capture:
                session.flush()  # the heatmap file is named by the result's id
                self._save_heatmap(image, heatmap_path(self.settings, result.id))
            if self.on_result is not None:
                self.on_result(session, result)
            log.info(
                "instance_scored",
                job_id=job.job_id,
                sop_instance_uid=job.sop_instance_uid,
                frame=score.frame_number,
                probability=round(score.probability, 4),
                domain_score=None if score.domain_score is None else round(score.domain_score, 2),
                label=result.label,
                model_uid=b.uid,
            )

    def _save_heatmap(self, image: npt.NDArray[np.uint8], path: Path) -> None:
        """Grad-CAM overlay for the optional Secondary Capture; a failure never fails the job."""
        from PIL import Image

        from screener.model.gradcam import gradcam, overlay

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(overlay(image, gradcam(self.bundle, image))).save(path)
        except Exception:  # stage boundary: the SR still goes out without the picture
            log.exception("heatmap_failed", path=str(path))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def heatmap_path(settings: Settings, result_id: int) -> Path:
    """Where the worker keeps a result's heatmap overlay (``export.heatmap_capture``)."""
    return Path(settings.storage.spool_dir).resolve() / "heatmaps" / f"{result_id}.png"


def load_heatmap(settings: Settings, result: Result) -> npt.NDArray[np.uint8] | None:
    """The exporter's overlay loader: the RGB overlay the worker saved, if any."""
    from PIL import Image

    path = heatmap_path(settings, result.id)
    if not path.is_file():
        return None
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
