"""``screener status``: queue depth by state, oldest waiting job, reasons and last errors."""

from __future__ import annotations

import argparse
import json
from typing import Any

from screener.commands import setting_flag
from screener.config import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "status", help="queue depth, skips, rejections, errors"
    )
    setting_flag(p, "--db", "database.url", "database URL")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--limit", type=int, default=10, help="how many recent errors to list")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.db.migrate import open_database
    from screener.views.status import build_report, render_text

    db = open_database(settings.database.url)
    try:
        report = build_report(db, args.limit, settings)
    finally:
        db.dispose()
    print(json.dumps(report.as_dict(), indent=2) if args.json else render_text(report))
    return 0
