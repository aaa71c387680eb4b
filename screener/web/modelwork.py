"""The web app's decoding and model work in two child processes: the model process makes
Grad-CAM overlays of stored films and scores the upload page's dropped DICOM, PNG or JPEG;
the film process makes the study page's pictures of stored films (``film_png``).

Why processes of their own: TensorFlow stays out of the daemon's process (the listener and
the web threads share its GIL), and a hostile file that crashes a decoder or exhausts
memory takes down only a child; the next request starts a new one. Both decode under the
workers' pixel budget (``worker.decode_max_pixels``, checked from the header before
decoding). The film process, which never loads TensorFlow, also runs under the decode
processes' address-space cap (``worker.decode_memory_mb``); the model process cannot
(TensorFlow reserves far more address space than it uses). Each is started on first use
and dies with the daemon (it watches the parent's pid: it may be started from a request's
thread, whose end would fire the kernel's parent-death signal).

Calls to one process are serialised; each waits at most its timeout, after which the
child is killed and the caller told so.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import structlog

from screener.config import Settings
from screener.imaging.window import DEFAULT_WINDOW

log = structlog.get_logger(__name__)

#: The long side of the pictures the web shows, in pixels.
WEB_LONG_SIDE = 768
#: Frames of an uploaded multi-frame object that are scored and shown.
MAX_UPLOAD_FRAMES = 4
#: How long one call may take (the first one loads TensorFlow and the bundle).
CALL_TIMEOUT_SECONDS = 180.0
#: How long one film's picture may take (a film at the pixel budget decodes in seconds).
FILM_TIMEOUT_SECONDS = 60.0
#: The calls the film process answers; the model process answers the others.
FILM_CALLS = frozenset({"film_png"})
#: Reasons that say the process, not the file, failed: try again (HTTP 503).
UNAVAILABLE = frozenset({"busy", "timeout", "stopping", "decoder_crashed"})


class ModelWorkFailed(Exception):
    """A call that produced no answer: ``reason`` is machine-readable, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def unavailable(self) -> bool:
        """The process failed, not the file: the same call may succeed later."""
        return self.reason in UNAVAILABLE


@dataclass(frozen=True)
class Frame:
    """One frame of an upload: the picture, the overlay, and what the model said."""

    film_png: bytes
    overlay_png: bytes
    probability: float
    flagged: bool
    in_domain: bool
    domain_score: float | None


@dataclass(frozen=True)
class UploadResult:
    kind: str  # "DICOM", "PNG" or "JPEG"
    model: dict[str, Any]  # name, version, uid, threshold, domain_threshold
    frames: list[Frame] = field(default_factory=list)
    n_frames: int = 0
    #: why the daemon would not score it (``population:age``, ``selection:modality``), or None
    skip_reason: str | None = None
    skip_message: str | None = None


# --- the child -------------------------------------------------------------------------

_state: dict[str, Any] = {}


def _bundle() -> Any:
    if "bundle" not in _state:
        from screener.model.opening import open_model

        _state["bundle"] = open_model(_state["settings"])
    return _state["bundle"]


def _png(picture: Any, mode: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(picture, mode=mode).save(out, format="PNG")
    return out.getvalue()


def _overlay_on(bundle: Any, canonical: Any, film: Any) -> Any:
    from screener.model.gradcam import gradcam, heat_at, overlay

    return overlay(film, heat_at(gradcam(bundle, canonical), film.shape))


def overlay_png(path: str) -> bytes:
    """The Grad-CAM overlay of a spooled film's first frame, as PNG."""
    from screener.imaging import load_image
    from screener.model.gradcam import display_frames

    film = display_frames(path, long_side=WEB_LONG_SIDE)[0]
    return _png(_overlay_on(_bundle(), load_image(path)[0], film), "RGB")


def film_picture(
    path: str, long_side: int | None = WEB_LONG_SIDE, window: str = DEFAULT_WINDOW
) -> Any:
    """A spooled film's first frame through screener's pixel pipeline (the loader's steps:
    header checked against ``worker.decode_max_pixels`` before decoding, every pixel
    decoded, then Modality LUT, VOI or the window preset ``window``, MONOCHROME1 inversion,
    8 bits) at its stored Rows x Columns, or scaled once to ``long_side`` in its own
    proportions. Every failure raises :class:`ImageError`."""
    import numpy as np
    from PIL import Image

    from screener.errors import ImageError
    from screener.imaging.decode import iter_frames
    from screener.imaging.dicom import pixel_header, read_dataset
    from screener.imaging.voi import frame_to_uint8

    ds = read_dataset(path)
    try:
        header = pixel_header(ds)  # the pixel budget, from the header
        frame = next(iter_frames(ds, header, header.rows, fast=False))
        grey = frame_to_uint8(frame, header, ds, 0, window)
    except (ImageError, MemoryError):  # MemoryError: the film process's cap, its own reason
        raise
    except Exception as exc:  # the stage boundary, as screener.imaging.loader.load_dicom
        raise ImageError(
            "undecodable_pixel_data",
            f"The pixel data could not be turned into an image ({type(exc).__name__}: {exc}).",
        ) from exc
    if long_side is None:
        return grey
    rows, columns = grey.shape
    scale = long_side / max(rows, columns)
    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    picture = Image.fromarray(grey, mode="L").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(picture)


def film_png(
    path: str, long_side: int | None = WEB_LONG_SIDE, window: str = DEFAULT_WINDOW
) -> bytes:
    """:func:`film_picture` as PNG; runs in the film process, under the decode limits."""
    return _png(film_picture(path, long_side, window), "L")


def kind_of(data: bytes) -> str:
    """What an upload is, by its first bytes: PNG, JPEG, or else (to be checked) DICOM."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    return "DICOM"


def _skip_of(data: bytes) -> Any:
    """Why the daemon would skip this DICOM object (selection, population), or None."""
    from screener.imaging.dicom import read_dataset
    from screener.ingest.skip import SkipRule

    if "skip_rule" not in _state:
        _state["skip_rule"] = SkipRule.of(_state["settings"])  # the daemon's own rule
    return _state["skip_rule"](read_dataset(data))


def assess_upload(data: bytes) -> UploadResult:
    """Score an uploaded file as the daemon would: its frames through the pixel pipeline,
    the population and selection rules for a DICOM object, the domain guard, and the
    Grad-CAM overlay of each frame shown. A DICOM object over ``listener.max_dataset_mb``
    (as uploaded, or as it inflates) is refused first: ``dataset_too_large``."""
    import numpy as np

    from screener.imaging import load_image
    from screener.ingest.inflate import check_size, limit_bytes
    from screener.model.gradcam import display_frames

    settings: Settings = _state["settings"]
    kind = kind_of(data)
    if kind == "DICOM":  # before any dcmread: over listener.max_dataset_mb, or inflating past it
        check_size(data, limit_bytes(settings.listener.max_dataset_mb))
    canonical = load_image(data)  # raises ImageError with a reason, before the model loads
    bundle = _bundle()
    model = {
        "name": bundle.name,
        "version": bundle.version,
        "uid": bundle.uid,
        "threshold": bundle.threshold,
        "domain_threshold": bundle.guard.threshold if bundle.guard is not None else None,
    }
    skip = _skip_of(data) if kind == "DICOM" else None
    if skip is not None:
        return UploadResult(kind, model, [], len(canonical), skip.reason, skip.message)
    shown = canonical[:MAX_UPLOAD_FRAMES]
    assessed = bundle.assess(np.stack(shown))
    films = display_frames(data, long_side=WEB_LONG_SIDE)
    frames = []
    for i, image in enumerate(shown):
        p = float(assessed.probabilities[i])
        inside = assessed.in_domain(i) or not settings.population.domain_guard
        score = None if assessed.domain_scores is None else float(assessed.domain_scores[i])
        frames.append(
            Frame(
                film_png=_png(films[i], "L"),
                overlay_png=_png(_overlay_on(bundle, image, films[i]), "RGB"),
                probability=p,
                flagged=inside and p >= bundle.threshold,
                in_domain=inside,
                domain_score=score,
            )
        )
    return UploadResult(kind, model, frames, len(canonical))


_CALLS: dict[str, Callable[..., Any]] = {
    "overlay_png": overlay_png,
    "assess_upload": assess_upload,
    "film_png": film_png,
}


def child_main(conn: Connection, parent_pid: int, settings: Settings, memory_cap: bool) -> None:
    """The child's loop: answer ``(name, args)`` with ``("ok", value)`` or
    ``("error", reason, message)`` until the pipe closes. ``memory_cap``: the film process,
    under ``worker.decode_memory_mb`` as the decode processes are, which never opens the model
    (so never configures or imports TensorFlow)."""
    from screener.errors import ScreenerError
    from screener.runtime.lifecycle import die_with_parent
    from screener.runtime.logs import configure_logging
    from screener.work.scoring import decode_limits

    die_with_parent(parent_pid, watch_only=True)
    configure_logging(settings.logging)
    # the model process configures TensorFlow when it first opens the model (open_model)
    from screener.imaging import limits

    limits.apply(decode_limits(settings.worker, memory_cap=memory_cap))
    _state["settings"] = settings
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", _CALLS[name](*args)))
        except ScreenerError as exc:
            conn.send(("error", getattr(exc, "reason", type(exc).__name__), str(exc)))
        except MemoryError:
            if limits.current().address_space_mb:
                conn.send(("error", "decode_memory_limit", "the image needed more memory "
                           "than the film process may use (worker.decode_memory_mb)"))  # fmt: skip
            else:
                conn.send(("error", "out_of_memory", "the image needed more memory than there is"))
        except Exception as exc:  # a decoder's own error on hostile bytes: said, not fatal
            log.warning("web_model_call_failed", call=name, error=type(exc).__name__)
            conn.send(("error", "decode_error", f"{type(exc).__name__}: {exc}"))


# --- the parent ------------------------------------------------------------------------


#: what each child logs as it starts and when it is found ended
_EVENTS = {
    "model": ("web_model_process_started", "web_model_process_ended"),
    "film": ("web_film_process_started", "web_film_process_ended"),
}


class _Child:
    """One child process and the pipe to it; ``call`` starts it when needed."""

    def __init__(self, ctx: Any, settings: Settings, role: str, timeout: float) -> None:
        self.settings = settings
        self.role = role  # "model" or "film" (under the memory cap)
        self.timeout = timeout
        self._ctx = ctx
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None
        self.stopped = False

    @property
    def pid(self) -> int | None:
        return None if self._process is None else int(self._process.pid)

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=child_main,
            args=(child, os.getpid(), self.settings, self.role == "film"),
            name=f"screener-web-{self.role}",
            daemon=True,  # ended at the daemon's exit; the pid watch covers a kill -9
        )
        proc.start()
        child.close()
        self._process, self._conn = proc, parent
        log.info(_EVENTS[self.role][0], pid=proc.pid)

    def _kill(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            self._process.kill()
            self._process.join(10)
        self._process, self._conn = None, None

    def _ended(self) -> bool:
        """The child died between calls though ``is_alive`` says otherwise: a killed child
        with threads (BLAS, the parent watch) is a zombie as soon as its main thread has
        gone, but waitpid reaps it only after the last thread, and its end of the pipe stays
        open until then. A call sent now would fail as ``decoder_crashed``."""
        assert self._process is not None and self._conn is not None
        try:
            stat = Path(f"/proc/{self._process.pid}/stat").read_text()
        except OSError:  # no /proc (or reaped meanwhile): the pipe alone says it
            stat = ""
        if stat and stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            return True
        try:
            return self._conn.poll(0)  # between calls nothing is pending but an EOF
        except (EOFError, OSError):
            return True

    def call(self, name: str, *args: Any) -> Any:
        """Run ``name`` in the child; raises :class:`ModelWorkFailed` with the reason."""
        if not self._lock.acquire(timeout=self.timeout):
            raise ModelWorkFailed("busy", "the model is busy with other requests: try again")
        try:
            if self.stopped:
                raise ModelWorkFailed("stopping", "screener is stopping")
            if self._process is None or not self._process.is_alive() or self._ended():
                self._kill()
                self._start()
            assert self._conn is not None
            try:
                self._conn.send((name, args))
                if not self._conn.poll(self.timeout):
                    self._kill()
                    raise ModelWorkFailed(
                        "timeout", f"no answer within {self.timeout:.0f} s: the work was stopped"
                    )
                answer = self._conn.recv()
            except (EOFError, OSError, BrokenPipeError) as exc:
                code = None if self._process is None else self._process.exitcode
                self._kill()
                log.warning(_EVENTS[self.role][1], exit_code=code)
                raise ModelWorkFailed(
                    "decoder_crashed",
                    "the process decoding the image ended (a decoder crash or out of memory); "
                    "nothing else was affected",
                ) from exc
            if answer[0] == "ok":
                return answer[1]
            raise ModelWorkFailed(answer[1], answer[2])
        finally:
            self._lock.release()

    def stop(self) -> None:
        """Kill the child at once; a call waiting on it gets ``decoder_crashed``."""
        self.stopped = True
        proc = self._process
        if proc is not None:
            proc.kill()
            proc.join(10)
        if self._lock.acquire(timeout=5):
            try:
                self._kill()
            finally:
                self._lock.release()


class ModelWork:
    """The parent's handle on the model process and the film process (:data:`FILM_CALLS`
    go to the film process); each is started by its first call."""

    def __init__(
        self,
        settings: Settings,
        timeout: float = CALL_TIMEOUT_SECONDS,
        film_timeout: float = FILM_TIMEOUT_SECONDS,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._model = _Child(ctx, settings, "model", timeout)
        self._films = _Child(ctx, settings, "film", film_timeout)

    @property
    def pid(self) -> int | None:
        """The model process's pid, while one runs."""
        return self._model.pid

    @property
    def film_pid(self) -> int | None:
        """The film process's pid, while one runs."""
        return self._films.pid

    def call(self, name: str, *args: Any) -> Any:
        """Run ``name`` in its process; raises :class:`ModelWorkFailed` with the reason."""
        return (self._films if name in FILM_CALLS else self._model).call(name, *args)

    def stop(self) -> None:
        """Kill both children at once; a call waiting on one gets ``decoder_crashed``."""
        self._model.stop()
        self._films.stop()


__all__ = ["Frame", "ModelWork", "ModelWorkFailed", "UploadResult"]
