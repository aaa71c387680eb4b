"""``screener commission``: choose the site's operating point with the numbers in front of you.

Shows the site's ROC and calibration from the weighted reads (flagged studies and audit reads
of unflagged ones, :mod:`screener.site.audit`), a table of candidate thresholds with sensitivity
and specificity intervals and the flags per 100 studies each would raise, and the threshold
of the recommended rule (:mod:`screener.model.commission`). With ``--out`` it writes the site
bundle: the same networks, the calibration refitted and the threshold of the chosen rule, a
new UID, the table in model.json and the card, and a drift reference made of the site's own
films. Then point ``model.bundle`` at it and run ``screener site go-live``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from screener.commands import setting_flag
from screener.config import Settings

if TYPE_CHECKING:
    from screener.db import Database
    from screener.model.commission import Commissioning
    from screener.views.commissioning import SiteReads


def register(sub: Any) -> None:
    from screener.model.commission import RECOMMENDED, RULES

    p: argparse.ArgumentParser = sub.add_parser(
        "commission",
        help="the site's ROC, calibration and candidate thresholds from its reads; "
        "writes the site bundle with --out",
        description="Commission the model at this site: from the latest read of every study "
        "the bundle assessed (flagged studies weigh 1, audit reads of unflagged studies "
        "1 / the audit share, other reads of unflagged studies are left out) show the ROC "
        "and calibration, a table of candidate thresholds (sensitivity and specificity with "
        "95 %% intervals, flags per 100 assessed studies) and the recommended rule's "
        "threshold. --out writes the site bundle (new UID); refuses, naming how many more "
        "reads it needs, with too few read pneumonias or audit reads read as normal.",
    )
    setting_flag(p, "--db", "database.url", "database URL")
    p.add_argument("--model", default=None, help="bundle folder (default: setting model.bundle)")
    p.add_argument(
        "--target-sensitivity",
        type=float,
        default=None,
        help="default: the bundle's own target (0.95 for the shipped one)",
    )
    p.add_argument(
        "--rule",
        choices=sorted(RULES),
        default=RECOMMENDED,
        help=f"the rule whose threshold --out writes (default {RECOMMENDED}, the recommended)",
    )
    p.add_argument(
        "--keep-calibration",
        action="store_true",
        help="keep the bundle's calibration (default: refit it on the weighted reads)",
    )
    p.add_argument("--out", type=Path, default=None, help="write the site bundle to this folder")
    p.add_argument(
        "--plots", type=Path, default=None, help="write roc.png and calibration.png here"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.db.migrate import open_database
    from screener.views.commissioning import bundle_and_target, figures, shortfalls, site_reads

    source, meta, target = bundle_and_target(
        args.model, args.target_sensitivity, settings.model.bundle
    )
    db = open_database(settings.database.url)
    try:
        reads = site_reads(db, meta, settings.worklist.aging_hours)
        print(
            f"commission   {meta['name']} {meta['version']} (UID {meta['uid']}) for "
            f"sensitivity >= {target:.2f}"
        )
        short = shortfalls(reads, target, refit=not args.keep_calibration)
        audited = sum(reads.audited)
        print(
            f"reads        {len(reads.weights)} used: {len(reads.weights) - audited} of flagged "
            f"studies (weight 1), {audited} audit reads of unflagged ones (weight "
            f"{_audit_weight(reads)}); {reads.undrawn} reads of unflagged studies not drawn "
            f"left out; {len(reads.assessed)} studies assessed in all"
        )
        print(
            f"             read as pneumonia {sum(reads.positives)}, as normal "
            f"{len(reads.positives) - sum(reads.positives)}"
        )
        positives = sum(reads.positives)
        if positives == 0 or positives == len(reads.positives):
            print("not yet      " + "; ".join(short or ["reads of both pneumonia and normal"]))
            return 1
        c = figures(reads, meta, target, refit=not args.keep_calibration)
        for line in report(c, args.rule, short):
            print(line)
        if args.plots is not None:
            from screener.model.plots import plot_commission

            args.plots.mkdir(parents=True, exist_ok=True)
            plot_commission(c, args.plots / "roc.png", args.plots / "calibration.png")
            print(f"pictures     {args.plots / 'roc.png'}, {args.plots / 'calibration.png'}")
        if args.out is None:
            print(
                "adopt it     screener commission --out <folder>, set model.bundle to it, "
                "restart serve, then screener site go-live"
            )
            return 0
        if short:
            print("refused      " + "; ".join(short))
            return 1
        return write(db, source, args.out, reads, c, args.rule, settings)
    finally:
        db.dispose()


def _audit_weight(reads: SiteReads) -> str:
    ws = sorted({round(w, 2) for w, a in zip(reads.weights, reads.audited, strict=True) if a})
    return "/".join(f"{w:g}" for w in ws) or "1 / share"


def report(c: Commissioning, rule: str, short: list[str]) -> list[str]:
    """The commissioning in lines: ROC, calibration, the table, the recommendation."""
    from screener.model.commission import RECOMMENDED, RULES, WHY

    lo, hi = c.auc_interval
    b, a = c.calibration_before, c.calibration_after
    lines = [
        f"ROC          AUC {c.auc:.3f} (95% CI {lo:.3f}-{hi:.3f}), reads weighted",
        (
            f"calibration  Brier {b['brier']:.3f} -> {a['brier']:.3f}, ECE {b['ece']:.3f} -> "
            f"{a['ece']:.3f} (refitted on the weighted reads)"
            if c.refitted
            else f"calibration  Brier {b['brier']:.3f}, ECE {b['ece']:.3f} (kept)"
        ),
        "",
        f"{'threshold':<10} {'sensitivity (95% CI)':<22} {'specificity (95% CI)':<22} "
        f"{'flags/100':>9}  chosen by",
    ]
    for k in c.candidates:
        flags = "-" if k.flags_per_100 is None else f"{k.flags_per_100:.1f}"
        lines.append(
            f"{k.threshold:<10.4f} {k.sensitivity.text():<22} {k.specificity.text():<22} "
            f"{flags:>9}  {k.label}"
        )
    lines.append("")
    chosen = c.candidate(rule)
    rec = c.recommended
    lines.append(
        f"recommended  {RULES[RECOMMENDED][0]}: threshold {rec.threshold:.4f}, sensitivity "
        f"{rec.sensitivity.text()}, specificity {rec.specificity.text()}, "
        f"{rec.flags_per_100 or 0:.1f} flags per 100 studies"
    )
    lines.append(f"why          {WHY}")
    if rule != RECOMMENDED:
        lines.append(f"chosen       {RULES[rule][0]}: threshold {chosen.threshold:.4f}")
    for note in c.notes:
        lines.append(f"note         {note}")
    if short:
        lines.append("not yet      " + "; ".join(short))
    return lines


def write(
    db: Database,
    source: Path,
    out: Path,
    reads: SiteReads,
    c: Commissioning,
    rule: str,
    settings: Settings,
) -> int:

    from screener.model.commission import as_json
    from screener.model.site import write_site_bundle

    site = reads.as_reads()
    record = as_json(c)
    record["rule"] = rule
    new = write_site_bundle(
        source, out, site, c.target, c.refitted, rule=rule, commissioning=record
    )
    print(
        f"bundle       {out} (UID {new['uid']}): threshold {new['threshold']:.4f} by "
        f"{rule}, calibration {'refitted' if c.refitted else 'kept'}"
    )
    print(site_reference(db, source, out, new, c, settings))
    print(f'use it       set model.bundle = "{out}", restart serve, then screener site go-live')
    return 0


def site_reference(
    db: Database,
    source: Path,
    out: Path,
    new: dict[str, Any],
    c: Commissioning,
    settings: Settings,
) -> str:
    """Replace the copied drift reference by the site's own films (the newest results of the
    bundle commissioned, P on the new calibration), when there are at least two windows."""
    import datetime as dt

    import numpy as np

    from screener.model.bundle import read_metadata
    from screener.monitor.drift import window_films
    from screener.monitor.reference import make_reference, write_reference

    window = settings.monitor.window_films
    films = window_films(db, str(read_metadata(source)["uid"]), 50_000)
    if len(films) < 2 * window:
        return (
            f"drift        reference kept from {source} ({len(films)} films scored here, "
            f"{2 * window} needed for a site reference)"
        )
    probs = np.array([f.probability for f in films], dtype=np.float64)
    scores = [f.domain_score for f in films]
    reference = make_reference(
        new,
        c.local.apply(probs) if c.refitted else probs,
        None if any(s is None for s in scores) else np.array(scores, dtype=np.float64),
        [f.facts for f in films],
        {
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "by": "screener commission",
            "films": f"the {len(films)} newest films this site scored with {source.name}",
        },
    )
    write_reference(out, reference)
    return f"drift        reference made of this site's {len(films)} newest films"
