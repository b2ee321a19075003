"""The database extension: one engine per app, one session per app context."""

from __future__ import annotations

import time
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import Engine, Index, MetaData, create_engine, event, inspect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database", "create_tables", "db"]

_EXTENSION = "fedfraud_db"


def _sqlite_pragmas(synchronous: str) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    return on_connect


def create_tables(metadata: MetaData, engine: Engine, *indexes: Index) -> None:
    """``metadata.create_all`` and ``indexes``, safe when another process creates the same tables
    at the same moment (two services of one node started together): the loser of that race sees
    "already exists" and looks again, instead of dying."""
    for attempt in range(3):
        try:
            metadata.create_all(engine)
            for index in indexes:
                index.create(engine, checkfirst=True)
            return
        except DBAPIError as exc:  # OperationalError on SQLite; ProgrammingError, IntegrityError on PostgreSQL
            problem = str(exc.orig).lower()
            if attempt == 2 or not ("already exists" in problem or "duplicate" in problem):
                raise
            time.sleep(0.05 * (attempt + 1))


def make_engine(url: str, *, sqlite_synchronous: str = "FULL") -> Engine:
    """An engine for ``url``; SQLite gets foreign keys, WAL, a busy timeout and, by default, an
    fsync at every commit (``sqlite_synchronous="NORMAL"``: at checkpoints only; a commit can then
    be lost to a power cut, never to a crash of the process, and the file never corrupts)."""
    if sqlite_synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"sqlite_synchronous is FULL or NORMAL, not {sqlite_synchronous!r}")
    # hide_parameters: a failed statement's message (which an error handler logs) must not carry
    # the values bound to it (a transaction's card and amount, a token's digest).
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas(sqlite_synchronous))
        return engine
    if url.startswith(("postgresql://", "postgres://")):
        # psycopg 3 is the driver we ship; SQLAlchemy would otherwise look for psycopg2.
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


class Database:
    """Flask extension holding the engine; ``db.session`` is the current app context's session."""

    def init_app(self, app: Flask) -> None:
        """Create the engine from ``DATABASE_URL`` and close sessions at teardown."""
        engine = make_engine(app.config["DATABASE_URL"])
        app.extensions[_EXTENSION] = {
            "engine": engine,
            "sessionmaker": sessionmaker(bind=engine),
        }
        app.teardown_appcontext(self._close_session)

    @staticmethod
    def engine_for(app: Flask) -> Engine:
        """The engine of ``app``."""
        return app.extensions[_EXTENSION]["engine"]  # type: ignore[no-any-return]

    @property
    def session(self) -> Session:
        """The session of the current app context, created on first use."""
        if "fedfraud_session" not in g:
            g.fedfraud_session = current_app.extensions[_EXTENSION]["sessionmaker"]()
        return g.fedfraud_session  # type: ignore[no-any-return]

    @staticmethod
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("fedfraud_session", None)
        if session is not None:
            session.close()

    @staticmethod
    def is_empty(engine: Engine) -> bool:
        """Whether the database holds none of our tables yet."""
        return not inspect(engine).has_table("alembic_version")


db = Database()
