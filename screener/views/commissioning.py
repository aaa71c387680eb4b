"""The site's reads as a commissioning rests on them: which reads count and with what weight,
what is still missing, and the figures (:mod:`screener.model.commission`). Used by
``screener commission``, ``screener calibrate`` and the web's commissioning page."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import func, select

from screener.db import Database, StudyScoreRow
from screener.db.bins import ASSESSED, p_bin
from screener.model.calibration import Platt
from screener.model.commission import Commissioning
from screener.model.site import Reads
from screener.views.worklist import latest_reads


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
    #: every study the lineage assessed (inside the domain): its P, for flags per 100, as
    #: the mean P of its bin (:data:`screener.db.bins.BINS`, counted in the database), one entry per study
    assessed: npt.NDArray[np.float64]

    def as_reads(self) -> Reads:
        """The reads as :class:`screener.model.site.Reads` (what a site bundle is fitted on)."""
        return Reads(
            np.array(self.probabilities, dtype=np.float64),
            np.array(self.positives, dtype=np.int64),
            np.array(self.weights, dtype=np.float64),
            np.array(self.audited, dtype=np.bool_),
        )


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
    chance the study was read (:func:`latest_reads`; weight-0 reads left out), and the
    P of every study the lineage assessed, from a histogram of the summary table counted in
    the database (:data:`screener.db.bins.BINS`; one grouped SELECT, not a row per study). P scored by the
    parent bundle is put on this bundle's scale (:func:`parent_to_own`)."""
    uids = lineage(meta)
    reads = latest_reads(db, uids)
    kept = [r for r in reads if r.weight > 0]
    remap = parent_to_own(meta)

    def own(p: npt.NDArray[np.float64], uid: str) -> npt.NDArray[np.float64]:
        if remap is None or uid == str(meta["uid"]):
            return p
        return np.asarray(remap.apply(p), dtype=np.float64)

    s = StudyScoreRow
    binned = p_bin()  # grouped in the order of ix_study_scores_assessed_p_bins (screener.db.bins)
    values: list[npt.NDArray[np.float64]] = []
    counts: list[npt.NDArray[np.int64]] = []
    with db.transaction() as session:
        rows = session.execute(
            select(s.model_uid, func.avg(s.probability), func.count())
            .where(s.model_uid.in_(sorted(uids)), ASSESSED)
            .group_by(s.model_uid, binned)
            .order_by(s.model_uid, binned)
        ).all()
    for uid in sorted({str(uid) for uid, _, _ in rows}):
        mine = [(float(p), int(n)) for u, p, n in rows if u == uid]
        values.append(own(np.array([p for p, _ in mine], dtype=np.float64), uid))
        counts.append(np.array([n for _, n in mine], dtype=np.int64))
    assessed = (
        np.repeat(np.concatenate(values), np.concatenate(counts))
        if values
        else np.zeros(0, dtype=np.float64)
    )
    probabilities = np.array([r.probability for r in kept], dtype=np.float64)
    read_uids = np.array([r.model_uid for r in kept], dtype=object)
    for uid in {r.model_uid for r in kept}:
        mask = read_uids == uid
        probabilities[mask] = own(probabilities[mask], uid)
    return SiteReads(
        probabilities=[float(p) for p in probabilities],
        positives=[int(r.radiologist_positive) for r in kept],
        weights=[r.weight for r in kept],
        audited=[not r.model_positive for r in kept],
        undrawn=len(reads) - len(kept),
        assessed=assessed,
    )


def bundle_and_target(
    bundle: str | None, target: float | None, configured: str
) -> tuple[Path, dict[str, Any], float]:
    """The bundle folder (``bundle`` or the configured one), its model.json and the target
    sensitivity (``target`` or the bundle's own); a target outside [0.5, 1) is refused."""
    from screener.errors import ModelError
    from screener.model.bundle import read_metadata

    source = Path(bundle or configured)
    meta = read_metadata(source)
    chosen = target or float(meta.get("target_sensitivity", 0.95))
    if not 0.5 <= chosen < 1.0:
        raise ModelError(f"--target-sensitivity {chosen} must lie in [0.5, 1)")
    return source, meta, chosen


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
