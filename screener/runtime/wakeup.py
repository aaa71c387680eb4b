"""The wake-up signal between stages: the accept path wakes the workers, the workers wake the
exporter; each still polls as a fallback (and for work arriving from other hosts).

Between processes the signal is a pipe (:class:`PipeEvent`), not a ``multiprocessing.Event``:
that one is a condition variable whose ``set()`` waits for every sleeper to wake up, so a
worker killed while it waits (SIGKILL, the OOM killer) would leave ``set()`` blocked for
ever, in the listener's thread. Writing a byte to a pipe waits for no one.
"""

from __future__ import annotations

import contextlib
import os
from multiprocessing.context import SpawnContext
from typing import Protocol


class Wakeable(Protocol):
    """A threading Event, or a :class:`PipeEvent` between processes."""

    def set(self) -> None: ...

    def clear(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class PipeEvent:
    """An event between processes made of a pipe; it can be passed to a spawned process.

    ``set()`` writes one byte without blocking (a full pipe already holds a wake-up),
    ``wait()`` polls the read end and ``clear()`` drains it. No lock is held across calls,
    so a process that dies at any point leaves it usable by the others.
    """

    def __init__(self, ctx: SpawnContext) -> None:
        self._reader, self._writer = ctx.Pipe(duplex=False)
        os.set_blocking(self._writer.fileno(), False)  # shared by every copy of the fd
        os.set_blocking(self._reader.fileno(), False)

    def set(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe holds wake-ups already
            os.write(self._writer.fileno(), b"\x01")

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self._reader.poll(timeout))

    def clear(self) -> None:
        try:
            while os.read(self._reader.fileno(), 4096):
                pass
        except BlockingIOError:
            pass

    def is_set(self) -> bool:
        return bool(self._reader.poll(0))
