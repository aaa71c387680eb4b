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
    setting_flag(
        p,
        "--adopt-spool",
        "storage.adopt_spool",
        "queue the files of a spool used with another database (they are screened and "
        "reported again)",
        nargs=0,
        const=True,
    )
    p.add_argument(
        "--roles",
        type=_roles,
        default=None,
        metavar="ROLE[,ROLE...]",
        help="run only these parts (default: all): listener (C-STORE listener, watched folder, "
        "spool recovery, rescan schedule, retention), worker (worker processes), exporter "
        "(SR deliveries). Hosts sharing one PostgreSQL database and one spool path split the "
        "roles; see README 'Several hosts'",
    )
    p.set_defaults(func=run)


ROLES = ("listener", "worker", "exporter")


def _roles(text: str) -> frozenset[str]:
    roles = frozenset(r.strip() for r in text.split(",") if r.strip())
    unknown = roles - set(ROLES)
    if not roles or unknown:
        raise argparse.ArgumentTypeError(
            f"--roles {text!r}: expected a comma list of {', '.join(ROLES)}"
        )
    return roles


def with_roles(settings: Settings, roles: frozenset[str]) -> Settings:
    """The settings with the parts not in ``roles`` switched off."""
    from dataclasses import replace

    ingest = "listener" in roles
    return replace(
        settings,
        listener=replace(settings.listener, enabled=settings.listener.enabled and ingest),
        watch=replace(settings.watch, enabled=settings.watch.enabled and ingest),
        worker=replace(settings.worker, enabled=settings.worker.enabled and "worker" in roles),
        export=replace(settings.export, enabled=settings.export.enabled and "exporter" in roles),
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.serve.daemon import compose

    if args.roles is not None:
        settings = with_roles(settings, args.roles)
    return compose(settings).run()
