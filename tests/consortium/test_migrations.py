"""Migrations: the tables they build are the tables the code maps, and an existing consortium's
key, shares and runs survive the upgrade that introduced rosters and key generations."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from consortium.storage.migrate import upgrade
from consortium.storage.models import Base


def test_migrations_build_exactly_the_mapped_schema(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": False})
            differences = [d for d in compare_metadata(context, Base.metadata) if "alembic_version" not in str(d)]
        assert differences == []
    finally:
        engine.dispose()


def test_an_existing_ceremony_survives_the_roster_upgrade(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        upgrade(engine, "0002_round_notes")
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO banks (bank_id, name, enrolled_at) VALUES ('bank-1', 'One', '2026-01-01'), "
                "('bank-2', 'Two', '2026-01-01')"
            ))
            connection.execute(text(
                "INSERT INTO key_material (id, context_digest, context_size, scheme, key_id, publisher_bank_id, "
                "signature, published_at) VALUES (1, 'c', 1, 'ckks', 'key-one', 'bank-1', 's', '2026-01-01')"
            ))
            connection.execute(text(
                "INSERT INTO key_shares (bank_id, share_digest, share_size, posted_by, posted_at) "
                "VALUES ('bank-2', 'd', 100, 'bank-1', '2026-01-01')"
            ))
            connection.execute(text(
                "INSERT INTO runs (run_id, model, params, min_banks, round_timeout_s, participants, state, "
                "created_at) VALUES ('run-1', 'xgboost', '{}', 3, 60, '[]', 'open', '2026-01-01')"
            ))
        upgrade(engine)
        with engine.connect() as connection:
            shares = connection.execute(text("SELECT key_id, bank_id, share_digest FROM sealed_shares")).all()
            assert [tuple(row) for row in shares] == [("key-one", "bank-2", "d")]
            assert connection.execute(text("SELECT key_id FROM runs")).scalar_one() == "key-one"
            assert connection.execute(text("SELECT roster_version FROM key_material")).scalar_one() == 0
    finally:
        engine.dispose()
