"""``screener worker``: a worker loop alone, to add capacity on this or another host."""

from __future__ import annotations

import argparse
import contextlib
import signal
from typing import Any

from screener.commands import setting_flag
from screener.config import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "worker", help="run a worker loop only (shares the queue)"
    )
    setting_flag(p, "--db", "database.url", "database URL")
    p.add_argument("--once", action="store_true", help="process one batch and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.db import Database
    from screener.worker import SpoolCheckProcessor, Worker

    db = Database(settings.database.url)
    worker = Worker(db, settings, SpoolCheckProcessor())
    if args.once:
        print(f"processed {worker.run_once()} job(s)")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: worker.stop(timeout=0))
    with contextlib.suppress(KeyboardInterrupt):
        worker.run()
    return 0
