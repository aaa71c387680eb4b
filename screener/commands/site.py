"""``screener site status|go-live|shadow|send-shadow``: the silent start and going live.

The rule that decides the mode is :mod:`screener.site.mode`'s; these commands record its events
and show it. A running daemon follows a go-live or a return to shadow at its exporter's next
poll (``export.poll_seconds``) and its workers' next result: no restart.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from screener.commands import setting_flag
from screener.config import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "site", help="silent start (shadow) or live: show it, go live, go back to shadow"
    )
    setting_flag(p, "--db", "database.url", "database URL")
    setting_flag(p, "--model", "model.bundle", "the model bundle folder served")
    actions = p.add_subparsers(
        dest="action",
        required=True,
        metavar="ACTION",
        help="status, go-live, shadow or send-shadow",
    )

    st = actions.add_parser("status", help="shadow or live, for which bundle, and the events")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--limit", type=int, default=10, help="how many site events to list")

    for name, what in (
        ("go-live", "send SRs to PACS from now on, for the bundle now configured"),
        ("shadow", "back to a silent start: send nothing to PACS from now on"),
    ):
        cmd = actions.add_parser(name, help=what)
        cmd.add_argument("--operator", required=True, help="who does it (recorded)")
        cmd.add_argument("--note", help="why, or the decision it follows (recorded)")

    send = actions.add_parser(
        "send-shadow",
        help="send the SRs built in shadow after all (going live never does); they leave once live",
    )
    send.add_argument("--operator", required=True, help="who does it (recorded in the audit)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.db.migrate import open_database
    from screener.site.mode import GO_LIVE, SHADOW, history, record, send_shadow, site_mode

    db = open_database(settings.database.url)
    try:
        if args.action == "send-shadow":
            count = send_shadow(db, args.operator)
            print(f"{count} SR deliveries built in shadow set pending")
            mode = site_mode(db, settings)
            if not mode.live:
                print(f"they leave when the site goes live: {mode.line}")
            return 0
        if args.action in ("go-live", "shadow"):
            event = record(
                db,
                settings,
                GO_LIVE if args.action == "go-live" else SHADOW,
                args.operator,
                args.note,
            )
            mode = site_mode(db, settings, event.bundle_uid)
            print(
                f"recorded {event.event} at {event.at:%Y-%m-%d %H:%M:%S} UTC by {event.operator}: "
                f"{event.bundle_name} {event.bundle_version} ({event.bundle_uid}), "
                f"{event.operating_point}"
            )
            print(f"site: {mode.line}")
            if args.action == "go-live":
                print(
                    "running screener processes send from their next result and export poll "
                    "(no restart); results scored in shadow stay unsent (screener site send-shadow)"
                )
            return 0
        mode = site_mode(db, settings)
        events = history(db, args.limit)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps({**mode.as_dict(), "events": [e.as_dict() for e in events]}, indent=2))
        return 0
    print(f"site: {mode.line}")
    print(
        f"site.mode in the configuration: {mode.configured}; bundle now configured: {mode.bundle_uid}"
    )
    for e in events:
        print(
            f"  {e.at:%Y-%m-%d %H:%M:%S}  {e.event:<7} by {e.operator}: {e.bundle_name} "
            f"{e.bundle_version} ({e.bundle_uid}), {e.operating_point}"
            + (f" -- {e.note}" if e.note else "")
        )
    return 0
