"""Engine set-up for the two supported databases.

SQLite (the embedded default) runs in WAL mode with ``synchronous=FULL`` (a committed
instance survives a power cut) and every transaction opened with ``BEGIN IMMEDIATE``, so
writers queue on the database lock instead of failing half-way. PostgreSQL is used as is;
the queue uses ``FOR UPDATE SKIP LOCKED`` there (see :mod:`screener.work.queue`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from screener.errors import ConfigError


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; all of ours are UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _prepare_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """An engine and its session factory, chosen by one URL."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        """``create=False``: never make a SQLite file's folder (read-only commands)."""
        try:
            parsed = make_url(url)
        except Exception as exc:  # sqlalchemy raises ArgumentError for a malformed URL
            raise ConfigError(
                f"database.url = {url!r} is not a valid database URL: {exc}"
            ) from None
        self.url = url
        self.sqlite_path = (
            Path(parsed.database)
            if parsed.get_backend_name() == "sqlite"
            and parsed.database
            and parsed.database != ":memory:"
            else None
        )
        #: The URL without its password, for logs and messages.
        self.safe_url = parsed.render_as_string(hide_password=True)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            if create and parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        elif self.dialect == "postgresql":
            kwargs["pool_pre_ping"] = True
        else:
            raise ConfigError(
                f"database.url = {url!r} is invalid: supported databases are sqlite and postgresql"
            )
        self.engine: Engine = create_engine(parsed, **kwargs)
        if self.dialect == "sqlite":
            _prepare_sqlite(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def session(self) -> Session:
        return self._sessions()

    def dispose(self) -> None:
        self.engine.dispose()
