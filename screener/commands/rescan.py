"""``screener rescan``: queue what was missed (PACS studies, retryable failures, the folder)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from screener.commands import setting_flag
from screener.config import Settings


def _when(text: str) -> datetime:
    """``2026-11-21`` or ``2026-11-21T18:00`` (local time unless an offset is given)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date or time: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM"
        ) from None


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "rescan",
        help="queue missed PACS studies, retryable failed jobs and files left in the watch folder",
        description=(
            "C-FIND the PACS (rescan.pacs) for rescan.modalities studies in the window and "
            "C-MOVE those not handled here to our listener (screener serve must be running); "
            "re-queue failed jobs that a retry may cure (and, with --rescore, images scored by "
            "another model than model.bundle); take files left in watch.dir."
        ),
    )
    setting_flag(p, "--db", "database.url", "database URL")
    setting_flag(p, "--pacs", "rescan.pacs", "PACS to query, AE_TITLE@HOST:PORT")
    p.add_argument(
        "--since",
        type=_when,
        help="window start, YYYY-MM-DD or YYYY-MM-DDTHH:MM local time "
        "(default: now - rescan.window_hours)",
    )
    p.add_argument(
        "--until", type=_when, help="window end, YYYY-MM-DD or YYYY-MM-DDTHH:MM (default: now)"
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be done; change nothing")
    p.add_argument(
        "--rescore", action="store_true", help="also re-queue images scored by an older model"
    )
    p.add_argument("--no-pacs", action="store_true", help="do not query the PACS")
    p.add_argument(
        "--no-folder", action="store_true", help="leave the watch folder to the running daemon"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.db.migrate import open_database
    from screener.rescan.run import render_text, run_rescan

    open_database(settings.database.url).dispose()  # exists, at this schema: else one line
    summary = run_rescan(
        settings,
        since=args.since,
        until=args.until,
        dry_run=args.dry_run,
        rescore=args.rescore,
        query_pacs=not args.no_pacs,
        scan_folder=not args.no_folder,
        progress=not args.quiet,
    )
    print(json.dumps(summary.as_dict(), indent=2) if args.json else render_text(summary))
    return 0 if summary.ok else 1
