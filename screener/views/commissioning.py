"""The site's reads as a commissioning rests on them: which reads count and with what weight,
what is still missing, and the figures (:mod:`screener.model.commission`). Used by
``screener commission``, ``screener calibrate`` and the web's commissioning page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from screener.db import OUTSIDE_DOMAIN, Database, StudyScoreRow
from screener.model.calibration import Platt
from screener.model.commission import Commissioning
from screener.views.worklist import read_weights, reviewed_reads


def lineage(meta: dict[str, Any]) -> set[str]:
    """A bundle's UID and the UID it was derived from (a site bundle's shipped parent): the
    results whose reads a site calibration or commissioning may rest on."""
    uids = {str(meta["uid"])}
    if meta.get("derived_from"):
        uids.add(str(meta["derived_from"]["uid"]))
    return uids


@dataclass(frozen=True)
class SiteReads:
    """The reads a site operating point rests on (see :func:`site_reads`)."""

    probabilities: list[float]
    positives: list[int]
    weights: list[float]
    audited: list[bool]
    #: reads of unflagged studies that were not drawn for an audit: weight 0, left out
    undrawn: int
    #: every study the lineage assessed (inside the domain): its P, for flags per 100
    assessed: list[float]


def parent_to_own(meta: dict[str, Any]) -> Platt | None:
    """The map from the parent bundle's P to this bundle's, both Platt maps on the same
    networks' raw P (a site bundle records its parent's calibration); None for a bundle
    with no parent, or one whose parent's calibration was not recorded."""
    parent = (meta.get("derived_from") or {}).get("calibration")
    if not parent:
        return None
    first, own = Platt.from_json(parent), Platt.from_json(meta.get("calibration"))
    # own(raw) = own.a * logit(raw) + own.b with logit(raw) = (logit(P_parent) - b1) / a1
    return Platt(a=own.a / first.a, b=own.b - own.a * first.b / first.a)


def site_reads(db: Database, meta: dict[str, Any], aging_hours: float) -> SiteReads:
    """The latest read of every study the bundle's lineage assessed, weighted by 1 / the
    chance the study was read (:func:`read_weights`; weight-0 reads left out), and the
    P of every study the lineage assessed (from the summary table, one SELECT). P scored
    by the parent bundle is put on this bundle's scale (:func:`parent_to_own`)."""
    uids = lineage(meta)
    reads = reviewed_reads(db, uids, aging_hours)
    weights = read_weights(db, reads)
    kept = [(r, w) for r, w in zip(reads, weights, strict=True) if w > 0]
    remap = parent_to_own(meta)

    def own(p: float, uid: str) -> float:
        if remap is None or uid == str(meta["uid"]):
            return float(p)
        return float(remap.apply(np.array([p]))[0])

    with db.transaction() as session:
        assessed = [
            own(p, uid)
            for p, uid in session.execute(
                select(StudyScoreRow.probability, StudyScoreRow.model_uid).where(
                    StudyScoreRow.model_uid.in_(uids),
                    StudyScoreRow.assessment != OUTSIDE_DOMAIN,
                )
            )
        ]
    return SiteReads(
        probabilities=[own(r.probability, r.model_uid) for r, _ in kept],
        positives=[int(bool(r.radiologist_positive)) for r, _ in kept],
        weights=[w for _, w in kept],
        audited=[not r.model_positive for r, _ in kept],
        undrawn=len(reads) - len(kept),
        assessed=assessed,
    )


def shortfalls(reads: SiteReads, target: float, refit: bool) -> list[str]:
    """What the site bundle still needs, in reads, each naming how many more."""
    from screener.model.site import (
        MIN_AUDITED_NORMALS,
        MIN_NEGATIVES_FOR_CALIBRATION,
        min_positives,
    )

    out = []
    positives = sum(reads.positives)
    needed = min_positives(target)
    if positives < needed:
        out.append(
            f"{positives} reads as pneumonia, {needed} needed for sensitivity {target:.2f}: "
            f"{needed - positives} more"
        )
    normals = len(reads.positives) - positives
    if refit and normals < MIN_NEGATIVES_FOR_CALIBRATION:
        out.append(
            f"{normals} reads as normal, {MIN_NEGATIVES_FOR_CALIBRATION} needed to refit the "
            f"calibration: {MIN_NEGATIVES_FOR_CALIBRATION - normals} more"
        )
    audited_normals = sum(
        1 for a, y in zip(reads.audited, reads.positives, strict=True) if a and y == 0
    )
    if audited_normals < MIN_AUDITED_NORMALS:
        out.append(
            f"{audited_normals} audit reads read as normal, {MIN_AUDITED_NORMALS} needed: "
            f"{MIN_AUDITED_NORMALS - audited_normals} more (read the studies marked AUDIT READ)"
        )
    return out


def figures(reads: SiteReads, meta: dict[str, Any], target: float, refit: bool) -> Commissioning:
    """The commissioning figures on the site's reads (``refit``: refit the calibration)."""
    from screener.model.commission import commission

    return commission(
        reads.positives,
        reads.probabilities,
        reads.weights,
        reads.audited,
        reads.assessed,
        float(meta["threshold"]),
        target,
        refit,
    )
