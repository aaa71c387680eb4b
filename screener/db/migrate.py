"""Alembic migrations, run programmatically (``screener db upgrade``)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, inspect
from sqlalchemy.exc import OperationalError

from screener.db import bins, tallies
from screener.db.engine import Database
from screener.db.models import Base
from screener.errors import DatabaseError
from screener.resources import migrations_dir

#: row_tallies (kept by migration 0016's triggers) and the index of commissioning's bins of P
#: are declared beside the models: schema_differences compares them with the database too.
DECLARED_BESIDE_THE_MODELS = (tallies.RowTally, bins.ASSESSED_BINS)

#: What every refusal of a read-only command ends with.
UPGRADE_HINT = "run `screener db upgrade` (or start `screener serve`) with the same configuration"


def _config(database: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    return cfg


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    cfg = _config(database)
    with reachable(database), database.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


@contextmanager
def reachable(database: Database) -> Iterator[None]:
    """Turns a failed connection into one :class:`DatabaseError` line naming the URL."""
    try:
        yield
    except OperationalError as exc:
        lines = str(exc.orig or exc).strip().splitlines()
        raise DatabaseError(
            f"cannot use the database at {database.safe_url} (database.url): "
            f"{lines[0] if lines else type(exc.orig).__name__}"
        ) from None


def open_database(url: str) -> Database:
    """The database of a read-only command: it must exist and be at this screener's schema
    revision. Nothing is created or migrated (only ``serve``, ``worker`` and ``db upgrade`` do)."""
    database = Database(url, create=False)
    if database.sqlite_path is not None and not database.sqlite_path.is_file():
        raise DatabaseError(
            f"no database at {database.sqlite_path} (database.url = {database.safe_url}): "
            f"check --config / database.url, or {UPGRADE_HINT}"
        )
    with reachable(database):
        current = current_revision(database)
    head = head_revision()
    if current != head:
        found = f"at revision {current}" if current else "without screener's schema"
        raise DatabaseError(
            f"the database {database.safe_url} is {found}, this screener needs {head}: {UPGRADE_HINT}"
        )
    return database


def current_revision(database: Database) -> str | None:
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    script = ScriptDirectory(str(migrations_dir()))
    return script.get_current_head()


def schema_differences(database: Database) -> list[object]:
    """What differs between the database's schema and the models (empty when in step). An
    index declared for one dialect only (``Index(...).ddl_if(dialect=...)``) is compared on
    that dialect only: Alembic's comparison does not read ``ddl_if`` itself. An index on an
    expression, which SQLite cannot reflect, is looked for there by name."""
    dialect = database.engine.dialect.name

    def on_this_dialect(obj: Any, name: Any, type_: str, reflected: bool, other: Any) -> bool:
        only = getattr(obj, "_ddl_if", None)
        if type_ != "index" or only is None or only.dialect is None:
            return True
        return dialect in ([only.dialect] if isinstance(only.dialect, str) else only.dialect)

    with database.engine.connect() as connection, warnings.catch_warnings():
        # SQLite's indexes on an expression cannot be reflected: compared by name below
        warnings.filterwarnings("ignore", message=".*expression-based index")
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "include_object": on_this_dialect}
        )
        found = list(compare_metadata(context, Base.metadata))
    if dialect == "sqlite":
        with database.engine.connect() as connection:
            named = set(
                connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index'")
                .scalars()
                .all()
            )
        found += [
            ("add_index", index)
            for table in Base.metadata.tables.values()
            for index in table.indexes
            if any(not isinstance(e, Column) for e in index.expressions) and index.name not in named
        ]
    return found


def table_names(database: Database) -> list[str]:
    return sorted(inspect(database.engine).get_table_names())
