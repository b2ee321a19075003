"""The consortium's terminal history, kept on the bank node from one night to the next.

Each nightly run pools only the days the node does not hold yet (or pooled with other banks
than tonight's), so the history grows by one day a night instead of being summed again over the
five weeks the terminal windows reach. What is kept is what the node decoded: the consortium's
events per day ``(terminal tag, second, transactions, frauds)``, with neither card, amount nor
bank, and how many banks saw each terminal over the run's period (the threshold is applied from
it whenever features are computed, so a terminal that reaches the threshold later has its whole
history).

Tags are keyed by the consortium's HE key (:func:`terminal_key`), so the history belongs to
one key generation: after a rotation the tags change, and the old generation's rows are deleted
when the new one is first saved.

The tables live in the node's transaction database (``bank_node/store.py``), or in a SQLite file
of the state directory when the agent trains from a file.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    func,
    insert,
    select,
)

from bank_node.features import NS_PER_DAY, FeatureConfig
from bank_node.federated.terminal_stats import ConsortiumHistory, day_label, history_days
from consortium.storage.database import create_tables

__all__ = ["PooledHistory", "PoolingScope", "pooling_scope", "terminal_key"]

log = logging.getLogger(__name__)

_NS_PER_SECOND: Final = 10**9
_TERMINAL_KEY_LABEL: Final = b"fedfraud/terminal-key/v1"
IntArray = npt.NDArray[np.int64]

_metadata = MetaData()
pooled_days = Table(
    "consortium_pooled_days", _metadata,
    Column("key_id", String(64), primary_key=True),
    Column("day", Integer, primary_key=True),
    Column("banks", String(4000), nullable=False),
    Column("events", Integer, nullable=False),
    Column("labels_until", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("pooled_at", DateTime, nullable=False),
)
"""One row per pooled day: its decoded events as columns of little-endian integers (``data``,
see :func:`_pack`), read and written whole: the features need every event of the period."""
# What the version and the stale-day checks read, without the rows' large ``data`` (stored
# before ``pooled_at``, it made every check read each day's events: 8 ms a look, every 30 s).
_days_index = Index("ix_pooled_days_meta", pooled_days.c.key_id, pooled_days.c.day, pooled_days.c.pooled_at,
                    pooled_days.c.labels_until, pooled_days.c.banks)
terminal_presence = Table(
    "consortium_terminal_presence", _metadata,
    Column("key_id", String(64), primary_key=True),
    Column("data", LargeBinary, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)
"""The last presence counts (terminal tag and how many banks saw it) per key generation."""

def _pack(*columns: npt.ArrayLike) -> bytes:
    """Equal-length integer columns as one bytes value: a count, then each column as int64."""
    arrays = [np.ascontiguousarray(c, dtype="<i8") for c in columns]
    n = len(arrays[0]) if arrays else 0
    if any(len(a) != n for a in arrays):
        raise ValueError("columns of different lengths")
    return np.array([n], dtype="<i8").tobytes() + b"".join(a.tobytes() for a in arrays)


def _unpack(data: bytes, n_columns: int) -> list[IntArray]:
    n = int(np.frombuffer(data[:8], dtype="<i8")[0])
    if len(data) != 8 + 8 * n * n_columns:
        raise ValueError("a stored consortium history value is truncated or corrupt")
    flat = np.frombuffer(data[8:], dtype="<i8").astype(np.int64)
    return [flat[i * n : (i + 1) * n] for i in range(n_columns)]


def terminal_key(secret_context: bytes) -> bytes:
    """The key of terminal tags and table positions, derived from the consortium's HE secret.

    Every bank holds the same secret context bytes (the ceremony seals the one file to each), and
    the aggregator only the public context, so every bank derives the same key and the aggregator
    cannot: it can neither link a table to terminals nor guess a tag by hashing terminal ids.
    """
    if not secret_context:
        raise ValueError("no secret context to derive the terminal key from")
    return hmac.new(hashlib.sha256(secret_context).digest(), _TERMINAL_KEY_LABEL, hashlib.sha256).digest()


@dataclass(frozen=True)
class PoolingScope:
    """The days of consortium events a run pools, as days since 1970-01-01.

    Attributes
    ----------
    days
        From the lookback of the first training day to the last day that transactions scored
        before the next night's run reach (``as_of + 1 - delay``): the training and validation
        rows' windows need the first part, the scoring service the rest.
    labels_until
        The first day whose fraud labels are not known yet (the window's
        ``labels_known_until``): days from it on are pooled with the labels known tonight, and
        pooled again once their labels are known.
    """

    days: tuple[int, ...]
    labels_until: int

    @property
    def first(self) -> int:
        """First day."""
        return self.days[0]


def _day_number(day: date) -> int:
    return int(pd.Timestamp(day).value // NS_PER_DAY)


def pooling_scope(train_start: date, labels_known_until: date, as_of: date,
                  config: FeatureConfig = FeatureConfig()) -> PoolingScope:
    """The days pooled for a window training from ``train_start``, with labels known before
    ``labels_known_until``, on the night ``as_of``."""
    try:  # the days the windows of rows from train_start to the next night (as_of + 1) reach
        days = history_days(pd.Timestamp(train_start), pd.Timestamp(as_of + timedelta(days=1)), config)
    except ValueError:
        raise ValueError(f"no day to pool: the training starts {train_start}, after the night {as_of}") from None
    return PoolingScope(days=tuple(days), labels_until=_day_number(labels_known_until))


def _banks_text(banks: Iterable[str]) -> str:
    return ",".join(sorted(banks))


class PooledHistory:
    """The decoded consortium terminal events of one node, per HE key generation.

    Parameters
    ----------
    engine
        The database (the node's transaction store, or a SQLite file of its own).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        create_tables(_metadata, engine, _days_index)  # create_all adds no index to an existing table

    @classmethod
    def in_state_dir(cls, state_dir: str | Path) -> PooledHistory:
        """A SQLite file ``terminal_history.db`` in the node's state directory."""
        root = Path(state_dir)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(create_engine(f"sqlite:///{root / 'terminal_history.db'}"))

    def pooled(self, key_id: str) -> dict[int, frozenset[str]]:
        """The days held for ``key_id``, each with the banks whose events it holds."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(pooled_days.c.day, pooled_days.c.banks).where(pooled_days.c.key_id == key_id)).all()
        return {int(day): frozenset(b for b in banks.split(",") if b) for day, banks in rows}

    def version(self, key_id: str) -> tuple[int, int, str]:
        """Changes whenever a night's pooling is saved: (days held, last day, last pooled at)."""
        with self.engine.connect() as connection:
            count, last, moment = connection.execute(
                select(func.count(), func.max(pooled_days.c.day), func.max(pooled_days.c.pooled_at))
                .where(pooled_days.c.key_id == key_id)).one()
        return int(count), int(last or 0), str(moment)

    def stale_days(self, key_id: str, days: Collection[int], banks: Collection[str], *,
                   labels_until: int) -> set[int]:
        """The days of ``days`` to pool tonight: not held, held with other banks than ``banks``,
        or pooled before their labels were known that are known now (before ``labels_until``)."""
        with self.engine.connect() as connection:
            rows = connection.execute(select(pooled_days.c.day, pooled_days.c.banks, pooled_days.c.labels_until)
                                      .where(pooled_days.c.key_id == key_id)).all()
        held = {int(day): (frozenset(b for b in text.split(",") if b), int(known)) for day, text, known in rows}
        wanted = frozenset(banks)
        stale = set()
        for day in days:
            if day not in held or held[day][0] != wanted:
                stale.add(day)
            elif held[day][1] <= day < labels_until:  # its labels were unknown then, known now
                stale.add(day)
        return stale

    def save(self, key_id: str, history: ConsortiumHistory, *, banks: Collection[str], run_id: str,
             labels_until: int, keep_from: int | None = None) -> None:
        """Keep a night's pooling: its days' events (replacing what was held for them) and the
        presence counts (replacing the last night's), in one database transaction.

        Rows of other key generations, and days before ``keep_from``, are deleted.
        """
        seconds = (history.time_ns // _NS_PER_SECOND) % (NS_PER_DAY // _NS_PER_SECOND)
        event_day = history.time_ns // NS_PER_DAY
        moment = datetime.now()  # to the microsecond: it tells a reader that the history changed
        days = [int(d) for d in history.days]
        with self.engine.begin() as connection:
            for table in (pooled_days, terminal_presence):
                connection.execute(delete(table).where(table.c.key_id != key_id))
            if keep_from is not None:
                connection.execute(delete(pooled_days).where(pooled_days.c.key_id == key_id,
                                                             pooled_days.c.day < keep_from))
            if days:
                connection.execute(delete(pooled_days).where(pooled_days.c.key_id == key_id,
                                                             pooled_days.c.day.in_(days)))
                for day in days:
                    rows = event_day == day
                    connection.execute(insert(pooled_days).values(
                        key_id=key_id, day=day, banks=_banks_text(banks), events=int(rows.sum()), run_id=run_id,
                        labels_until=labels_until,
                        pooled_at=moment, data=_pack(history.tag[rows], seconds[rows], history.count[rows],
                                                     history.frauds[rows])))
            connection.execute(delete(terminal_presence).where(terminal_presence.c.key_id == key_id))
            connection.execute(insert(terminal_presence).values(
                key_id=key_id, updated_at=moment, data=_pack(history.presence_tags, history.presence_banks)))
        log.info("consortium terminal history: pooled %d day(s) (%s), %d events, %d terminals",
                 len(days), ", ".join(day_label(d) for d in days[:3]) + (" ..." if len(days) > 3 else ""),
                 len(history.tag), len(history.presence_tags))

    def load(self, key_id: str, days: Collection[int], *, threshold: int) -> ConsortiumHistory:
        """The held history of ``days`` with the last presence counts, for computing features.

        Raises
        ------
        ValueError
            A day of ``days`` is not held for this key.
        """
        wanted = sorted(set(days))
        held = self.pooled(key_id)
        missing = [d for d in wanted if d not in held]
        if missing:
            raise ValueError(f"the node holds no consortium terminal events of {len(missing)} day(s), from "
                             f"{day_label(missing[0])} to {day_label(missing[-1])}")
        with self.engine.connect() as connection:
            stored = connection.execute(
                select(pooled_days.c.day, pooled_days.c.data)
                .where(pooled_days.c.key_id == key_id, pooled_days.c.day.in_(wanted))).all()
            presence_row = connection.execute(
                select(terminal_presence.c.data).where(terminal_presence.c.key_id == key_id)).first()
        parts = [(day, _unpack(data, 4)) for day, data in stored]
        tag, second, count, frauds = (
            np.concatenate([columns[i] for _, columns in parts]) if parts else np.empty(0, np.int64) for i in range(4))
        day_of = np.concatenate([np.full(len(columns[0]), day, np.int64) for day, columns in parts]) if parts else (
            np.empty(0, np.int64))
        presence_tags, presence_banks = (_unpack(presence_row[0], 2) if presence_row is not None
                                         else [np.empty(0, np.int64)] * 2)
        order = np.argsort(presence_tags, kind="stable")
        return ConsortiumHistory(
            tag=tag, time_ns=day_of * NS_PER_DAY + second * _NS_PER_SECOND, count=count, frauds=frauds,
            presence_tags=presence_tags[order], presence_banks=presence_banks[order], days=tuple(wanted),
            threshold=threshold,
        )

