"""``screener review STUDY --agree|--disagree``: record the radiologist's read of the flag."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from screener.commands import setting_flag
from screener.config import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "review", help="record a radiologist's read of a study"
    )
    setting_flag(p, "--db", "database.url", "database URL")
    p.add_argument(
        "study",
        help="the study: #N (short id from the worklist), accession number, Study Instance UID "
        "or a unique start or end of it",
    )
    verdict = p.add_mutually_exclusive_group(required=True)
    verdict.add_argument(
        "--agree", action="store_true", help="the model's flag (or its absence) is right"
    )
    verdict.add_argument(
        "--disagree", action="store_true", help="the model's flag (or its absence) is wrong"
    )
    p.add_argument("--note", help="free text (no patient identifiers, please)")
    p.add_argument(
        "--reader", default=None, help="who reads (default: your login name); kept with the read"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.db.migrate import open_database
    from screener.worklist import record_review

    reader = args.reader or _login()
    db = open_database(settings.database.url)
    try:
        recorded = record_review(
            db, args.study, args.agree, args.note, settings.worklist.aging_hours, reader=reader
        )
    finally:
        db.dispose()
    review, earlier = recorded.review, recorded.earlier
    if earlier is not None:
        print(
            f"screener review: note: study #{recorded.short_id} was already read for this result "
            f"by {earlier.reader or 'someone'} at {earlier.created_at:%Y-%m-%d %H:%M} "
            f"({earlier.verdict}); this read is kept too, and the latest one counts",
            file=sys.stderr,
        )
    read = "pneumonia" if review.radiologist_positive else "no pneumonia"
    print(
        f"recorded for study #{recorded.short_id}: {review.verdict} with the model "
        f"(p={review.probability:.3f}); read as {read} by {review.reader or 'unknown'}"
    )
    return 0


def _login() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return None
