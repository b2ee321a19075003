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
from datetime import date, datetime
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    insert,
    select,
)

from bank_node.features import NS_PER_DAY, FeatureConfig
from bank_node.federated.terminal_stats import ConsortiumHistory, day_label

__all__ = ["PooledHistory", "PoolingScope", "pooling_scope", "terminal_key"]

log = logging.getLogger(__name__)

_NS_PER_SECOND: Final = 10**9
_CHUNK: Final = 10_000
_TERMINAL_KEY_LABEL: Final = b"fedfraud/terminal-key/v1"

_metadata = MetaData()
terminal_events = Table(
    "consortium_terminal_events", _metadata,
    Column("key_id", String(64), nullable=False),
    Column("day", Integer, nullable=False),
    Column("tag", BigInteger, nullable=False),
    Column("second", Integer, nullable=False),
    Column("count", Integer, nullable=False),
    Column("frauds", Integer, nullable=False),
    Index("ix_consortium_terminal_events_day", "key_id", "day"),
)
pooled_days = Table(
    "consortium_pooled_days", _metadata,
    Column("key_id", String(64), primary_key=True),
    Column("day", Integer, primary_key=True),
    Column("banks", String(4000), nullable=False),
    Column("events", Integer, nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("pooled_at", DateTime, nullable=False),
)
terminal_presence = Table(
    "consortium_terminal_presence", _metadata,
    Column("key_id", String(64), primary_key=True),
    Column("tag", BigInteger, primary_key=True),
    Column("banks", Integer, nullable=False),
)


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
    """The days of consortium events a run's window needs, as days since 1970-01-01.

    Attributes
    ----------
    days
        From the lookback of the first training day to the last day whose labels are known:
        the training and validation rows' windows reach the first part; the rest keeps the
        history fresh for scoring.
    """

    days: tuple[int, ...]

    @property
    def first(self) -> int:
        """First day."""
        return self.days[0]


def _day_number(day: date) -> int:
    return int(pd.Timestamp(day).value // NS_PER_DAY)


def pooling_scope(train_start: date, labels_known_until: date, config: FeatureConfig = FeatureConfig()) -> PoolingScope:
    """The days pooled for a window training from ``train_start`` with labels known before
    ``labels_known_until``."""
    first = _day_number(train_start) - config.lookback_days
    end = _day_number(labels_known_until)
    if end <= first:
        raise ValueError(f"no labelled day between {day_label(first)} and {labels_known_until}")
    return PoolingScope(days=tuple(range(first, end)))


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
        _metadata.create_all(engine)

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

    def stale_days(self, key_id: str, days: Collection[int], banks: Collection[str]) -> set[int]:
        """The days of ``days`` not held, or held with other banks than ``banks``."""
        held = self.pooled(key_id)
        wanted = frozenset(banks)
        return {d for d in days if held.get(d) != wanted}

    def save(self, key_id: str, history: ConsortiumHistory, *, banks: Collection[str], run_id: str,
             keep_from: int | None = None) -> None:
        """Keep a night's pooling: its days' events (replacing what was held for them) and the
        presence counts (replacing the last night's), in one database transaction.

        Rows of other key generations, and days before ``keep_from``, are deleted.
        """
        seconds = (history.time_ns // _NS_PER_SECOND) % (NS_PER_DAY // _NS_PER_SECOND)
        event_day = history.time_ns // NS_PER_DAY
        moment = datetime.now().replace(microsecond=0)
        with self.engine.begin() as connection:
            for table in (terminal_events, pooled_days, terminal_presence):
                connection.execute(delete(table).where(table.c.key_id != key_id))
            if keep_from is not None:
                for table in (terminal_events, pooled_days):
                    connection.execute(delete(table).where(table.c.key_id == key_id, table.c.day < keep_from))
            days = [int(d) for d in history.days]
            if days:
                connection.execute(delete(terminal_events).where(
                    terminal_events.c.key_id == key_id, terminal_events.c.day.in_(days)))
                connection.execute(delete(pooled_days).where(pooled_days.c.key_id == key_id,
                                                             pooled_days.c.day.in_(days)))
            records = [
                {"key_id": key_id, "day": int(d), "tag": int(t), "second": int(s), "count": int(c), "frauds": int(f)}
                for d, t, s, c, f in zip(event_day, history.tag, seconds, history.count, history.frauds, strict=True)
            ]
            for start in range(0, len(records), _CHUNK):
                connection.execute(insert(terminal_events), records[start : start + _CHUNK])
            if days:
                per_day = dict(zip(*np.unique(event_day, return_counts=True), strict=True))
                connection.execute(insert(pooled_days), [
                    {"key_id": key_id, "day": d, "banks": _banks_text(banks), "run_id": run_id,
                     "pooled_at": moment, "events": int(per_day.get(d, 0))}
                    for d in days
                ])
            connection.execute(delete(terminal_presence).where(terminal_presence.c.key_id == key_id))
            presence = [{"key_id": key_id, "tag": int(t), "banks": int(b)}
                        for t, b in zip(history.presence_tags, history.presence_banks, strict=True)]
            for start in range(0, len(presence), _CHUNK):
                connection.execute(insert(terminal_presence), presence[start : start + _CHUNK])
        log.info("consortium terminal history: pooled %d day(s) (%s), %d events, %d terminals",
                 len(days), ", ".join(day_label(d) for d in days[:3]) + (" ..." if len(days) > 3 else ""),
                 len(records), len(presence))

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
        columns = (terminal_events.c.day, terminal_events.c.tag, terminal_events.c.second, terminal_events.c.count,
                   terminal_events.c.frauds)
        with self.engine.connect() as connection:
            events = np.array(connection.execute(
                select(*columns).where(terminal_events.c.key_id == key_id,
                                       terminal_events.c.day.between(wanted[0] if wanted else 0,
                                                                     wanted[-1] if wanted else -1))
            ).all(), dtype=np.int64).reshape(-1, 5)
            presence = np.array(connection.execute(
                select(terminal_presence.c.tag, terminal_presence.c.banks)
                .where(terminal_presence.c.key_id == key_id).order_by(terminal_presence.c.tag)
            ).all(), dtype=np.int64).reshape(-1, 2)
        events = events[np.isin(events[:, 0], wanted)]
        return ConsortiumHistory(
            tag=events[:, 1], time_ns=events[:, 0] * NS_PER_DAY + events[:, 2] * _NS_PER_SECOND,
            count=events[:, 3], frauds=events[:, 4], presence_tags=presence[:, 0], presence_banks=presence[:, 1],
            days=tuple(wanted), threshold=threshold,
        )

