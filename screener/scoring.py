"""Scoring: decode spooled images in a process pool, score them with the model bundle, and
record one result per frame.

``ModelProcessor`` is the worker's :class:`~screener.worker.Processor`: ``prepare`` submits
each job's decode to the pool (so the next batch decodes while this one is scored),
``finish`` waits for the pixels, runs one ``Bundle.predict`` over every frame of the batch
and returns, per job, either a failure with its reason or the results to record.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import structlog
from sqlalchemy.orm import Session

from screener.config import Settings, WorkerSettings
from screener.db import Result, utcnow
from screener.errors import ImageError
from screener.logs import configure_logging
from screener.queue import LeasedJob
from screener.worker import JobDone, JobFailure, Outcome

if TYPE_CHECKING:
    from screener.model import Bundle

log = structlog.get_logger(__name__)

Frames = list[npt.NDArray[np.uint8]]

#: Decode failures worth another attempt; an ImageError's reasons describe the file itself.
RETRYABLE_DECODE = frozenset({"decode_error", "decoder_crashed"})


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
    except Exception as exc:  # process boundary: report, never raise across it
        return DecodeFailure("decode_error", f"{type(exc).__name__}: {exc}")


def _warm_up() -> None:
    """Runs in each new pool process: import the decoders before the first study arrives."""
    import screener.imaging  # noqa: F401


ResultHook = Callable[[Session, Result], None]


class ModelProcessor:
    """Decode ahead in a process pool; score a whole batch with one model call."""

    def __init__(
        self, settings: Settings, bundle: Bundle | None = None, on_result: ResultHook | None = None
    ) -> None:
        from screener.model import load_bundle

        self.settings = settings
        self.bundle = bundle or load_bundle(settings.model.bundle)
        self.on_result = on_result
        self.pool: ProcessPoolExecutor | None = None
        self._pool_size = settings.worker.decode_processes
        self._new_pool()
        self._warm_up_model()

    def _warm_up_model(self) -> None:
        """Run the model once at full and at single batch size, so the first study does not
        pay for TensorFlow's one-time set-up of its kernels."""
        size = self.bundle.input_size
        for n in {self.settings.worker.max_batch, 1}:
            self.bundle.predict(np.zeros((n, size, size), dtype=np.uint8))

    def _new_pool(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = (
            ProcessPoolExecutor(
                self._pool_size,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=configure_logging,
                initargs=(self.settings.logging,),
            )
            if self._pool_size > 0
            else None
        )
        if self.pool is not None:  # start the processes now, not on the first study
            for future in [self.pool.submit(_warm_up) for _ in range(self._pool_size)]:
                future.result()

    def prepare(self, jobs: list[LeasedJob]) -> list[Future[Frames | DecodeFailure]] | None:
        if self.pool is None:
            return None
        return [self.pool.submit(decode_spooled, job.spool_path) for job in jobs]

    def _gather(
        self, jobs: list[LeasedJob], prepared: list[Future[Frames | DecodeFailure]] | None
    ) -> list[Frames | DecodeFailure]:
        if prepared is None:
            return [decode_spooled(job.spool_path) for job in jobs]
        decoded: list[Frames | DecodeFailure] = []
        broken = False
        for future in prepared:
            try:
                decoded.append(future.result())
            except BrokenProcessPool:
                broken = True
                decoded.append(
                    DecodeFailure("decoder_crashed", "the decoding process died on this batch")
                )
        if broken:
            log.error("decode_pool_broken", jobs=len(jobs))
            self._new_pool()
        return decoded

    def finish(
        self, jobs: list[LeasedJob], prepared: list[Future[Frames | DecodeFailure]] | None
    ) -> list[Outcome]:
        decoded = self._gather(jobs, prepared)
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
        scores: dict[int, list[tuple[int, float]]] = {}
        images: dict[int, Frames] = {}
        for (i, _number), image in zip(owner, frames, strict=True):
            images.setdefault(i, []).append(image)
        if frames:
            probabilities = self.bundle.predict(np.stack(frames))
            for (i, number), p in zip(owner, probabilities, strict=True):
                scores.setdefault(i, []).append((number, float(p)))
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
        scores: list[tuple[int, float]],
        images: Frames,
        scored_at: datetime,
    ) -> None:
        b = self.bundle
        for (frame_number, probability), image in zip(scores, images, strict=True):
            result = Result(
                job_id=job.job_id,
                instance_id=job.instance_id,
                frame_number=frame_number,
                probability=probability,
                label=b.label(probability),
                threshold=b.threshold,
                model_name=b.name,
                model_version=b.version,
                model_uid=b.uid,
                queued_at=job.queued_at,
                started_at=job.started_at,
                scored_at=scored_at,
            )
            session.add(result)  # inserted with the rest of the batch at commit
            if self.settings.export.heatmap_capture:
                session.flush()  # the heatmap file is named by the result's id
                self._save_heatmap(image, heatmap_path(self.settings, result.id))
            if self.on_result is not None:
                self.on_result(session, result)
            log.info(
                "instance_scored",
                job_id=job.job_id,
                sop_instance_uid=job.sop_instance_uid,
                frame=frame_number,
                probability=round(probability, 4),
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


def configure_inference(settings: WorkerSettings, index: int = 0, processes: int = 1) -> None:
    """``worker.device`` and ``worker.inference_threads``, before TensorFlow is imported."""
    select_device(settings.device, index, processes)
    limit_threads(settings.inference_threads)


def limit_threads(threads: int) -> None:
    """Cap TensorFlow's thread pools at ``threads`` (0 = leave its default: every core).

    Must run before TensorFlow executes its first operation.
    """
    if threads <= 0:
        return
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def select_device(device: str, index: int, processes: int) -> None:
    """Make TensorFlow see the configured device; call before TensorFlow is imported.

    ``cpu`` hides every GPU; ``gpu:N`` shows GPU N only; ``auto`` gives worker *i* GPU *i*
    when several worker processes run (one worker per GPU), and otherwise leaves TensorFlow
    to use a GPU if there is one.
    """
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    elif device.startswith("gpu:"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    elif processes > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
