"""Alembic migrations produce exactly the models' schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

from screener.db import Base, Database
from screener.db.migrate import (
    current_revision,
    head_revision,
    schema_differences,
    table_names,
    upgrade,
)


def test_migrations_match_models(db_url: str) -> None:
    """After `upgrade head` the database has every model table and no schema difference."""
    db = Database(db_url)
    try:
        upgrade(db)
        assert current_revision(db) == head_revision()
        assert set(Base.metadata.tables) <= set(table_names(db))
        assert schema_differences(db) == []
        upgrade(db)  # idempotent
        assert current_revision(db) == head_revision()
    finally:
        db.dispose()


def test_db_upgrade_command(db_url: str, capsys: object) -> None:
    """`screener db upgrade` creates the schema at the URL it is given."""
    from screener.cli import main

    assert main(["db", "--db", db_url, "upgrade"]) == 0
    db = Database(db_url)
    try:
        assert "jobs" in table_names(db)
        assert current_revision(db) == head_revision()
    finally:
        db.dispose()
