"""``screener purge``: apply spool and audit retention now (``serve`` does it every
``storage.purge_interval_minutes``); ``--dry-run`` shows what would go."""

from __future__ import annotations

import argparse
import json
from typing import Any

from screener.commands import setting_flag
from screener.config import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "purge",
        help="delete settled spooled images past storage.retention_days / max_spool_mb, "
        "and audit rows past storage.audit_retention_days",
        description="Delete spooled images whose jobs ended and whose SRs were all delivered, "
        "once older than storage.retention_days or while the spool exceeds "
        "storage.max_spool_mb. Results and reviews stay. Delete audit_events rows older than "
        "storage.audit_retention_days, keeping their counts per day, event and reason.",
    )
    setting_flag(p, "--db", "database.url", "database URL")
    p.add_argument(
        "--dry-run", action="store_true", help="say what would be deleted; delete nothing"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.db.migrate import open_database
    from screener.work.retention import prune_audit, purge

    db = open_database(settings.database.url)
    try:
        summary = purge(db, settings, dry_run=args.dry_run)
        audit = prune_audit(db, settings, dry_run=args.dry_run)
    finally:
        db.dispose()
    if args.json:
        print(json.dumps(summary.as_dict() | {"audit": audit.as_dict()}, indent=2))
        return 0
    verb = "would delete" if summary.dry_run else "deleted"
    mb = summary.bytes / 1024 / 1024
    print(
        f"{verb} {summary.instances} spooled images ({mb:.1f} MB; {summary.by_age} past "
        f"{settings.storage.retention_days:g} days, {summary.by_size} over the "
        f"{settings.storage.max_spool_mb} MB cap); {summary.kept_busy} not yet settled "
        f"(queued, processing or SR undelivered); spool held "
        f"{summary.spool_bytes_before / 1024 / 1024:.1f} MB"
    )
    days = settings.storage.audit_retention_days
    if audit.cutoff is None:
        print("audit rows: kept for ever (storage.audit_retention_days = 0)")
    else:
        print(
            f"{verb} {audit.events} audit rows older than {days:g} days "
            "(their counts per day, event and reason kept)"
        )
    return 0
