"""``screener exports list|retry``: the deliveries of results and reads over every channel
(C-STORE, STOW-RS, HL7 v2, FHIR), and sending dead ones again."""

from __future__ import annotations

import argparse
import json
from typing import Any

from screener.commands import setting_flag
from screener.config import Settings

#: screener.report.destinations.CHANNELS (not imported at start-up: the CLI stays light)
CHANNELS = ("dimse", "stow", "hl7", "fhir")

STATES = ("pending", "delivered", "dead", "shadow")  # shadow: built in a silent start, never sent


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "exports", help="deliveries to PACS, RIS and EHR: list them, retry dead-lettered ones"
    )
    setting_flag(p, "--db", "database.url", "database URL")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", help="list or retry")

    ls = actions.add_parser("list", help="recent exports, newest first")
    ls.add_argument("--state", choices=STATES, help="only exports in this state")
    ls.add_argument(
        "--destination", help="only exports to this destination (AE_TITLE@HOST:PORT, URL, mllp://)"
    )
    ls.add_argument("--channel", choices=CHANNELS, help="only exports over this channel")
    ls.add_argument("--limit", type=int, default=50, help="how many to list")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    retry = actions.add_parser("retry", help="send dead-lettered exports again")
    retry.add_argument(
        "--destination", help="only exports to this destination (AE_TITLE@HOST:PORT, URL, mllp://)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.db.migrate import open_database
    from screener.report.ledger import list_exports, retry_dead

    db = open_database(settings.database.url)
    try:
        if args.action == "retry":
            count = retry_dead(db, args.destination)
            print(f"{count} dead export(s) set pending again")
            return 0
        rows = list_exports(db, args.state, args.destination, args.limit, args.channel)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
        return 0
    if not rows:
        print("no exports")
        return 0
    for row in rows:
        when = row.delivered_at or row.next_attempt_at
        line = (
            f"{row.id:>6}  {row.state:<9} {row.channel:<5} {row.payload:<10} "
            f"{row.destination:<32} attempts={row.attempts} "
            f"object={row.sr_sop_instance_uid} source={row.source_sop_instance_uid} "
            f"{'delivered' if row.delivered_at else 'next'}={when.isoformat() if when else '-'}"
        )
        if row.receipt:
            line += f"\n        receipt: {row.receipt}"
        print(line + (f"\n        last error: {row.last_error}" if row.last_error else ""))
    return 0
