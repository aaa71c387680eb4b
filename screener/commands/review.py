"""``screener review STUDY --agree|--disagree``: record the radiologist's read of the flag."""

from __future__ import annotations

import argparse
from typing import Any

from screener.commands import setting_flag
from screener.config import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "review", help="record a radiologist's read of a study"
    )
    setting_flag(p, "--db", "database.url", "database URL")
    p.add_argument("study", help="Study Instance UID or accession number")
    verdict = p.add_mutually_exclusive_group(required=True)
    verdict.add_argument(
        "--agree", action="store_true", help="the model's flag (or its absence) is right"
    )
    verdict.add_argument(
        "--disagree", action="store_true", help="the model's flag (or its absence) is wrong"
    )
    p.add_argument("--note", help="free text (no patient identifiers, please)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.db.migrate import open_database
    from screener.worklist import record_review

    db = open_database(settings.database.url)
    try:
        review = record_review(db, args.study, args.agree, args.note, settings.worklist.aging_hours)
    finally:
        db.dispose()
    read = "pneumonia" if review.radiologist_positive else "no pneumonia"
    print(f"recorded: {review.verdict} with the model (p={review.probability:.3f}); read as {read}")
    return 0
