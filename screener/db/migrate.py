"""Alembic migrations, run programmatically (``screener db upgrade``)."""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from screener.db.engine import Database
from screener.db.models import Base
from screener.errors import ConfigError


def migrations_dir() -> Path:
    """The ``migrations/`` folder of the source tree (or ``$SCREENER_MIGRATIONS``)."""
    env = os.environ.get("SCREENER_MIGRATIONS")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "migrations"
    if not (path / "env.py").is_file():
        raise ConfigError(
            f"migrations folder {str(path)!r} not found: install screener from its source tree "
            "(pip install -e .) or set SCREENER_MIGRATIONS"
        )
    return path


def _config(database: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", database.url.replace("%", "%%"))
    return cfg


def upgrade(database: Database, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    cfg = _config(database)
    with database.engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def current_revision(database: Database) -> str | None:
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    script = ScriptDirectory(str(migrations_dir()))
    return script.get_current_head()


def schema_differences(database: Database) -> list[object]:
    """What differs between the database's schema and the models (empty when in step)."""
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def table_names(database: Database) -> list[str]:
    return sorted(inspect(database.engine).get_table_names())
