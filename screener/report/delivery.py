"""What a channel is given to deliver and how it says what happened.

The exporter (:mod:`screener.report.export`) claims due rows of one destination and hands
them to that destination's :class:`Channel` as :class:`Delivery` objects; the channel sends
them (one connection per batch where its protocol allows), and reports each one's outcome to
the :class:`Recorder` as soon as it is known: delivered (with what the destination answered),
or a :class:`Failure`, transient or permanent. The exporter turns that into retries with
backoff and dead letters, the same way for every channel.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from screener.db import PAYLOAD_ASSESSMENT, Result, Review


@dataclass(frozen=True)
class Failure:
    """Why one delivery failed, and whether trying again can help.

    Transient: the destination cannot be reached, refuses for now, does not answer, is out of
    resources; the row backs off and is tried again (``export.max_attempts`` bounds it).
    Permanent: the same request would fail the same way (it cannot be built, the destination
    refuses its kind or says it is wrong); the row is dead-lettered at once.
    """

    reason: str
    permanent: bool = False


@dataclass(frozen=True)
class Delivery:
    """One claimed row, with what building its payload needs (read in the claiming
    transaction; the ORM objects are detached)."""

    export_id: int
    #: fixed when the row was planned, so every retry sends the same object: the SR's (or
    #: assessment SR's) SOP Instance UID; the HL7 message and the FHIR Bundle derive theirs
    object_uid: str
    payload: str
    result: Result
    spool_path: str
    #: an assessment's read, and the SOP Instance UID of the AI result SR it assesses
    review: Review | None = None
    assessed_uid: str | None = None

    @property
    def is_assessment(self) -> bool:
        return self.payload == PAYLOAD_ASSESSMENT


class Recorder(Protocol):
    """Where a channel reports each delivery's outcome (the exporter's bookkeeping)."""

    def delivered(self, delivery: Delivery, receipt: str | None = None) -> int:
        """Record a success (``receipt``: what the destination answered); 1 if recorded."""
        ...

    def failed(self, delivery: Delivery, failure: Failure) -> None:
        """Record a failed attempt: back off (transient) or dead-letter (permanent)."""
        ...


class Channel(Protocol):
    """One destination's way of delivering."""

    def send(self, deliveries: Sequence[Delivery], recorder: Recorder) -> tuple[int, bool]:
        """Deliver ``deliveries``, reporting each outcome to ``recorder``.

        Returns how many were delivered and whether the destination was reached at all (when
        it was not, the exporter leaves its other due rows for the next pass).
        """
        ...


P = TypeVar("P")


def build_each(
    deliveries: Sequence[Delivery],
    build: Callable[[Delivery], P],
    recorder: Recorder,
    noun: str = "the SR",
) -> list[tuple[Delivery, P]]:
    """Each delivery with its built payload; one that cannot be built fails alone, at once
    (the same source builds the same failure), unless the machine was short of a resource."""
    built: list[tuple[Delivery, P]] = []
    for delivery in deliveries:
        try:
            built.append((delivery, build(delivery)))
        except Exception as exc:  # stage boundary: one unreadable source fails only its row
            what = "the assessment SR" if delivery.is_assessment else noun
            recorder.failed(
                delivery,
                Failure(f"cannot build {what}: {exc}", permanent=not resource_shortage(exc)),
            )
    return built


def record(
    recorder: Recorder, delivery: Delivery, failure: Failure | None, receipt: str | None = None
) -> int:
    """Report one delivery's outcome: delivered (with ``receipt``) when ``failure`` is None, else
    a failed attempt; 1 if a delivery was recorded."""
    if failure is None:
        return recorder.delivered(delivery, receipt)
    recorder.failed(delivery, failure)
    return 0


def fail_each(
    recorder: Recorder, built: Sequence[tuple[Delivery, object]], failure: Failure
) -> None:
    """Report ``failure`` for every built delivery (the destination was not reached)."""
    for delivery, _ in built:
        recorder.failed(delivery, failure)


#: errno values of a machine short of a resource: building again later may succeed.
_RESOURCE_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR, errno.EIO}
)


def resource_shortage(exc: BaseException) -> bool:
    """Whether a build failed for want of a resource here rather than because of its input."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS
