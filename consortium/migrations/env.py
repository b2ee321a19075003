"""Alembic environment of the aggregator's database (run by consortium.storage.migrate)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from consortium.storage.database import make_engine
from consortium.storage.models import Base

# Any constant works; it only has to be the same for every server process.
_MIGRATION_LOCK_ID = 0x66656466  # "fedf"


def run_migrations_online() -> None:
    """Upgrade through the connection given by the caller, or one made from the URL."""
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as fresh:
            _run(fresh)
    finally:
        engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        # Several server processes may start at once on an empty database: one migrates.
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
        connection.commit()
    try:
        context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        if postgres:
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": _MIGRATION_LOCK_ID})
            connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run `fedfraud consortium init-db`")
run_migrations_online()
