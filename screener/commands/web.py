"""``screener web``: the radiologists' web worklist alone, against the configured database
(``screener serve`` runs the same app when ``[web] port`` is set).

Uploads are queued into ``storage.spool_dir``, so the spool is checked first as ``serve``
checks it (:func:`screener.ingest.ownership.claim_spool`): a spool holding another database's
files is refused unless adopted (``--adopt-spool``)."""

from __future__ import annotations

import argparse
from typing import Any

from screener.commands import setting_flag
from screener.config import Settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "web", help="serve the web worklist (login, worklist, study pages, reads)"
    )
    setting_flag(p, "--port", "web.port", "HTTP port", type=int)
    setting_flag(p, "--host", "web.host", "address to listen on")
    setting_flag(
        p,
        "--adopt-spool",
        "storage.adopt_spool",
        "queue uploads into a spool used with another database",
        nargs=0,
        const=True,
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from screener.db.migrate import open_database
    from screener.errors import ConfigError
    from screener.ingest.ownership import claimed_spool
    from screener.web.server import serve_forever

    if not settings.web.port:
        raise ConfigError("web.port is 0: give --port or set [web] port")
    db = open_database(settings.database.url)
    try:
        # the check serve makes; the app's own acceptor (made on the first upload) then
        # writes to a spool known to be this database's
        claimed_spool(db, settings)
        serve_forever(settings, db)
    finally:
        db.dispose()
    return 0
