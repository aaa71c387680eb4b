"""``screener db upgrade|current``: the schema, by Alembic migrations."""

from __future__ import annotations

import argparse
from typing import Any

from screener.commands import setting_flag
from screener.config import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("db", help="database schema (Alembic)")
    setting_flag(p, "--db", "database.url", "database URL")
    p.add_argument(
        "action", choices=["upgrade", "current"], help="upgrade to head, or show the revision"
    )
    p.add_argument("--revision", default="head", help="target revision for upgrade")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.db import Database
    from screener.db.migrate import current_revision, head_revision, upgrade

    db = Database(settings.database.url)
    try:
        if args.action == "upgrade":
            upgrade(db, args.revision)
        print(f"database revision: {current_revision(db)} (head: {head_revision()})")
    finally:
        db.dispose()
    return 0
