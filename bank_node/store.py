"""The bank node's transaction store: each day's transactions, and fraud labels that come later.

Embedded SQLite by default (a file in the node's state directory, nothing to run), any SQLAlchemy
URL where a bank runs a database server (PostgreSQL is tested). Why a relational store rather than
Parquet files: the node needs weeks of rows for training (a range scan on the timestamp index),
every row the scoring service records durable and visible to every scoring worker at once, and
ingests that are all-or-nothing; SQLite gives all three from one file. Per-card and per-terminal
lookups within milliseconds are served from memory (:mod:`bank_node.recent`), not from indexes:
two indexes on random keys made every scoring write five times dearer (a 1,000-row batch took
47 ms to record with them, 9 ms without).

- **Idempotent**: a file already ingested (same SHA-256) adds nothing; a transaction id already
  stored is kept as it was (its label is changed only by :meth:`record_labels`).
- **All or nothing**: a file is validated completely before anything is written, and written in
  one database transaction; a bad file changes nothing.
- **Labels later**: confirmed fraud (1) or genuine (0) outcomes update stored transactions; labels
  for unknown transactions refuse the whole file unless told to skip them.
- **Retention**: rows older than ``retention_days`` before the newest transaction are deleted.
- **Versioned writes**: every writing transaction takes the next store version (one counter row,
  updated first, so writers queue on it and versions commit in order) and stamps the rows it adds
  or relabels with it. A reader that keeps recent rows in memory (each scoring-service worker)
  asks for the rows of versions above the last it saw, and misses no write of another process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
import pandas as pd
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    bindparam,
    delete,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError

from consortium.storage.database import create_tables, make_engine
from bank_node.features import timestamps_ns
from schemas.errors import FedfraudInputError
from schemas.transaction import LABEL_FIELD, REQUIRED_FIELDS

__all__ = ["DEFAULT_RETENTION_DAYS", "IngestResult", "LabelResult", "TransactionStore", "file_sha256"]

log = logging.getLogger(__name__)

DEFAULT_RETENTION_DAYS: Final = 400
_CHUNK: Final = 5000

_metadata = MetaData()
transactions = Table(
    "transactions", _metadata,
    Column("transaction_id", BigInteger, primary_key=True, autoincrement=False),
    Column("timestamp", DateTime, nullable=False),
    Column("customer_id", BigInteger, nullable=False),
    Column("terminal_id", BigInteger, nullable=False),
    Column("amount", Float, nullable=False),
    Column("label", SmallInteger, nullable=True),
    Column("labelled_at", DateTime, nullable=True),
    # The store version that added the row or last changed its label (0: before versions existed).
    Column("seq", BigInteger, nullable=False, server_default="0"),
    Index("ix_transactions_timestamp", "timestamp"),
    Index("ix_transactions_seq", "seq"),
)
store_version = Table(
    "store_version", _metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
)
ingested_files = Table(
    "ingested_files", _metadata,
    Column("sha256", String(64), primary_key=True),
    Column("name", String(500), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("added", Integer, nullable=False),
    Column("ingested_at", DateTime, nullable=False),
)


_NAMES: Final = [*REQUIRED_FIELDS, LABEL_FIELD]
_COLUMNS: Final = [transactions.c[name] for name in _NAMES]
_BETWEEN: Final = (select(*_COLUMNS).where(transactions.c.timestamp >= bindparam("start"),
                                           transactions.c.timestamp < bindparam("end"))
                   .order_by(transactions.c.timestamp, transactions.c.transaction_id))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (what makes a re-ingested file recognisable)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class IngestResult:
    """What one ingest did."""

    rows: int
    added: int
    already_stored: int
    file_seen_before: bool
    deleted_by_retention: int = 0


@dataclass(frozen=True)
class LabelResult:
    """What one labels file did."""

    rows: int
    updated: int
    unchanged: int
    unknown: int
    file_seen_before: bool = False  # the same file was recorded before: nothing read or changed


class TransactionStore:
    """The node's transactions in a database.

    Parameters
    ----------
    url
        SQLAlchemy URL (``sqlite:////path/transactions.db``, ``postgresql://...``).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        database = make_url(url).database if url.startswith("sqlite") else None
        self._lock_path = f"{database}-writers.lock" if database and database != ":memory:" else None
        self._thread_lock = threading.Lock()
        # SQLite: WAL (readers never block the writer) and a busy timeout. Commits are not
        # fsynced one by one (synchronous=NORMAL; the log is, at each checkpoint): a power cut
        # can lose the last scored transactions, never corrupt the file, and the day's file that
        # staff ingest each night brings any lost one back (a stored id is kept as it was).
        self.engine: Engine = make_engine(url, sqlite_synchronous="NORMAL")
        create_tables(_metadata, self.engine)
        with self.engine.begin() as connection:
            if "seq" not in {c["name"] for c in inspect(connection).get_columns("transactions")}:
                # A store made before versioned writes: its rows are version 0.
                connection.execute(text("ALTER TABLE transactions ADD COLUMN seq BIGINT NOT NULL DEFAULT 0"))
                connection.execute(text("CREATE INDEX ix_transactions_seq ON transactions (seq)"))
            for dropped in ("ix_transactions_customer", "ix_transactions_terminal"):  # see the module's notes
                connection.execute(text(f"DROP INDEX IF EXISTS {dropped}"))
            connection.execute(self._insert(store_version).values(id=1, version=0).on_conflict_do_nothing())
        self._changes_query = (select(*_COLUMNS, transactions.c.seq).where(transactions.c.seq > bindparam("since"))
                               .order_by(transactions.c.seq).limit(bindparam("limit")))
        self._driver = _DriverStatements(self.engine, self._changes_query) if self._lock_path else None

    def checkpoint_in_background(self, every_s: float = 1.0) -> None:
        """SQLite: copy the write-ahead log into the database file from a background thread, not in
        the commit that crosses the log's size limit (that commit waited for the copy and its
        fsync, and so did the requests behind it: the scoring service's slowest answers).
        Nothing to do for other databases."""
        if self._lock_path is None:
            return

        def no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA wal_autocheckpoint=0")

        event.listen(self.engine, "connect", no_autocheckpoint)
        self.engine.dispose()  # connections opened from now on take the setting

        def loop() -> None:
            while True:
                time.sleep(every_s)
                try:
                    with self.engine.connect() as connection:
                        connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
                except Exception:  # the next round tries again; scoring goes on meanwhile
                    log.exception("checkpointing the store's write-ahead log failed")

        threading.Thread(target=loop, name="store-checkpoint", daemon=True).start()

    def __repr__(self) -> str:
        return f"<TransactionStore {self.engine.url.render_as_string(hide_password=True)}>"

    def close(self) -> None:
        """Release the connections."""
        self.engine.dispose()

    @classmethod
    def in_state_dir(cls, state_dir: str | Path) -> TransactionStore:
        """The embedded default: ``transactions.db`` in the node's state directory."""
        root = Path(state_dir)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(f"sqlite:///{root / 'transactions.db'}")

    # ---------------------------------------------------------------------------- writes

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A writing transaction. On SQLite, writers first queue on a file lock: SQLite's own busy
        wait polls in sleeps of milliseconds, and two scoring workers recording at once made each
        other wait 30 ms at the median (a lock held by the kernel wakes the next writer at once)."""
        with self._writer_turn(), self.engine.begin() as connection:
            yield connection

    @contextlib.contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """On SQLite, this process's turn among the store's writers (a thread lock, then the file
        lock); nothing to wait for on other databases."""
        if self._lock_path is None:
            yield
            return
        with self._thread_lock, open(self._lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _insert(self, table: Table) -> Any:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table)

    @staticmethod
    def _next_version(connection: Any) -> int:
        """Take the next store version: the first statement of every writing transaction, so the
        transaction holds the write lock (SQLite) or the counter row (PostgreSQL) until it commits,
        and versions become visible in the order they were taken."""
        return int(connection.execute(
            update(store_version).where(store_version.c.id == 1)
            .values(version=store_version.c.version + 1).returning(store_version.c.version)).scalar_one())

    def ingest(self, frame: pd.DataFrame, *, name: str, sha256: str,
               retention_days: int | None = DEFAULT_RETENTION_DAYS) -> IngestResult:
        """Store a validated canonical transaction frame (labels too, if it has them).

        Parameters
        ----------
        frame
            Canonical columns (``schemas.transaction``), validated.
        name, sha256
            The file it came from (a file seen before adds nothing).
        retention_days
            Then delete rows older than this many days before the newest one (None: keep all).
        """
        rows = len(frame)
        with self._writing() as connection:
            version = self._next_version(connection)
            seen = connection.execute(
                select(ingested_files.c.sha256).where(ingested_files.c.sha256 == sha256)
            ).first()
            if seen is not None:
                return IngestResult(rows=rows, added=0, already_stored=rows, file_seen_before=True)
            before = connection.execute(select(func.count()).select_from(transactions)).scalar_one()
            records = _records(frame, version)
            statement = self._insert(transactions).on_conflict_do_nothing(index_elements=["transaction_id"])
            for start in range(0, len(records), _CHUNK):
                connection.execute(statement, records[start : start + _CHUNK])
            after = connection.execute(select(func.count()).select_from(transactions)).scalar_one()
            added = int(after - before)
            connection.execute(ingested_files.insert().values(
                sha256=sha256, name=name[-500:], kind="transactions", rows=rows, added=added, ingested_at=_now()))
            deleted = self._apply_retention(connection, retention_days) if retention_days else 0
        log.info("ingested %s: rows=%d added=%d already_stored=%d deleted_by_retention=%d",
                 name, rows, added, rows - added, deleted)
        return IngestResult(rows=rows, added=added, already_stored=rows - added, file_seen_before=False,
                            deleted_by_retention=deleted)

    def record_labels(self, labels: pd.DataFrame, *, name: str, sha256: str | None,
                      skip_unknown: bool = False) -> LabelResult:
        """Record confirmed outcomes: columns ``transaction_id`` and ``label`` (0 genuine, 1 fraud).

        A file's ``sha256`` is remembered and the same file given again changes nothing; ``None``
        (labels posted to the scoring service) sets the labels each time.

        Raises
        ------
        FedfraudInputError
            Transactions this store does not hold (unless ``skip_unknown``); nothing is written.
        """
        ids = labels["transaction_id"].to_numpy(dtype=np.int64)
        values = labels[LABEL_FIELD].to_numpy(dtype=np.int64)
        with self._writing() as connection:
            version = self._next_version(connection)
            if sha256 is not None and connection.execute(
                    select(ingested_files.c.sha256).where(ingested_files.c.sha256 == sha256)).first():
                return LabelResult(rows=len(ids), updated=0, unchanged=0, unknown=0, file_seen_before=True)
            known: dict[int, int | None] = {}
            for start in range(0, len(ids), _CHUNK):
                chunk = [int(i) for i in ids[start : start + _CHUNK]]
                for tx_id, label in connection.execute(
                    select(transactions.c.transaction_id, transactions.c.label)
                    .where(transactions.c.transaction_id.in_(chunk))
                ):
                    known[int(tx_id)] = label
            unknown = [int(i) for i in ids if int(i) not in known]
            if unknown and not skip_unknown:
                shown = ", ".join(str(i) for i in unknown[:5])
                raise FedfraudInputError(
                    f"{name}: {len(unknown)} labels are for transactions this node does not hold (e.g. {shown}); "
                    "nothing was recorded (ingest their transactions first, or pass --skip-unknown)",
                    {"transaction_id": [f"{len(unknown)} unknown"]},
                )
            changes = [{"tx": int(i), "label": int(v)} for i, v in zip(ids, values, strict=True)
                       if int(i) in known and known[int(i)] != int(v)]
            moment = _now()
            statement = (update(transactions).where(transactions.c.transaction_id == bindparam("tx"))
                         .values(label=bindparam("label"), labelled_at=moment, seq=version))
            for start in range(0, len(changes), _CHUNK):
                connection.execute(statement, changes[start : start + _CHUNK])
            if sha256 is not None:
                connection.execute(ingested_files.insert().values(
                    sha256=sha256, name=name[-500:], kind="labels", rows=len(ids), added=len(changes),
                    ingested_at=moment))
        result = LabelResult(rows=len(ids), updated=len(changes), unchanged=len(ids) - len(changes) - len(unknown),
                             unknown=len(unknown))
        log.info("labels from %s: rows=%d updated=%d unchanged=%d unknown=%d", name, result.rows, result.updated,
                 result.unchanged, result.unknown)
        return result

    def _apply_retention(self, connection: Any, retention_days: int) -> int:
        newest = connection.execute(select(func.max(transactions.c.timestamp))).scalar()
        if newest is None:
            return 0
        cutoff = newest - timedelta(days=retention_days)
        return int(connection.execute(delete(transactions).where(transactions.c.timestamp < cutoff)).rowcount)

    # ----------------------------------------------------------------------------- reads

    def between(self, start: datetime, end: datetime) -> pd.DataFrame:
        """Canonical transactions with ``start <= timestamp < end`` (label NaN where unknown)."""
        if self._driver is not None:  # an agent's training, validation and pooling reads
            return self._driver.between(start, end)
        with self.engine.connect() as connection:
            rows = [tuple(row) for row in connection.execute(_BETWEEN, {"start": start, "end": end})]
        return _typed(pd.DataFrame.from_records(rows, columns=_NAMES))

    def record(self, frame: pd.DataFrame) -> int:
        """Store transactions scored one by one (the scoring service), without labels; returns the
        store version that recorded them.

        Raises
        ------
        FedfraudInputError
            A transaction id the store holds already; nothing is written.
        """
        stamps = timestamps_ns(pd.to_datetime(frame["timestamp"]))
        return self.record_rows(list(zip(
            frame["transaction_id"].to_numpy(dtype=np.int64).tolist(), stamps.tolist(),
            frame["customer_id"].to_numpy(dtype=np.int64).tolist(), frame["terminal_id"].to_numpy(dtype=np.int64).tolist(),
            frame["amount"].to_numpy(dtype=np.float64).tolist(), strict=True)))

    def record_rows(self, rows: Sequence[tuple[int, int, int, int, float]]) -> int:
        """:meth:`record` for rows ``(transaction_id, timestamp in ns, customer_id, terminal_id,
        amount)``: the scoring service's path, without a DataFrame."""
        try:
            if self._driver is not None:
                return self._record_rows_sqlite(rows)
            with self._writing() as connection:
                version = self._next_version(connection)
                connection.execute(transactions.insert(), [
                    {"transaction_id": tx, "timestamp": _datetime(ns), "customer_id": card, "terminal_id": terminal,
                     "amount": amount, "label": None, "labelled_at": None, "seq": version}
                    for tx, ns, card, terminal, amount in rows])
        except (IntegrityError, sqlite3.IntegrityError):  # an id held already (the primary key): nothing written
            with self.engine.connect() as connection:
                seen = sorted(int(i) for (i,) in connection.execute(select(transactions.c.transaction_id).where(
                    transactions.c.transaction_id.in_([row[0] for row in rows]))))
            shown = ", ".join(str(i) for i in seen[:5])
            raise FedfraudInputError(f"{len(seen)} transaction id(s) were seen before: {shown}",
                                     {"transaction_id": [f"seen before: {shown}"]}) from None
        return version

    def _record_rows_sqlite(self, rows: Sequence[tuple[int, int, int, int, float]]) -> int:
        """:meth:`record_rows` on SQLite through the driver: the same statements (compiled once
        from the tables), without SQLAlchemy's execution layer, which cost 0.6 ms of the 0.9 ms a
        one-row write took (a tenth of a scored transaction's time)."""
        driver = self._driver
        assert driver is not None
        stamps = driver.bind_timestamps([row[1] for row in rows])
        with self._writer_turn(), driver.connection() as connection:
            version = int(connection.execute(driver.next_version).fetchone()[0])
            connection.executemany(driver.insert, [
                (tx, stamp, card, terminal, amount, None, None, version)
                for (tx, _, card, terminal, amount), stamp in zip(rows, stamps, strict=True)])
        return version

    def changes(self, since: int, *, limit: int) -> tuple[list[Any], int]:
        """The rows added or relabelled after store version ``since`` (at most ``limit``, oldest
        versions first; each ``(transaction_id, timestamp in ns, customer_id, terminal_id,
        amount, label)``), and the newest version among them (``since`` when there are none)."""
        rows: Sequence[Any]
        if self._driver is not None:  # asked before every scoring request: the driver's path
            rows = self._driver.changes(since, limit)
        else:
            with self.engine.connect() as connection:
                rows = connection.execute(self._changes_query, {"since": since, "limit": limit}).all()
        changed = ([row[:6] for row in rows] if self._driver is not None
                   else [(row[0], _ns(row[1]), *row[2:6]) for row in rows])
        return changed, max((int(row[-1]) for row in rows), default=since)

    def recent(self, since: datetime) -> tuple[pd.DataFrame, int]:
        """The rows timed from ``since`` on, and a store version they include every write of
        (rows of later versions may be among them too)."""
        if self._driver is not None:  # a scoring worker's start, and its reload after a large ingest
            return self._driver.recent(since)
        with self.engine.connect() as connection:
            version = int(connection.execute(select(store_version.c.version)).scalar_one())
            rows = connection.execute(select(*_COLUMNS).where(transactions.c.timestamp >= since)).all()
        return _typed(pd.DataFrame(rows, columns=_NAMES)), version

    def related(self, customer_ids: Iterable[int], customers_since: datetime, terminal_ids: Iterable[int],
                terminals_since: datetime, until: datetime) -> pd.DataFrame:
        """The stored transactions that the windows of new transactions reach: those of their cards
        from ``customers_since`` and of their terminals from ``terminals_since``, before ``until``."""
        customers = sorted({int(c) for c in customer_ids})
        terminals = sorted({int(t) for t in terminal_ids})
        by_card = select(*_COLUMNS).where(transactions.c.customer_id.in_(customers),
                                         transactions.c.timestamp >= customers_since, transactions.c.timestamp < until)
        by_terminal = select(*_COLUMNS).where(transactions.c.terminal_id.in_(terminals),
                                             transactions.c.timestamp >= terminals_since,
                                             transactions.c.timestamp < until)
        with self.engine.connect() as connection:
            rows = connection.execute(by_card.union(by_terminal)).all()
        return _typed(pd.DataFrame(rows, columns=_NAMES))

    def newest_timestamp(self) -> datetime | None:
        """The latest transaction's timestamp (None for an empty store)."""
        with self.engine.connect() as connection:
            newest: datetime | None = connection.execute(select(func.max(transactions.c.timestamp))).scalar()
        return newest

    def version(self) -> tuple[int, Any]:
        """Changes whenever a transactions or labels file is recorded (for readers that cache)."""
        with self.engine.connect() as connection:
            count, latest = connection.execute(
                select(func.count(), func.max(ingested_files.c.ingested_at))).one()
        return int(count), latest

    def summary(self) -> dict[str, Any]:
        """Row count, labelled rows, first and last timestamps, files ingested."""
        with self.engine.connect() as connection:
            count, labelled, first, last = connection.execute(
                select(func.count(), func.count(transactions.c.label), func.min(transactions.c.timestamp),
                       func.max(transactions.c.timestamp))
            ).one()
            files = connection.execute(select(func.count()).select_from(ingested_files)).scalar_one()
        return {"transactions": int(count), "labelled": int(labelled), "first": first, "last": last, "files": int(files)}


class _DriverStatements:
    """The scoring path's statements on SQLite, compiled once from the tables and run on the
    driver's connection (from the engine's pool, so its pragmas apply).

    The insert takes every column of ``transactions`` in table order; timestamps are bound and
    read back by the column type's own processors, so rows read the same whichever path wrote
    them.
    """

    def __init__(self, engine: Engine, changes_query: Any) -> None:
        self.engine = engine
        dialect = engine.dialect
        insert = transactions.insert().compile(dialect=dialect)
        assert insert.positiontup == [c.name for c in transactions.columns]
        self.insert = str(insert)
        self.next_version = str(update(store_version).where(store_version.c.id == 1)
                                .values(version=store_version.c.version + 1).returning(store_version.c.version)
                                .compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        changes = changes_query.compile(dialect=dialect)
        self._changes, self._changes_compiled = str(changes), changes
        self._version = str(select(store_version.c.version).compile(dialect=dialect))
        recent = select(*_COLUMNS).where(transactions.c.timestamp >= bindparam("since")).compile(dialect=dialect)
        assert recent.positiontup == ["since"]
        self._recent = str(recent)
        between = _BETWEEN.compile(dialect=dialect)
        assert between.positiontup == ["start", "end"]
        self._between = str(between)
        stamp_type = transactions.c.timestamp.type.dialect_impl(dialect)
        bind, read = stamp_type.bind_processor(dialect), stamp_type.result_processor(dialect, None)
        assert bind is not None and read is not None  # SQLite keeps datetimes as text
        self.bind_timestamp: Callable[[datetime], Any] = bind
        self._read_timestamp: Callable[[Any], Any] = read
        # numpy writes the same text for many timestamps at once (the column's processor cost
        # 8 ms a thousand); used only if it agrees with the processor here, on awkward values.
        probes = [0, 1_000, 951_782_400_000_000_000, 1_533_081_631_123_456_789, 4_102_444_799_999_999_000]
        texts = [bind(_datetime(ns)) for ns in probes]
        self._numpy_text = all(isinstance(text, str) for text in texts) and self._numpy_timestamps(probes) == texts and (
            np.asarray(texts, dtype="datetime64[us]").astype(np.int64).tolist()
            == [_ns(cast(datetime, read(text))) // 1000 for text in texts])

    def bind_timestamps(self, ns: Sequence[int]) -> list[Any]:
        """Timestamps (ns since 1970) as the column's bind processor writes them (to the microsecond)."""
        if self._numpy_text:
            return self._numpy_timestamps(ns)
        return [self.bind_timestamp(_datetime(v)) for v in ns]

    @staticmethod
    def _numpy_timestamps(ns: Sequence[int]) -> list[str]:
        micros = np.asarray(ns, dtype=np.int64) // 1000  # as _datetime: floored to the microsecond
        text = np.datetime_as_string(micros.astype("datetime64[us]"), unit="us").tolist()
        return [t.replace("T", " ") for t in text]

    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """A driver connection in a writing transaction (BEGIN IMMEDIATE: the write lock at once),
        committed at the end, rolled back on error."""
        pooled = self.engine.raw_connection()
        try:
            cursor = pooled.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                pooled.rollback()
                raise
            pooled.commit()
        finally:
            pooled.close()

    def changes(self, since: int, limit: int) -> list[tuple[Any, ...]]:
        """:meth:`TransactionStore.changes`' rows, timestamps as nanoseconds since 1970."""
        compiled = self._changes_compiled
        params = compiled.construct_params({"since": since, "limit": limit})
        with self._reading() as cursor:
            rows = cursor.execute(self._changes, [params[name] for name in compiled.positiontup]).fetchall()
        stamps = (self.read_micros([row[1] for row in rows]) * 1000).tolist()
        return [(row[0], stamp, *row[2:]) for row, stamp in zip(rows, stamps, strict=True)]

    def recent(self, since: datetime) -> tuple[pd.DataFrame, int]:
        """:meth:`TransactionStore.recent` through the driver, timestamps read by numpy all at
        once (through SQLAlchemy, 446,000 rows took 9 s: a scoring worker's start, and the pause
        of the request that follows a large ingest)."""
        with self._reading() as cursor:
            # The version first: every write it counts is committed, so the rows read after it
            # hold them all (and perhaps later ones, which the reader's applying tolerates).
            version = int(cursor.execute(self._version).fetchone()[0])
            rows = cursor.execute(self._recent, (self.bind_timestamp(since),)).fetchall()
        return self._frame(rows), version

    def between(self, start: datetime, end: datetime) -> pd.DataFrame:
        """:meth:`TransactionStore.between` through the driver, timestamps read by numpy all at
        once (through SQLAlchemy's rows and its processor, a week of a bank's 80,000 rows took
        most of a second of an agent's start; five agents share two cores)."""
        with self._reading() as cursor:
            rows = cursor.execute(self._between, (self.bind_timestamp(start), self.bind_timestamp(end))).fetchall()
        return self._frame(rows)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Any]:
        """A driver cursor for reads; the read transaction the driver may begin is ended after."""
        pooled = self.engine.raw_connection()
        try:
            yield pooled.cursor()
            pooled.rollback()
        finally:
            pooled.close()

    def _frame(self, rows: Sequence[Any]) -> pd.DataFrame:
        """Rows of :data:`_COLUMNS` as the canonical frame, the stored timestamps read all at once."""
        frame = pd.DataFrame.from_records(rows, columns=_NAMES)
        frame["timestamp"] = self.read_micros(frame["timestamp"].tolist()).view("datetime64[us]")
        return _typed(frame)

    def read_micros(self, stored: Sequence[Any]) -> npt.NDArray[np.int64]:
        """Microseconds since 1970 of stored timestamps (what the store keeps), as the column's
        result processor reads them (numpy parses many at once, where it agrees with the
        processor: 3 ms a thousand the other way)."""
        if self._numpy_text:
            try:
                return np.asarray(stored, dtype="datetime64[us]").astype(np.int64)
            except ValueError:  # not a form numpy reads: the processor's way
                pass
        read = self._read_timestamp
        return np.asarray([_ns(read(value)) // 1000 for value in stored], dtype=np.int64)


def _datetime(ns: int) -> datetime:
    """A naive datetime from nanoseconds since 1970 (to the microsecond, what the store keeps)."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _ns(stamp: datetime) -> int:
    """Nanoseconds since 1970 of a naive datetime (what :func:`_datetime` stored)."""
    return (stamp - _EPOCH) // _MICROSECOND * 1000


_EPOCH: Final = datetime(1970, 1, 1)
_MICROSECOND: Final = timedelta(microseconds=1)


def _now() -> datetime:
    return datetime.now().replace(microsecond=0)


def _records(frame: pd.DataFrame, version: int) -> list[dict[str, Any]]:
    has_label = LABEL_FIELD in frame.columns
    stamps = pd.to_datetime(frame["timestamp"]).dt.tz_localize(None) if getattr(
        frame["timestamp"].dtype, "tz", None) else pd.to_datetime(frame["timestamp"])
    records = []
    for tx, ts, customer, terminal, amount, label in zip(
        frame["transaction_id"].to_numpy(dtype=np.int64), stamps.dt.to_pydatetime(),
        frame["customer_id"].to_numpy(dtype=np.int64), frame["terminal_id"].to_numpy(dtype=np.int64),
        frame["amount"].to_numpy(dtype=np.float64),
        frame[LABEL_FIELD].to_numpy() if has_label else [None] * len(frame), strict=True,
    ):
        records.append({"transaction_id": int(tx), "timestamp": ts, "customer_id": int(customer),
                        "terminal_id": int(terminal), "amount": float(amount),
                        "label": None if label is None or pd.isna(label) else int(label),
                        "labelled_at": None, "seq": version})
    return records


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for name in ("transaction_id", "customer_id", "terminal_id"):
        frame[name] = frame[name].astype(np.int64)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    frame["amount"] = frame["amount"].astype(np.float64)
    frame[LABEL_FIELD] = pd.to_numeric(frame[LABEL_FIELD]).astype("float64")
    return frame
