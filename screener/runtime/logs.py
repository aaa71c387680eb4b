"""Logging: structlog, JSON lines by default, human-readable on a terminal.

Events are names, not sentences: ``log.info("instance_accepted", sop_instance_uid=...)``.
A processor drops any PHI-bearing key (patient name, ID, birth date) that slips into an
event, so a log line never carries them; log UIDs instead.

Every process (the daemon, each worker, each decode-pool process) calls
:func:`configure_logging`. Standard-library logging (pydicom, pynetdicom, PIL, and
``warnings`` through ``py.warnings``) goes through the same processors and the same
renderer, so with the JSON format every line on stderr is one JSON object, a traceback
included (as a string field). A warning or error identical to one emitted within the last
:data:`REPEAT_WINDOW_SECONDS` is dropped; the next one that gets through carries
``repeated=<n>``, how many were dropped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterator, MutableMapping
from typing import Any

import structlog

from screener.config import LoggingSettings

#: Keys that must never appear in a log line (PS3.15 E.1 <https://dicom.nema.org/medical/dicom/current/output/html/part15.html#sect_E.1>: basic de-identification profile).
PHI_KEYS = frozenset(
    {
        "patient_name",
        "patientname",
        "patient_id",
        "patientid",
        "patient_birth_date",
        "patientbirthdate",
        "other_patient_ids",
        "patient_address",
    }
)

#: A warning or error repeated within this many seconds of the last one logged is dropped.
REPEAT_WINDOW_SECONDS = 60.0

#: Levels that are rate-limited (info and debug events are never dropped).
_LIMITED_LEVELS = frozenset({"warning", "warn", "error", "exception", "critical", "fatal"})

#: Keys left out of the "same event" comparison: they differ between otherwise equal events.
_VOLATILE_KEYS = frozenset(
    {
        "timestamp",
        "exc_info",
        "exception",
        "stack_info",
        "stack",
        "repeated",
        "_record",
        "_from_structlog",
    }
)

#: The standard-library loggers that are known to be chatty (PHI at DEBUG: pynetdicom).
_QUIET_LOGGERS = ("pynetdicom",)


def drop_phi(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: remove PHI keys from the event."""
    for key in [k for k in event_dict if k.lower() in PHI_KEYS]:
        del event_dict[key]
    return event_dict


class RepeatLimiter:
    """Drops a warning/error identical to one logged less than ``window`` seconds ago.

    Used as a structlog processor (raises ``DropEvent``) and, for standard-library
    records, as a ``logging.Filter``. The first event that gets through after some were
    dropped carries ``repeated=<n>``.
    """

    _MAX_KEYS = 2048

    def __init__(
        self, window: float = REPEAT_WINDOW_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self.clock = clock  # seconds, monotonic; tests pass their own
        self._lock = threading.Lock()
        self._seen: dict[Hashable, list[float | int]] = {}  # key -> [last emitted, dropped]

    def admit(self, key: Hashable) -> int | None:
        """None: drop this event; otherwise how many identical ones were dropped before it."""
        now = self.clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.window:
                entry[1] += 1
                return None
            dropped = int(entry[1]) if entry is not None else 0
            if entry is None and len(self._seen) >= self._MAX_KEYS:
                self._prune(now)
            self._seen[key] = [now, 0]
            return dropped

    def _prune(self, now: float) -> None:
        for key in [k for k, (at, _) in self._seen.items() if now - at >= self.window]:
            del self._seen[key]
        if len(self._seen) >= self._MAX_KEYS:  # all recent: forget the oldest half
            for key in sorted(self._seen, key=lambda k: self._seen[k][0])[: self._MAX_KEYS // 2]:
                del self._seen[key]

    def __call__(
        self, _: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        level = str(event_dict.get("level") or method_name).lower()
        if level not in _LIMITED_LEVELS:
            return event_dict
        key = (
            "structlog",
            level,
            tuple(
                sorted((str(k), repr(v)) for k, v in event_dict.items() if k not in _VOLATILE_KEYS)
            ),
        )
        dropped = self.admit(key)
        if dropped is None:
            raise structlog.DropEvent
        if dropped:
            event_dict["repeated"] = dropped
        return event_dict

    def filter(self, record: logging.LogRecord) -> bool:
        """``logging.Filter`` protocol, for standard-library records."""
        if record.levelno < logging.WARNING:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let the formatter report it
            return True
        dropped = self.admit(("logging", record.name, record.levelno, message))
        if dropped is None:
            return False
        if dropped:
            record.repeated = dropped
        return True


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of writing (it may be replaced)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


class _LineSink:
    """One line per ``write`` call, under one lock shared by structlog and stdlib logging."""

    _lock = threading.RLock()  # one per process: every sink writes to the same stderr

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write_line(self, line: str) -> None:
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class _SinkLogger:
    """The structlog logger: the rendered event becomes one line in the sink."""

    def __init__(self, sink: _LineSink) -> None:
        self._sink = sink

    def msg(self, message: str) -> None:
        self._sink.write_line(message)

    log = debug = info = warn = warning = error = err = critical = fatal = exception = msg
    failure = msg


class _SinkHandler(logging.Handler):
    """The standard-library handler: each formatted record becomes one line in the sink."""

    def __init__(self, sink: _LineSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write_line(self.format(record))
        except Exception:
            self.handleError(record)


def configure_logging(
    settings: LoggingSettings,
    stream: Any = None,
    *,
    repeat_window: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Set up structlog, and route stdlib logging (pydicom, pynetdicom, warnings) through it.

    ``repeat_window`` overrides :data:`REPEAT_WINDOW_SECONDS` (0 turns rate limiting off);
    ``clock`` is what the window is measured with (tests move it instead of sleeping).
    Calling it again replaces the previous set-up.
    """
    out = stream or _CurrentStderr()
    sink = _LineSink(out)
    level = getattr(logging, settings.level.upper())
    use_console = settings.format == "console" or (
        settings.format == "auto" and hasattr(out, "isatty") and out.isatty()
    )
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer()
    )
    window = REPEAT_WINDOW_SECONDS if repeat_window is None else repeat_window
    limiter = RepeatLimiter(window, clock)
    limit: list[Any] = [limiter] if window > 0 else []
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            drop_phi,
            *limit,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *_: _SinkLogger(sink),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(allow=["repeated"]),  # other extras may carry anything
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            drop_phi,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = _SinkHandler(sink)
    handler.setFormatter(formatter)
    if window > 0:
        handler.addFilter(limiter)
    handler._screener = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_screener", False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    # Third-party libraries log to warnings and above only; pynetdicom logs data set
    # dumps (PHI) at DEBUG.
    root.setLevel(max(level, logging.WARNING))
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    logging.captureWarnings(True)


@contextlib.contextmanager
def native_output_as_event(event: str, *, level: str = "debug") -> Iterator[None]:
    """What C and C++ libraries write straight to file descriptor 2 while the block runs
    (TensorFlow's absl start-up notices, written before Python logging can see them)
    becomes one log event with the lines, instead of raw text between the JSON lines.

    Our own log lines keep going to the real stderr meanwhile. If the block raises, the
    captured lines are written back verbatim: they may explain the failure.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    real = open(saved, "w", buffering=1, closefd=False)  # noqa: SIM115 (closed below)
    previous = sys.stderr
    failed = False
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        sys.stderr = real
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            real.flush()
            os.dup2(saved, 2)
            sys.stderr = previous
            real.close()
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            lines = [line for line in text.splitlines() if line.strip()]
            if lines and failed:
                sys.stderr.write(text)
                sys.stderr.flush()
            elif lines:
                getattr(structlog.get_logger(__name__), level)(event, lines=lines[:100])
