"""Features of transactions as they are scored, equal to the batch features over the same history.

A transaction being scored gets the handbook's features from what the node's store holds: its
card's transactions of the last 30 days, and its terminal's transactions of the windows
``(t - 37 d, t - 7 d]``, with the labels known so far (unknown counts as genuine, as in training).
The scoring service's features of a transaction equal ``fedfraud features`` over the store's
history at that moment (tested, for single transactions and requests of many, on the awkward
cases too: ties in time, late arrivals, several transactions of one card or terminal in one
request).

They are read off the worker's in-memory copy of the store's recent rows
(:class:`bank_node.recent.RecentTransactions`, brought up to date before each request) by binary
searches per transaction. A transaction older than what the copy holds is featured from the
store instead, by the batch path's own function (:func:`bank_node.features.compute_features`)
over just the rows its windows reach.

Where the model was trained on consortium terminal features, the terminal columns of terminals
above the threshold are replaced from the pooled consortium history, as in training
(:func:`bank_node.federated.terminal_stats.with_consortium_terminal_features`).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from bank_node.features import (
    AMOUNT,
    CUSTOMER_ID,
    LABEL,
    NS_PER_DAY,
    TERMINAL_ID,
    TIMESTAMP,
    TRANSACTION_ID,
    FeatureConfig,
    calendar_features,
    compute_features,
    feature_columns,
    timestamps_ns,
)
from bank_node.federated.terminal_stats import ConsortiumHistory, consortium_terminal_values, terminal_tags
from bank_node.recent import RecentTransactions, Rows
from bank_node.store import TransactionStore

__all__ = ["ConsortiumTerminals", "Featured", "NewTransactions", "OnlineFeatures"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_EPOCH: Final = datetime(1970, 1, 1)
_MICROSECOND: Final = timedelta(microseconds=1)


@dataclass(frozen=True)
class ConsortiumTerminals:
    """The pooled consortium history and the key its terminal tags are made with.

    The tags of terminals seen are kept (a keyed hash each: 6 ms of a 1,000-transaction request,
    and 40 µs of a single transaction's), up to :attr:`MAX_KEPT_TAGS`; then they are forgotten
    and made again as they come. A new night's history takes over the tags made under the same
    key (:meth:`over`), and a worker makes those of the terminals it holds recent transactions of
    when it loads a model (:meth:`bank_node.service.app.ScoringNode.refresh`), so the first
    transaction of each terminal after a start or a swap costs no more than the next."""

    history: ConsortiumHistory
    key: bytes
    _tags: dict[int, int] = field(default_factory=dict, compare=False, repr=False, init=False)

    MAX_KEPT_TAGS: ClassVar[int] = 1 << 20

    def tags(self, terminal_ids: IntArray) -> IntArray:
        """:func:`~bank_node.federated.terminal_stats.terminal_tags` of ``terminal_ids``."""
        kept, ids = self._tags, terminal_ids.tolist()
        distinct = set(ids)
        # Read into a dict of this call's own: another thread may clear the kept tags meanwhile.
        found = {t: tag for t in distinct if (tag := kept.get(t)) is not None}
        missing = sorted(distinct - found.keys())
        if missing:
            made = dict(zip(missing, terminal_tags(np.asarray(missing, dtype=np.int64), self.key).tolist(), strict=True))
            if len(kept) + len(made) > self.MAX_KEPT_TAGS:
                kept.clear()
            kept.update(made)
            found.update(made)
        return np.fromiter((found[t] for t in ids), dtype=np.int64, count=len(ids))

    def over(self, history: ConsortiumHistory) -> ConsortiumTerminals:
        """The same key over another history, with the tags made so far (a tag depends only on
        the key and the terminal). The tags are copied: each keeps its own bound."""
        other = ConsortiumTerminals(history=history, key=self.key)
        other._tags.update(self._tags)
        return other

    def learn(self, terminal_ids: Iterable[int]) -> int:
        """Make the tags of these terminals now (up to :attr:`MAX_KEPT_TAGS` kept); how many were
        new."""
        missing = np.fromiter((t for t in terminal_ids if t not in self._tags), dtype=np.int64)
        missing = missing[: max(self.MAX_KEPT_TAGS - len(self._tags), 0)]
        if len(missing):
            self.tags(missing)
        return len(missing)


@dataclass(frozen=True)
class NewTransactions:
    """Transactions to score, as arrays (no DataFrame on the request path: it cost milliseconds)."""

    txid: IntArray
    time_ns: IntArray
    card: IntArray
    terminal: IntArray
    amount: FloatArray

    def __len__(self) -> int:
        return len(self.txid)

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> NewTransactions:
        """From validated mappings with the canonical fields (``timestamp`` a naive datetime)."""
        # Microseconds by datetime arithmetic: numpy's conversion of datetime objects took 5 ms a
        # thousand.
        micros = np.array([(r[TIMESTAMP] - _EPOCH) // _MICROSECOND for r in records], dtype=np.int64)
        return cls(txid=np.array([r[TRANSACTION_ID] for r in records], dtype=np.int64), time_ns=micros * 1000,
                   card=np.array([r[CUSTOMER_ID] for r in records], dtype=np.int64),
                   terminal=np.array([r[TERMINAL_ID] for r in records], dtype=np.int64),
                   amount=np.array([r[AMOUNT] for r in records], dtype=np.float64))

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> NewTransactions:
        """From a frame with the canonical columns."""
        return cls(txid=frame[TRANSACTION_ID].to_numpy(dtype=np.int64),
                   time_ns=timestamps_ns(pd.to_datetime(frame[TIMESTAMP])),
                   card=frame[CUSTOMER_ID].to_numpy(dtype=np.int64),
                   terminal=frame[TERMINAL_ID].to_numpy(dtype=np.int64),
                   amount=frame[AMOUNT].to_numpy(dtype=np.float64))

    def frame(self) -> pd.DataFrame:
        """The canonical columns."""
        return pd.DataFrame({TRANSACTION_ID: self.txid, TIMESTAMP: self.time_ns.view("datetime64[ns]"),
                             CUSTOMER_ID: self.card, TERMINAL_ID: self.terminal, AMOUNT: self.amount})


@dataclass(frozen=True)
class Featured:
    """Transactions to score and their features, in the order given.

    Attributes
    ----------
    new
        The transactions.
    features
        Each feature column (:func:`bank_node.features.feature_columns`), aligned with ``new``.
    """

    new: NewTransactions
    features: dict[str, FloatArray]

    @property
    def matrix(self) -> FloatArray:
        """The model inputs (:data:`bank_node.features.MODEL_INPUTS` order: amount, then the features)."""
        if len(self.new) == 1:  # a scoring request's: one list (stacking 15 one-element columns took 40 us)
            return np.array([[float(self.new.amount[0]), *(float(v[0]) for v in self.features.values())]])
        return np.column_stack([self.new.amount, *(np.asarray(v, dtype=np.float64) for v in self.features.values())])

    def frame(self) -> pd.DataFrame:
        """The rows as ``compute_features`` returns them (label 0: not known when scored)."""
        out = self.new.frame()
        out[LABEL] = 0
        return pd.concat([out, pd.DataFrame(self.features)], axis=1)


class OnlineFeatures:
    """The features of new transactions from the node's store.

    Parameters
    ----------
    store
        The node's transaction store.
    config
        Feature constants (the training's).
    """

    def __init__(self, store: TransactionStore, config: FeatureConfig = FeatureConfig()) -> None:
        self.store = store
        self.config = config
        self.recent = RecentTransactions(store, keep_days=config.lookback_days)

    def compute(self, new: NewTransactions | pd.DataFrame, *,
                consortium: ConsortiumTerminals | None = None) -> Featured:
        """The features of ``new`` (not stored yet), in the order given.

        Raises
        ------
        ValueError
            ``new`` repeats a transaction id, or the consortium history lacks days the rows'
            windows reach.
        """
        if isinstance(new, pd.DataFrame):
            new = NewTransactions.from_frame(new)
        if len(new) > 1 and len(np.unique(new.txid)) != len(new):
            raise ValueError("a transaction id appears twice among the transactions to score")
        with self.recent.lock:  # one consistent view: no other thread's pruning in between
            self.recent.sync()
            held = self.recent.covers(int(new.time_ns.min()), self.config.lookback_days * NS_PER_DAY)
            features = None
            if held:
                features = self._from_memory(new)
        if features is None:
            features = self._from_store(new)
        if consortium is not None:
            shared, covered = consortium_terminal_values(new.terminal, new.time_ns, consortium.history,
                                                         secret=consortium.key, config=self.config,
                                                         tags=consortium.tags(new.terminal))
            for name, values in shared.items():
                features[name] = features[name].copy()
                features[name][covered] = values
        return Featured(new=new, features=features)

    def record(self, new: NewTransactions | pd.DataFrame) -> int:
        """Record scored transactions in the store (and in this worker's copy); the store version.

        Raises
        ------
        schemas.errors.FedfraudInputError
            A transaction id the store holds already; nothing is recorded.
        """
        if isinstance(new, pd.DataFrame):
            new = NewTransactions.from_frame(new)
        rows = list(zip(new.txid.tolist(), new.time_ns.tolist(), new.card.tolist(), new.terminal.tolist(),
                        new.amount.tolist(), strict=True))
        version = self.store.record_rows(rows)
        self.recent.recorded(rows, version)
        return version

    def _from_memory(self, new: NewTransactions) -> dict[str, FloatArray]:
        """The features of ``new`` read straight off the held rows, one transaction at a time in
        (time, id) order: binary searches in its card's and its terminal's rows, without
        gathering, sorting and windowing every held row the batch reaches (that cost 60 ms of a
        1,000-transaction request). Earlier transactions of the same request enter the windows
        as they would once recorded: a card's earlier ones with their amounts, a terminal's
        (when the request spans more than the label delay) as not known to be fraud.

        Window sums are taken exactly over a few rows and by difference of running sums over
        many (:meth:`bank_node.recent.Rows.total`), so each transaction costs binary searches
        however busy its card or terminal; the batch path differences running sums too, and the
        two agree to rounding (tested against :meth:`_from_store`, which is the batch path)."""
        config, recent = self.config, self.recent
        spans = [w * NS_PER_DAY for w in config.windows_days]
        delay = config.delay_days * NS_PER_DAY
        n = len(new)
        order = np.lexsort((new.txid, new.time_ns)).tolist() if n > 1 else [0]
        times, txids, cards = new.time_ns.tolist(), new.txid.tolist(), new.card.tolist()
        terminals, amounts = new.terminal.tolist(), new.amount.tolist()
        # Earlier transactions of this request per card; and per terminal, the request's times,
        # when they can reach one another's terminal windows at all (a request spanning the
        # label delay; with no delay, a transaction's window holds itself).
        same_card: dict[int, Rows] = {}
        same_terminal: dict[int, list[int]] = {}
        if max(times) - min(times) >= delay:
            for i in order:
                same_terminal.setdefault(terminals[i], []).append(times[i])
        # Per transaction: card counts and mean amounts, then terminal counts and risks, per window.
        rows: list[list[float]] = [[]] * n
        for i in order:
            time, card, terminal, amount = times[i], cards[i], terminals[i], amounts[i]
            until = time - delay
            counts, totals, seen, frauds = recent.windows(card, time, txids[i], terminal, until, spans)
            earlier = same_card.get(card)
            if earlier is None:
                earlier = same_card[card] = Rows("d")
            else:  # in (time, id) order: a bisection, and the rows' sum (a burst of one card is cheap)
                for k, span in enumerate(spans):
                    first = bisect_right(earlier.time, time - span)
                    counts[k] += len(earlier.time) - first
                    totals[k] = totals[k] + earlier.total(first, len(earlier.time))
            earlier.append(time, txids[i], amount)
            reached = same_terminal.get(terminal)
            if reached:  # in time order: a bisection
                for k, span in enumerate(spans):
                    seen[k] += bisect_right(reached, until) - bisect_right(reached, until - span)
            rows[i] = counts + totals + seen + frauds
        # Means and risks for all at once (the transaction's own amount added to its window's sum).
        table = np.array(rows, dtype=np.float64).reshape(n, 4, len(spans))
        count, total, seen_, fraud = (table[:, j, :] for j in range(4))
        card_count = count + 1
        card_mean = (total + new.amount[:, None]) / card_count
        risk = np.divide(fraud, seen_, out=np.zeros_like(fraud), where=seen_ > 0)
        features: dict[str, FloatArray] = {
            name: flag.astype(np.float64) for name, flag in calendar_features(new.time_ns, config=config).items()}
        for k, w in enumerate(config.windows_days):
            features[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] = card_count[:, k]
            features[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"] = card_mean[:, k]
            features[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = seen_[:, k]
            features[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = risk[:, k]
        return {name: features[name] for name in feature_columns(config)}

    def _from_store(self, transactions: NewTransactions) -> dict[str, FloatArray]:
        new = transactions.frame()
        stamps = new[TIMESTAMP]
        first, last = stamps.min().to_pydatetime(), stamps.max().to_pydatetime()
        card_days = max(self.config.windows_days)
        history = self.store.related(
            new[CUSTOMER_ID], first - timedelta(days=card_days + 1),
            new[TERMINAL_ID], first - timedelta(days=self.config.lookback_days + 1),
            until=last + timedelta(microseconds=1),
        )
        history = history[~history[TRANSACTION_ID].isin(new[TRANSACTION_ID])]
        history[LABEL] = history[LABEL].fillna(0).astype(np.int64)
        scored = new.copy()
        scored[LABEL] = 0  # not known yet; only an earlier row's label enters a window, never its own
        frame = pd.concat([history, scored[history.columns]], ignore_index=True)
        day = pd.Timestamp(first).normalize()
        featured = compute_features(frame, start=day, end=pd.Timestamp(last).normalize(), config=self.config)
        featured = featured[featured[TRANSACTION_ID].isin(new[TRANSACTION_ID])]
        order = pd.Index(featured[TRANSACTION_ID]).get_indexer(new[TRANSACTION_ID])
        return {name: featured[name].to_numpy(dtype=np.float64)[order] for name in feature_columns(self.config)}
