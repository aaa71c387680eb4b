"""Alembic environment for screener.

``screener db upgrade`` passes the engine's connection in ``config.attributes``; the plain
``alembic`` command falls back to ``sqlalchemy.url`` or ``SCREENER_DATABASE_URL``.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from screener.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from screener.db.engine import Database

    url = os.environ.get("SCREENER_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set SCREENER_DATABASE_URL or sqlalchemy.url")
    database = Database(url)
    with database.engine.connect() as conn:
        _run(conn)
        conn.commit()
