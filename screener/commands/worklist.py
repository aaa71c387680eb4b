"""``screener worklist``: studies to read, flagged for a second read first."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from datetime import datetime, timedelta
from typing import Any

from screener.commands import format_age, render_table, setting_flag
from screener.config import Settings
from screener.views.wording import STATUSES, flag_text, short_uid, status_text

#: CSV: every column in full, for other programs.
COLUMNS = [
    "id",
    "accession",
    "study_date",
    "modality",
    "images",
    "probability",
    "flag",
    "age",
    "status",
    "study_instance_uid",
    "top_sop_instance_uid",
]
#: The terminal table: narrower than 120 characters (the UID shortened unless --wide).
TABLE = ["id", "accession", "date", "mod", "imgs", "prob", "flag", "waited", "status", "study"]


def _since(text: str) -> datetime:
    """An ISO date/time, or a duration back from now such as 24h or 7d."""
    from screener.db import utcnow

    units = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
    if text[-1:] in units and text[:-1].isdigit():
        return utcnow() - int(text[:-1]) * units[text[-1]]
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since expects 2026-11-21, 2026-11-21T08:00, 90m, 24h or 7d; got {text!r}"
        ) from None
    return value if value.tzinfo else value.astimezone()


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability from 0 to 1, got {text!r}")
    return value


def _limit(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 for all, got {text!r}")
    return int(text)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("worklist", help="studies to read, flagged first")
    setting_flag(p, "--db", "database.url", "database URL")
    p.add_argument(
        "--since",
        type=_since,
        help="received since: 2026-11-21, 2026-11-21T08:00 (local time), or 90m, 24h, 7d ago",
    )
    p.add_argument(
        "--status",
        choices=list(STATUSES),
        default="unread",
        help="unread (default): not yet reviewed, or reopened by a new result; reviewed; all",
    )
    p.add_argument(
        "--min-prob",
        type=_probability,
        default=None,
        help="only studies scoring at least this probability (0-1)",
    )
    p.add_argument(
        "--limit", type=_limit, default=50, help="at most this many studies (default 50; 0 = all)"
    )
    p.add_argument("--wide", action="store_true", help="the table shows whole Study Instance UIDs")
    p.add_argument(
        "--format",
        choices=["table", "json", "csv"],
        default="table",
        help="table (default, for a terminal), json or csv (for other programs)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.db.migrate import open_database
    from screener.site.mode import site_mode
    from screener.views.worklist import worklist

    db = open_database(settings.database.url)
    try:
        mode = site_mode(db, settings)
        rows = worklist(
            db,
            aging_hours=settings.worklist.aging_hours,
            since=args.since,
            status=args.status,
            min_prob=args.min_prob,
            limit=args.limit,
        )
    finally:
        db.dispose()
    if not mode.live:  # above the table, on stderr: stdout's CSV and JSON stay clean
        print(mode.line, file=sys.stderr)
    if args.format == "json":
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    elif args.format == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        writer.writerows(
            [
                r.study_id,
                r.accession_number or "",
                r.study_date or "",
                r.modality or "",
                r.images,
                "" if r.assessment == "outside_domain" else f"{r.probability:.4f}",
                flag_text(r),
                f"{r.age_hours:.2f}h",
                status_text(r),
                r.study_instance_uid,
                r.top_sop_instance_uid or "",
            ]
            for r in rows
        )
        print(out.getvalue(), end="")
    elif not rows:
        print("worklist is empty")
    else:
        cells = [
            [
                f"#{r.study_id}",
                (r.accession_number or "")[:16],
                r.study_date or "",
                r.modality or "",
                str(r.images),
                "-" if r.assessment == "outside_domain" else f"{r.probability:.3f}",
                flag_text(r),
                format_age(r.age_hours),
                status_text(r),
                r.study_instance_uid if args.wide else short_uid(r.study_instance_uid),
            ]
            for r in rows
        ]
        print(render_table(TABLE, cells))
    return 0


# the worklist's words live in screener.views.wording (the web shows them too); named here as well
__all__ = ["STATUSES", "flag_text", "register", "run", "short_uid", "status_text"]
