"""``screener review STUDY --pneumonia|--no-pneumonia|--cannot-tell`` (or, in the model's terms,
``--agree|--disagree``): record a radiologist's read of a study."""

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
    for flag, finding, text in (
        ("--pneumonia", "pneumonia", "the film shows pneumonia"),
        ("--no-pneumonia", "no_pneumonia", "the film shows no pneumonia"),
        ("--cannot-tell", "cannot_tell", "the film does not tell (counted in no statistic)"),
    ):
        verdict.add_argument(flag, dest="finding", action="store_const", const=finding, help=text)
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
    from screener.views.worklist import FINDINGS, record_read, record_review

    reader = args.reader or _login()
    db = open_database(settings.database.url)
    try:
        aging = settings.worklist.aging_hours
        recorded = (
            record_read(db, args.study, args.finding, args.note, aging, reader, settings)
            if args.finding
            else record_review(
                db, args.study, args.agree, args.note, aging, reader=reader, settings=settings
            )
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
    read = FINDINGS[review.finding or "cannot_tell"]
    call = "flagged" if review.model_positive else "not flagged"
    agreement = (
        "no agreement counted" if review.verdict == "indeterminate" else f"{review.verdict}s"
    )
    print(
        f"recorded for study #{recorded.short_id}: read as {read} by "
        f"{review.reader or 'unknown'}; the model {call} it (p={review.probability:.3f}): "
        f"{agreement}"
    )
    return 0


def _login() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return None
