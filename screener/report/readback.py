"""Reads go back where the AI result went: with ``export.assessments`` on, recording a
radiologist's read plans, in the read's own transaction, one IHE AIRAI assessment SR
(:mod:`screener.report.assessment`) per DICOM destination that has the AI result SR it assesses.

Which AI result: the study's result that set its flag for the model the read was of -- the
latest result of each image (and frame) by that model, the highest probability among those the
model assessed (:mod:`screener.views.worklist` scores a study the same way). A study of several
images sends one assessment, of that result.

Which destinations: each DICOM one (C-STORE or STOW-RS, :func:`dicom_targets`) holding a row of
that result's SR that is pending, delivered or shadow; a dead one (the destination never got the
SR) and other channels (HL7, FHIR) get none. The assessment references that row's SOP Instance
UID. Its row is ``shadow`` when the assessed row is (the SR itself was never sent) or the site is
silent (:mod:`screener.site.mode`), else ``pending`` and due now. A read that could not tell
records no decision on the AI result: none is planned.
"""

from __future__ import annotations

import structlog
from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from screener.config import Settings
from screener.db import (
    OUTSIDE_DOMAIN,
    PAYLOAD_ASSESSMENT,
    PAYLOAD_RESULT,
    Export,
    Instance,
    Result,
    Review,
    utcnow,
)
from screener.report.destinations import dicom_targets
from screener.report.export import SHADOW
from screener.report.ledger import DELIVERED, PENDING
from screener.site.mode import mode_in

log = structlog.get_logger(__name__)

#: States of an AI result SR row that a destination holds or may yet hold
_ASSESSABLE = (PENDING, DELIVERED, SHADOW)


def assessed_result(session: Session, review: Review) -> Result | None:
    """The AI result a read assesses: the study's flag-setting result of the read's model."""
    rows = session.scalars(
        select(Result)
        .join(Instance, Instance.id == Result.instance_id)
        .where(Instance.study_id == review.study_id, Result.model_uid == review.model_uid)
        .order_by(Result.scored_at, Result.id)
    )
    latest: dict[tuple[int, int], Result] = {}
    for result in rows:
        latest[(result.instance_id, result.frame_number)] = result
    assessed = [r for r in latest.values() if r.label != OUTSIDE_DOMAIN]
    if not assessed:
        return None
    return max(assessed, key=lambda r: (r.probability, r.id))


def plan_assessments(session: Session, review: Review, settings: Settings) -> list[Export]:
    """One assessment export per DICOM destination of the read's AI result SR (see the module
    docstring); none with ``export.assessments`` off or for a read that could not tell.

    ``review`` must be flushed (its id is the rows' ``review_id``)."""
    if not settings.export.assessments or review.radiologist_positive is None:
        return []
    targets = [t.address for t in dicom_targets(settings)]
    if not targets:
        return []
    result = assessed_result(session, review)
    if result is None:
        return []
    sent: dict[str, Export] = {}
    for row in session.scalars(
        select(Export)
        .where(
            Export.result_id == result.id,
            Export.payload == PAYLOAD_RESULT,
            Export.destination.in_(targets),
            Export.state.in_(_ASSESSABLE),
            Export.sr_sop_instance_uid.is_not(None),
        )
        .order_by(Export.id)
    ):
        sent[row.destination] = row  # the latest row of each destination
    if not sent:
        return []
    live = mode_in(session, settings, review.model_uid).live
    now = utcnow()
    exports = []
    for destination, row in sent.items():
        shadow = row.state == SHADOW or not live
        exports.append(
            Export(
                result_id=result.id,
                destination=destination,
                payload=PAYLOAD_ASSESSMENT,
                review_id=review.id,
                assessed_uid=row.sr_sop_instance_uid,
                state=SHADOW if shadow else PENDING,
                attempts=0,
                next_attempt_at=None if shadow else now,
                sr_sop_instance_uid=str(generate_uid()),
                created_at=now,
            )
        )
    session.add_all(exports)
    log.info(
        "assessments_planned",
        review_id=review.id,
        result_id=result.id,
        destinations=len(exports),
        shadow=sum(e.state == SHADOW for e in exports),
    )
    return exports
