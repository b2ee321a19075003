"""The recent transactions a scoring worker keeps in memory, in step with the node's store.

A transaction's features reach back at most ``lookback_days`` (its card's last 30 days, its
terminal's days 8 to 37 before it). Reading those rows from the database at every request costs
milliseconds; each scoring worker therefore holds the store's recent rows per card and per
terminal, and before every request reads only what changed since: the rows of store versions
above the last one it applied (:meth:`bank_node.store.TransactionStore.changes`). Rows other
workers recorded, files ingested and labels that arrived are all versioned writes, so every
worker sees every committed write, however many processes write.

Applying a row is idempotent (a row held already only takes its new label), so a snapshot that
also holds rows of later versions, or a row seen twice, changes nothing.
"""

from __future__ import annotations

import logging
import math
import threading
from array import array
from bisect import bisect_left, bisect_right
from itertools import accumulate
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final

import numpy as np
import pandas as pd

from bank_node.features import (
    AMOUNT,
    CUSTOMER_ID,
    LABEL,
    NS_PER_DAY,
    TERMINAL_ID,
    TIMESTAMP,
    TRANSACTION_ID,
    timestamps_ns,
)
from bank_node.store import TransactionStore

__all__ = ["RecentTransactions", "Rows"]

log = logging.getLogger(__name__)


#: More changed rows than this at one sync are read as a fresh snapshot instead (a large ingest).
MAX_CHANGES: Final = 50_000
#: Days kept beyond the features' lookback, so transactions that arrive late still find their rows.
MARGIN_DAYS: Final = 2


#: A window of more rows than this is summed by difference of running sums, not row by row
#: (exact fraud counts either way; amounts to rounding, like the batch path's running sums).
SUM_ROWS_MAX: Final = 64


class Rows:
    """One card's or one terminal's rows, sorted by (time, transaction id), with one value each,
    and the running sums of the values (built when first asked for, kept up by appends, dropped
    by any other change)."""

    __slots__ = ("_sums", "time", "txid", "value")

    def __init__(self, typecode: str) -> None:
        self.time = array("q")
        self.txid = array("q")
        self.value: array[Any] = array(typecode)
        self._sums: array[Any] | None = None

    def append(self, time: int, txid: int, value: float) -> None:
        """Add a row timed after every row held."""
        self.time.append(time)
        self.txid.append(txid)
        self.value.append(value)
        if self._sums is not None:
            self._sums.append(self._sums[-1] + value)

    def put(self, time: int, txid: int, value: float) -> None:
        """Insert the row, or give the row held already (same id) its new value."""
        times, n = self.time, len(self.time)
        if not n or time > times[-1]:  # the usual case: the newest of its card or terminal
            self.append(time, txid, value)
            return
        self._sums = None
        i = bisect_left(times, time)
        while i < n and times[i] == time and self.txid[i] < txid:
            i += 1
        if i < n and times[i] == time and self.txid[i] == txid:
            self.value[i] = value
            return
        times.insert(i, time)
        self.txid.insert(i, txid)
        self.value.insert(i, value)

    def total(self, first: int, end: int) -> Any:
        """The values of rows ``first`` to ``end`` (excluded) added up: exactly (``math.fsum``,
        or integers) for a few rows, by difference of running sums for many (a busy terminal's
        window holds thousands of rows, and a request reads one per transaction)."""
        if end - first <= SUM_ROWS_MAX:
            values = self.value[first:end]
            return math.fsum(values) if self.value.typecode == "d" else sum(values)
        if self._sums is None:
            self._sums = array("d" if self.value.typecode == "d" else "q", accumulate(self.value, initial=0))
        return self._sums[end] - self._sums[first]

    def drop_before(self, cutoff: int) -> None:
        """Forget the rows timed before ``cutoff``."""
        k = bisect_left(self.time, cutoff)
        if k:
            del self.time[:k], self.txid[:k], self.value[:k]
            self._sums = None


class RecentTransactions:
    """The store's rows of the last ``keep_days`` (plus a margin), per card and per terminal.

    Parameters
    ----------
    store
        The node's store.
    keep_days
        Days of history the features reach back (``FeatureConfig.lookback_days``).
    """

    def __init__(self, store: TransactionStore, *, keep_days: int) -> None:
        self.store = store
        self.keep_ns = (keep_days + MARGIN_DAYS) * NS_PER_DAY
        self.lock = threading.RLock()
        self._cards: dict[int, Rows] = {}
        self._terminals: dict[int, Rows] = {}
        self.version = 0
        self.covered_from = 0  # every store row timed at or after it is held
        self.newest = 0
        self._loaded = False

    def __len__(self) -> int:
        return sum(len(rows.time) for rows in self._cards.values())

    # ------------------------------------------------------------------------- keeping in step

    def load(self) -> None:
        """Read the recent rows afresh (at start, and after a change too large to apply)."""
        with self.lock:
            newest = self.store.newest_timestamp()
            since = None if newest is None else pd.Timestamp(newest).value - self.keep_ns
            frame, version = self.store.recent(
                datetime.min if since is None else pd.Timestamp(since).to_pydatetime())
            self._cards, self._terminals = {}, {}
            self.covered_from = -(2**63) if since is None else since
            self.newest = self.covered_from
            self._apply_frame(frame)
            self.version = version
            self._loaded = True
            log.info("holding %d recent transactions of %d cards and %d terminals (store version %d)",
                     len(self), len(self._cards), len(self._terminals), version)

    def sync(self) -> None:
        """Apply what other writers changed since the last version seen."""
        with self.lock:
            if not self._loaded:
                self.load()
                return
            rows, version = self.store.changes(self.version, limit=MAX_CHANGES)
            if len(rows) >= MAX_CHANGES:
                self.load()
                return
            self._apply((tx, ns, card, terminal, amount, label == 1) for tx, ns, card, terminal, amount, label in rows)
            self.version = version

    def recorded(self, rows: Sequence[tuple[int, int, int, int, float]], version: int) -> None:
        """Take in rows this worker just recorded as store version ``version``: ``(transaction_id,
        timestamp in ns, card, terminal, amount)``, no labels yet."""
        with self.lock:
            self._apply((tx, t, card, terminal, amount, False) for tx, t, card, terminal, amount in rows)
            if version == self.version + 1:  # nothing else was written in between
                self.version = version

    def _apply_frame(self, frame: pd.DataFrame) -> None:
        labels = frame[LABEL].to_numpy(dtype=np.float64) if LABEL in frame.columns else np.zeros(len(frame))
        self._apply(zip(
            frame[TRANSACTION_ID].to_numpy(dtype=np.int64).tolist(), timestamps_ns(frame[TIMESTAMP]).tolist(),
            frame[CUSTOMER_ID].to_numpy(dtype=np.int64).tolist(), frame[TERMINAL_ID].to_numpy(dtype=np.int64).tolist(),
            frame[AMOUNT].to_numpy(dtype=np.float64).tolist(), (labels == 1).tolist(), strict=True))

    def _apply(self, rows: Iterable[tuple[int, int, int, int, float, bool]]) -> None:
        """Put rows ``(transaction_id, time ns, card, terminal, amount, known fraud)``."""
        cards, terminals, newest, covered_from = self._cards, self._terminals, self.newest, self.covered_from
        for tx, t, card, terminal, amount, is_fraud in rows:
            if t < covered_from:
                continue  # older than what this worker holds; never read from memory
            held = cards.get(card)
            if held is None:
                held = cards[card] = Rows("d")
            held.put(t, tx, amount)
            held = terminals.get(terminal)
            if held is None:
                held = terminals[terminal] = Rows("b")
            held.put(t, tx, 1 if is_fraud else 0)
            if t > newest:
                newest = t
        self.newest = newest
        if self.newest - self.covered_from > self.keep_ns + NS_PER_DAY:
            self._prune(self.newest - self.keep_ns)

    def _prune(self, cutoff: int) -> None:
        for table in (self._cards, self._terminals):
            for key in list(table):
                rows = table[key]
                rows.drop_before(cutoff)
                if not rows.time:
                    del table[key]
        self.covered_from = cutoff

    # ---------------------------------------------------------------------------------- reads

    def terminal_ids(self) -> list[int]:
        """The terminals of the held rows."""
        with self.lock:
            return list(self._terminals)

    def covers(self, first_ns: int, reach_ns: int) -> bool:
        """Whether the rows from ``first_ns - reach_ns`` on are all held."""
        with self.lock:
            return self._loaded and first_ns - reach_ns >= self.covered_from

    def windows(self, card: int, time: int, txid: int, terminal: int, until: int,
                spans: Sequence[int]) -> tuple[list[int], list[float], list[int], list[int]]:
        """One transaction's windows, read off the held rows (it is not held yet), per span (ns):

        - the card's held rows in ``(time - span, (time, txid))`` in (time, id) order: how many,
          and their amounts' sum (:meth:`Rows.total`);
        - the terminal's held rows timed in ``(until - span, until]``: how many, and how many
          known frauds.
        """
        card_counts: list[int] = []
        card_sums: list[float] = []
        terminal_counts: list[int] = []
        terminal_frauds: list[int] = []
        with self.lock:
            rows = self._cards.get(card)
            if rows is None:
                card_counts, card_sums = [0] * len(spans), [0.0] * len(spans)
            else:
                times, ids = rows.time, rows.txid
                end = bisect_right(times, time)
                while end > 0 and times[end - 1] == time and ids[end - 1] > txid:
                    end -= 1
                for span in spans:
                    first = bisect_right(times, time - span, 0, end)
                    card_counts.append(end - first)
                    card_sums.append(rows.total(first, end))
            rows = self._terminals.get(terminal)
            if rows is None:
                terminal_counts, terminal_frauds = [0] * len(spans), [0] * len(spans)
            else:
                times = rows.time
                hi = bisect_right(times, until)
                for span in spans:
                    lo = bisect_right(times, until - span, 0, hi)
                    terminal_counts.append(hi - lo)
                    terminal_frauds.append(int(rows.total(lo, hi)))
        return card_counts, card_sums, terminal_counts, terminal_frauds
