"""``screener serve``: the listener, the folder watcher and a worker loop, until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
from typing import Any

from screener.commands import setting_flag
from screener.config import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run the daemon (listener + watcher + worker)"
    )
    setting_flag(p, "--port", "listener.port", "DICOM port", type=int)
    setting_flag(p, "--ae-title", "listener.ae_title", "our AE title")
    setting_flag(p, "--db", "database.url", "database URL")
    setting_flag(p, "--watch-dir", "watch.dir", "watched folder")
    setting_flag(
        p, "--no-worker", "worker.enabled", "accept only; leave jobs queued", nargs=0, const=False
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.daemon import compose

    return compose(settings).run()
