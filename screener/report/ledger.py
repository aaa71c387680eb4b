"""The exports table as operators see it: counts for ``screener status``, the list for
``screener exports list`` and the web's status page, and ``screener exports retry`` for
dead-lettered deliveries. UIDs, states, errors, and each export's study (its short id and
accession number, which the worklist shows too): no PHI."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import structlog
from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session

from screener.db import Database, Export, Instance, Result, Study, utcnow
from screener.db.engine import as_utc
from screener.report.destinations import (
    CHANNELS,
    FHIR,
    FHIR_PREFIX,
    HL7,
    MLLP_SCHEME,
    STOW,
    parse_target,
)

log = structlog.get_logger(__name__)

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
STATES = (PENDING, DELIVERED, DEAD)


def retry_dead(db: Database, destination: str | None = None) -> int:
    """Send dead-lettered exports again (dead -> pending, attempts 0, due now); returns how many."""
    with db.transaction() as session:
        stmt = (
            update(Export)
            .where(Export.state == DEAD)
            .values(state=PENDING, attempts=0, next_attempt_at=utcnow())
        )
        if destination is not None:
            stmt = stmt.where(Export.destination == parse_target(destination).address)
        count = cast(CursorResult[Any], session.execute(stmt)).rowcount
    log.info("exports_retried", destination=destination, count=count)
    return int(count)


def export_counts(db: Database) -> dict[str, int]:
    """Exports by state: pending, delivered, dead (each present, 0 when none)."""
    counts = dict.fromkeys(STATES, 0)
    with db.transaction() as session:
        for state, n in session.execute(
            select(Export.state, func.count()).group_by(Export.state)
        ).all():
            counts[str(state)] = int(n)
    return counts


@dataclass(frozen=True)
class ExportRow:
    """One export as ``screener exports list`` shows it: UIDs and states, no PHI."""

    id: int
    result_id: int
    destination: str
    channel: str  # dimse, stow, hl7 or fhir (screener.report.destinations)
    payload: str  # result, or assessment (a read, IHE AIRAI)
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    sr_sop_instance_uid: str | None
    source_sop_instance_uid: str
    #: what the destination answered on delivery (ACK control id, Location, Retrieve URL)
    receipt: str | None
    created_at: datetime
    delivered_at: datetime | None
    study_id: int  # the study's short id, #N on the worklist
    accession_number: str | None

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in vars(self).items()}


def channel_of(destination: str) -> str:
    """The channel a stored destination names (by its prefix, without parsing it again)."""
    lowered = destination.lower()
    if lowered.startswith(FHIR_PREFIX):
        return FHIR
    if lowered.startswith(MLLP_SCHEME + "://"):
        return HL7
    if lowered.startswith(("http://", "https://")):
        return STOW
    return CHANNELS[0]


def _channel_filter(channel: str) -> Any:
    """exports.destination's condition for one channel (a prefix: the index can serve it)."""
    if channel == FHIR:
        return Export.destination.like(FHIR_PREFIX + "%")
    if channel == HL7:
        return Export.destination.like(MLLP_SCHEME + "://%")
    if channel == STOW:
        return Export.destination.like("http://%") | Export.destination.like("https://%")
    return Export.destination.like("%@%")  # AE_TITLE@HOST:PORT


def waiting_by_destination(
    session: Session, configured: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Each destination (the ``configured`` ones even when idle) with its channel and how many
    deliveries wait (``pending``) or were given up (``dead``), C-STORE first, then STOW-RS,
    HL7, FHIR. Only pending and dead rows are read, by the (state, next_attempt_at) index: a
    year of delivered rows costs nothing."""
    rows = session.execute(
        select(Export.destination, Export.state, func.count())
        .where(Export.state.in_([PENDING, DEAD]))
        .group_by(Export.destination, Export.state)
    ).all()

    def entry(destination: str) -> dict[str, Any]:
        return {"destination": destination, "channel": channel_of(destination), PENDING: 0, DEAD: 0}

    table = {destination: entry(destination) for destination in configured}
    for destination, state, n in rows:
        table.setdefault(str(destination), entry(str(destination)))[str(state)] = int(n)
    return sorted(table.values(), key=lambda e: (CHANNELS.index(e["channel"]), e["destination"]))


def list_exports(
    db: Database,
    state: str | None = None,
    destination: str | None = None,
    limit: int = 50,
    channel: str | None = None,
) -> list[ExportRow]:
    """The most recent exports, newest first, optionally of one state, destination and
    channel, each with its source image's study (one SELECT, limited in SQL)."""
    stmt = (
        select(Export, Instance.sop_instance_uid, Study.id, Study.accession_number)
        .join(Result, Result.id == Export.result_id)
        .join(Instance, Instance.id == Result.instance_id)
        .join(Study, Study.id == Instance.study_id)
        .order_by(Export.id.desc())
        .limit(limit)
    )
    if state is not None:
        stmt = stmt.where(Export.state == state)
    if destination is not None:
        stmt = stmt.where(Export.destination == parse_target(destination).address)
    if channel is not None:
        stmt = stmt.where(_channel_filter(channel))
    with db.transaction() as session:
        return [
            ExportRow(
                id=e.id,
                result_id=e.result_id,
                destination=e.destination,
                channel=channel_of(e.destination),
                payload=e.payload,
                state=e.state,
                attempts=e.attempts,
                last_error=e.last_error,
                next_attempt_at=as_utc(e.next_attempt_at) if e.next_attempt_at else None,
                sr_sop_instance_uid=e.sr_sop_instance_uid,
                source_sop_instance_uid=uid,
                receipt=e.receipt,
                created_at=as_utc(e.created_at),
                delivered_at=as_utc(e.delivered_at) if e.delivered_at else None,
                study_id=study_id,
                accession_number=accession,
            )
            for e, uid, study_id, accession in session.execute(stmt).all()
        ]
