"""``screener stats``: agreement and the model's sensitivity/specificity against reviewed reads."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from screener.commands import render_table, setting_flag
from screener.config import Settings
from screener.views.wording import weighted_line, with_interval


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "stats", help="model performance against radiologists' reads"
    )
    setting_flag(p, "--db", "database.url", "database URL")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.db.migrate import open_database
    from screener.views.worklist import review_stats

    db = open_database(settings.database.url)
    try:
        stats = review_stats(db)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps([asdict(s) for s in stats], indent=2))
        return 0
    if not stats:
        print("no reviewed studies yet")
        return 0
    headers = [
        "model",
        "version",
        "reviewed",
        "agreement",
        "TP",
        "FP",
        "TN",
        "FN",
        "sensitivity",
        "specificity",
        "PPV",
        "NPV",
    ]
    rows = [
        [
            s.model_name,
            s.model_version,
            str(s.reviewed),
            with_interval(s.agreement, s.intervals.get("agreement")),
            str(s.true_positive),
            str(s.false_positive),
            str(s.true_negative),
            str(s.false_negative),
            with_interval(s.sensitivity, s.intervals.get("sensitivity")),
            with_interval(s.specificity, s.intervals.get("specificity")),
            with_interval(s.ppv, s.intervals.get("ppv")),
            with_interval(s.npv, s.intervals.get("npv")),
        ]
        for s in stats
    ]
    print(render_table(headers, rows))
    print(
        "Reads are the reference: sensitivity = flagged among studies read as pneumonia. "
        "In brackets: 95% Wilson intervals."
    )
    for s in stats:
        if s.caution:
            print(f"{s.model_name} {s.model_version}: {s.caution}")
        print(weighted_line(s))
    _site_calibration(settings)
    return 0


def _site_calibration(settings: Settings) -> None:
    """Before / after of the configured bundle's site calibration, if it has one."""
    from screener.errors import ModelError
    from screener.model.bundle import read_metadata

    try:
        meta = read_metadata(settings.model.bundle)
    except ModelError:
        return
    site = meta.get("site_calibration")
    if not site:
        return
    parent = meta["derived_from"]
    print(
        f"\nsite calibration of {parent['name']} {parent['version']} on "
        f"{site['reviewed_studies']} reads ({site['at']}), now {meta['version']}:"
    )
    table = [
        [
            when,
            f"{site[f'threshold_{when}']:.4f}",
            _pct(site[when]["sensitivity"]),
            _pct(site[when]["specificity"]),
        ]
        for when in ("before", "after")
    ]
    print(render_table(["", "threshold", "sensitivity", "specificity"], table))
