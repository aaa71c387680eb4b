"""Which database a spool belongs to.

A spool folder records the identity of the database it was used with (``.installation``,
the ``installation`` row of migration 0005). Started with another database, e.g. a fresh one
while moving from SQLite to PostgreSQL, ``serve`` would "recover" every spooled file into it,
score them again and send their SRs a second time. So it refuses, in one line, unless
``storage.adopt_spool`` (``serve --adopt-spool``) says that is what is wanted.

``serve`` checks in ``Daemon.start``; a command that writes to the spool without it
(``screener rescan``, ``screener web``) opens it with :func:`claimed_spool`, which makes the
same check first.
"""

from __future__ import annotations

import structlog
from sqlalchemy import func, select

from screener.config import Settings
from screener.db import Database, Installation, Instance
from screener.errors import ConfigError
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool

log = structlog.get_logger(__name__)

MARKER = ".installation"


def database_identity(db: Database) -> str:
    with db.transaction() as session:
        row = session.scalars(select(Installation)).first()
    if row is None:  # only a database someone emptied by hand
        raise ConfigError("the database has no installation row; run `screener db upgrade`")
    return row.id


def claim_spool(db: Database, spool: Spool, *, adopt: bool) -> None:
    """Check that ``spool`` belongs to ``db`` (or adopt it), and record that it does."""
    marker = spool.root / MARKER
    ours = database_identity(db)
    theirs = marker.read_text().strip() if marker.is_file() else None
    if theirs != ours and not adopt:
        files = len(spool.files())
        with db.transaction() as session:
            known = int(session.scalar(select(func.count()).select_from(Instance)) or 0)
        if theirs is not None and files:
            raise ConfigError(
                f"storage.spool_dir = {str(spool.root)!r} belongs to another database "
                f"(installation {theirs}, this database is {ours}): its {files} files would be "
                "screened and their SRs sent again. Use that spool's database, an empty spool "
                "folder, or `--adopt-spool` (storage.adopt_spool) to take the files into this database"
            )
        if theirs is None and files and known == 0:
            raise ConfigError(
                f"storage.spool_dir = {str(spool.root)!r} holds {files} files but this database "
                "has no instances (a new database with an old spool?): they would be screened "
                "and their SRs sent again. Use the spool's database, an empty spool folder, or "
                "`--adopt-spool` (storage.adopt_spool) to take the files into this database"
            )
    if theirs != ours:
        if adopt and theirs is not None:
            log.warning("spool_adopted", previous_installation=theirs, installation=ours)
        marker.write_text(ours + "\n")


def claimed_spool(db: Database, settings: Settings) -> Spool:
    """``storage.spool_dir`` for a command other than ``serve``, once found to belong to
    ``db`` (or adopted, ``storage.adopt_spool``); raises :class:`ConfigError` as ``serve``
    does otherwise."""
    spool = Spool(settings.storage.spool_dir, settings.storage.min_free_mb)
    claim_spool(db, spool, adopt=settings.storage.adopt_spool)
    return spool


def claimed_acceptor(db: Database, settings: Settings) -> Acceptor:
    """An accept path over :func:`claimed_spool` (``screener rescan`` alone). It wakes no
    worker: one that runs elsewhere finds the jobs by polling."""
    return Acceptor(db, claimed_spool(db, settings), settings)
