"""The wake-up signal between stages: the accept path wakes the workers, the workers wake the
exporter; each still polls as a fallback (and for work arriving from other hosts)."""

from __future__ import annotations

from typing import Protocol


class Wakeable(Protocol):
    """A threading or multiprocessing Event."""

    def set(self) -> None: ...

    def clear(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...
