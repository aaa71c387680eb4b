"""``screener calibrate --from-reviews``: a site operating point from the site's own reads."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from screener.commands import setting_flag
from screener.config import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "calibrate",
        help="fit a site operating point on reviewed reads (writes a new bundle)",
        description="Refit the flag threshold (and, with --refit-calibration, the probability "
        "calibration) on the latest radiologist read of every reviewed study the configured "
        "bundle assessed, for a target sensitivity; refuses with too few studies read as "
        "pneumonia. Writes a copy of the bundle with the new operating point and a new UID "
        "to --out; point model.bundle at it to use it.",
    )
    setting_flag(p, "--db", "database.url", "database URL")
    p.add_argument(
        "--from-reviews", action="store_true", required=True, help="fit on reviewed reads"
    )
    p.add_argument("--model", default=None, help="bundle folder (default: setting model.bundle)")
    p.add_argument("--out", type=Path, required=True, help="new bundle folder to write")
    p.add_argument(
        "--target-sensitivity",
        type=float,
        default=None,
        help="default: the bundle's own target (0.95 for the shipped one)",
    )
    p.add_argument("--refit-calibration", action="store_true", help="also refit Platt scaling")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:

    from screener.db.migrate import open_database
    from screener.model.site import write_site_bundle
    from screener.views.commissioning import bundle_and_target, site_reads

    source, meta, target = bundle_and_target(
        args.model, args.target_sensitivity, settings.model.bundle
    )
    db = open_database(settings.database.url)
    try:
        site = site_reads(db, meta, settings.worklist.aging_hours)
    finally:
        db.dispose()
    # reads weighted by 1 / their chance of being read; unflagged reads not drawn are left out
    reads = site.as_reads()
    used, audited = len(site.weights), sum(site.audited)
    print(
        f"weights      {used} of {used + site.undrawn} reads used: {used - audited} of "
        f"flagged studies (weight 1), {audited} audit reads (weight 1/share); "
        f"{site.undrawn} reads of unflagged studies not drawn left out"
    )
    new = write_site_bundle(source, args.out, reads, target, args.refit_calibration)
    s = new["site_calibration"]
    b, a = s["before"], s["after"]
    print(
        f"reads        {s['reviewed_studies']} reviewed studies, {s['read_as_pneumonia']} read "
        f"as pneumonia, {s['read_as_normal']} as normal"
    )
    print(
        f"before       threshold {s['threshold_before']:.4f}: sensitivity "
        f"{b['sensitivity']:.3f}, specificity {b['specificity']:.3f}"
    )
    print(
        f"after        threshold {s['threshold_after']:.4f}: sensitivity "
        f"{a['sensitivity']:.3f}, specificity {a['specificity']:.3f} (on the same reads)"
    )
    print(f"bundle       {args.out} (UID {new['uid']})")
    print(f'use it       set model.bundle = "{args.out}" and restart screener serve')
    return 0
