"""``screener worker``: a worker process alone, to add capacity on this or another host."""

from __future__ import annotations

import argparse
from typing import Any

from screener.commands import setting_flag
from screener.config import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "worker", help="run one worker (model + decode pool) on the shared queue"
    )
    setting_flag(p, "--db", "database.url", "database URL")
    setting_flag(p, "--model", "model.bundle", "model bundle folder")
    p.add_argument("--once", action="store_true", help="process one batch and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.serve.workers import compose_worker, worker_process_main

    if args.once:
        worker = compose_worker(settings)
        print(f"processed {worker.run_once()} job(s)")
        worker.processor.close()
        return 0
    worker_process_main(settings, 0, standalone=True)
    return 0
