"""Transaction features of the Fraud Detection Handbook, computed without row loops.

The 14 features follow the handbook's definitions (Le Borgne et al., 2022, chapter 3):

* calendar flags: ``TX_DURING_WEEKEND`` (Saturday or Sunday) and ``TX_DURING_NIGHT``
  (hour <= ``night_hour_max``);
* customer (card) windows: number of transactions and mean amount of the card over
  ``(t - w, t]``, measured back from each transaction's own timestamp, current
  transaction included;
* terminal windows: number of transactions of the terminal over
  ``(t - delay - w, t - delay]`` and the fraud share over that window ("risk",
  0 when the window is empty). The delay stands for fraud labels arriving late.

Every window is found by binary search on sorted ``(group, time)`` keys and summed
with cumulative sums, so the cost is a few sorts of the input.

Canonical input columns are ``transaction_id`` (int), ``timestamp`` (naive
datetime64), ``customer_id`` (int), ``terminal_id`` (int), ``amount`` (float) and
``label`` (0/1, needed for terminal risk).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from schemas.transaction import LABEL_FIELD, REQUIRED_FIELDS

__all__ = [
    "AMOUNT",
    "CUSTOMER_ID",
    "FEATURE_COLUMNS",
    "FeatureConfig",
    "LABEL",
    "MODEL_AMOUNT",
    "MODEL_INPUTS",
    "NS_PER_DAY",
    "REQUIRED_COLUMNS",
    "TERMINAL_ID",
    "TIMESTAMP",
    "TRANSACTION_ID",
    "TerminalWindows",
    "calendar_features",
    "compute_features",
    "model_matrix",
    "customer_window_features",
    "feature_columns",
    "terminal_window_features",
    "timestamps_ns",
    "window_risk",
]

# The canonical transaction fields, named once in schemas.transaction.
TRANSACTION_ID, TIMESTAMP, CUSTOMER_ID, TERMINAL_ID, AMOUNT = REQUIRED_FIELDS
LABEL = LABEL_FIELD
REQUIRED_COLUMNS: tuple[str, ...] = REQUIRED_FIELDS

_NS_PER_HOUR = 3_600 * 10**9
NS_PER_DAY = 24 * _NS_PER_HOUR
# 1970-01-01, day 0 of datetime64, was a Thursday (Monday = 0).
_EPOCH_WEEKDAY = 3

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
DateLike = str | dt.date | np.datetime64


@dataclass(frozen=True)
class FeatureConfig:
    """Constants of the feature definitions.

    Parameters
    ----------
    windows_days : tuple of int
        Window lengths in days, used for both customer and terminal windows.
    delay_days : int
        Label delay in days: terminal windows end this long before the transaction.
    night_hour_max : int
        Last hour of the night: ``TX_DURING_NIGHT`` is 1 when ``hour <= night_hour_max``.
    weekend_first_weekday : int
        First weekday of the weekend (Monday = 0); days from it to Sunday are weekend.
    """

    windows_days: tuple[int, ...] = (1, 7, 30)
    delay_days: int = 7
    night_hour_max: int = 6
    weekend_first_weekday: int = 5

    def __post_init__(self) -> None:
        windows = tuple(self.windows_days)
        if not windows:
            raise ValueError("FeatureConfig.windows_days must hold at least one window")
        if any(not _is_int(w) or w <= 0 for w in windows):
            raise ValueError(f"FeatureConfig.windows_days must be positive integers, got {windows}")
        if len(set(windows)) != len(windows):
            raise ValueError(f"FeatureConfig.windows_days has duplicates: {windows}")
        if not _is_int(self.delay_days) or self.delay_days < 0:
            raise ValueError(f"FeatureConfig.delay_days must be an integer >= 0, got {self.delay_days}")
        if not _is_int(self.night_hour_max) or not 0 <= self.night_hour_max <= 23:
            raise ValueError(f"FeatureConfig.night_hour_max must be in 0..23, got {self.night_hour_max}")
        if not _is_int(self.weekend_first_weekday) or not 0 <= self.weekend_first_weekday <= 6:
            raise ValueError(
                f"FeatureConfig.weekend_first_weekday must be in 0..6, got {self.weekend_first_weekday}"
            )
        object.__setattr__(self, "windows_days", windows)

    @property
    def lookback_days(self) -> int:
        """Days of history before a transaction that any feature can reach."""
        return max(self.windows_days) + self.delay_days


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def feature_columns(config: FeatureConfig = FeatureConfig()) -> tuple[str, ...]:
    """Names of the engineered features, in the handbook's column order.

    Parameters
    ----------
    config : FeatureConfig
        Feature constants; the window lengths appear in the names.

    Returns
    -------
    tuple of str
        Calendar flags, then customer count/average per window, then terminal
        count/risk per window.
    """
    names = ["TX_DURING_WEEKEND", "TX_DURING_NIGHT"]
    for w in config.windows_days:
        names += [f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW", f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"]
    for w in config.windows_days:
        names += [f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW", f"TERMINAL_ID_RISK_{w}DAY_WINDOW"]
    return tuple(names)


FEATURE_COLUMNS: tuple[str, ...] = feature_columns()
"""The handbook's 14 features for the default :class:`FeatureConfig`."""

MODEL_AMOUNT: Final = "TX_AMOUNT"
"""The model's name for the amount input (the handbook's; the canonical column is ``amount``)."""

MODEL_INPUTS: tuple[str, ...] = (MODEL_AMOUNT, *FEATURE_COLUMNS)
"""The handbook baselines' 15 model inputs, by the names every model file, features file and
scoring answer uses: ``TX_AMOUNT`` and the 14 features."""


def model_matrix(featured: pd.DataFrame) -> npt.NDArray[np.float64]:
    """The model inputs of featured rows (as :func:`compute_features` returns them), in
    :data:`MODEL_INPUTS` order."""
    return featured[[AMOUNT, *FEATURE_COLUMNS]].to_numpy(dtype=np.float64)


# --------------------------------------------------------------------------- search


def _group_time_order(group: IntArray, time: IntArray) -> tuple[IntArray, IntArray]:
    """Indices sorting rows by time, and by group then time; ties keep row order.

    Both sorts are stable, so an input already in time order costs one linear pass
    for the first.
    """
    by_time = np.argsort(time, kind="stable")
    by_group_time = by_time[np.argsort(group[by_time], kind="stable")]
    return by_time, by_group_time


class _GroupTimeIndex:
    """A table's rows sorted by ``(group, time, row)``, searchable by ``(group, time)``.

    Built once, it answers any number of searches (the scoring service keeps one over the
    pooled consortium history between nights).

    Parameters
    ----------
    table_group, table_time : ndarray of int64
        The table, any order.

    Attributes
    ----------
    order : ndarray of int64
        Indices sorting the table by group, then time, then row.

    Notes
    -----
    Group and time are replaced by their ranks among the table's distinct values,
    which keeps every table-versus-query comparison and packs the pair into one
    int64 without overflow (ranks stay below the row count). Queries are searched in
    sorted order, which keeps the binary searches cache friendly.
    """

    def __init__(self, table_group: IntArray, table_time: IntArray) -> None:
        self._group, self._time = table_group, table_time
        self._by_time, self.order = _group_time_order(table_group, table_time)
        sorted_times = table_time[self._by_time]
        new_time = _run_starts(sorted_times)
        self._distinct_times = sorted_times[new_time]
        time_rank = np.empty(len(table_time), dtype=np.int64)
        time_rank[self._by_time] = np.cumsum(new_time)

        grouped = table_group[self.order]
        new_group = _run_starts(grouped)
        self._distinct_groups = grouped[new_group]
        self._stride = np.int64(len(self._distinct_times) + 1)
        self._key = (np.cumsum(new_group) - 1) * self._stride + time_rank[self.order]

    def positions(self, query_group: IntArray, query_time: IntArray, offsets: Sequence[int]) -> list[IntArray]:
        """Count table rows up to ``(group, time - offset)`` for each query, by binary search.

        Parameters
        ----------
        query_group, query_time : ndarray of int64
            The queries, any order; may be the table's own arrays.
        offsets : sequence of int
            Shifts subtracted from ``query_time``, one search each.

        Returns
        -------
        list of ndarray of int64
            Per offset and query (in query order), the number of table rows with
            ``(group, time) <= (query_group, query_time - offset)``; an index into the
            sorted table, since rows of lower groups are counted too.
        """
        if len(query_group) == 1 and query_group is not self._group:
            return [np.array([p], dtype=np.int64)
                    for p in self.one_position(int(query_group[0]), int(query_time[0]), offsets)]
        if query_group is self._group and query_time is self._time:
            query_by_time, query_order = self._by_time, self.order
        else:
            query_by_time, query_order = _group_time_order(query_group, query_time)
        # Where each query of the (group, time) order sits in the time order.
        time_to_group_order = np.empty(len(query_time), dtype=np.int64)
        time_to_group_order[query_by_time] = np.arange(len(query_time))
        time_to_group_order = time_to_group_order[query_order]

        grouped_queries = query_group[query_order]
        query_code = np.searchsorted(self._distinct_groups, grouped_queries).astype(np.int64)
        known = query_code < len(self._distinct_groups)
        known[known] = self._distinct_groups[query_code[known]] == grouped_queries[known]
        times_in_time_order = query_time[query_by_time]

        positions = []
        for offset in offsets:
            rank = np.searchsorted(self._distinct_times, times_in_time_order - offset, side="right")
            rank = rank[time_to_group_order]
            # A group absent from the table sorts just before the next group's first row.
            rank[~known] = 0
            found = np.searchsorted(self._key, query_code * self._stride + rank, side="right")
            in_query_order = np.empty(len(found), dtype=np.int64)
            in_query_order[query_order] = found
            positions.append(in_query_order)
        return positions


    def one_position(self, group: int, time: int, offsets: Sequence[int]) -> list[int]:
        """:meth:`positions` of a single query (a scoring request's), by scalar searches: the
        same counts without sorting the queries (0.4 ms of numpy calls on one-element arrays)."""
        groups = self._distinct_groups
        code = int(np.searchsorted(groups, group))
        known = code < len(groups) and int(groups[code]) == group
        base = code * int(self._stride)
        positions = []
        for offset in offsets:
            rank = int(np.searchsorted(self._distinct_times, time - offset, side="right")) if known else 0
            positions.append(int(np.searchsorted(self._key, base + rank, side="right")))
        return positions


def _run_starts(sorted_values: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
    """Flags the first element of each run of equal values."""
    starts = np.ones(len(sorted_values), dtype=bool)
    starts[1:] = sorted_values[1:] != sorted_values[:-1]
    return starts


def _prefix_sums(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Cumulative sums with a leading 0, so ``s[j] - s[i]`` sums ``values[i:j]``."""
    out = np.empty(len(values) + 1, dtype=values.dtype)
    out[0] = 0
    np.cumsum(values, out=out[1:])
    return out


# --------------------------------------------------------------------------- features


def calendar_features(
    time_ns: IntArray, *, config: FeatureConfig = FeatureConfig()
) -> dict[str, IntArray]:
    """Weekend and night flags.

    Parameters
    ----------
    time_ns : ndarray of int64
        Naive timestamps as nanoseconds since 1970-01-01 (``datetime64[ns]`` viewed as int64).
    config : FeatureConfig
        Supplies ``night_hour_max`` and ``weekend_first_weekday``.

    Returns
    -------
    dict of str to ndarray of int64
        ``TX_DURING_WEEKEND`` and ``TX_DURING_NIGHT``, 0/1.
    """
    time_ns = np.asarray(time_ns, dtype=np.int64)
    day, time_of_day = np.divmod(time_ns, NS_PER_DAY)
    weekday = (day + _EPOCH_WEEKDAY) % 7
    hour = time_of_day // _NS_PER_HOUR
    return {
        "TX_DURING_WEEKEND": (weekday >= config.weekend_first_weekday).astype(np.int64),
        "TX_DURING_NIGHT": (hour <= config.night_hour_max).astype(np.int64),
    }


def customer_window_features(
    customer_id: IntArray,
    time_ns: IntArray,
    amount: FloatArray,
    *,
    config: FeatureConfig = FeatureConfig(),
) -> dict[str, FloatArray]:
    """Per-card transaction count and mean amount over ``(t - w, t]``.

    A transaction's window holds the card's transactions timed after ``t - w`` and
    up to ``t``, itself included. Transactions of one card in the same instant see
    each other in row order: a later row's window includes the earlier row, not the
    reverse (the handbook's rolling windows behave alike for their own row order).

    Parameters
    ----------
    customer_id : ndarray of int64
        Card of each transaction.
    time_ns : ndarray of int64
        Timestamps in nanoseconds; rows in any order.
    amount : ndarray of float64
        Transaction amounts.
    config : FeatureConfig
        Supplies ``windows_days``.

    Returns
    -------
    dict of str to ndarray of float64
        ``CUSTOMER_ID_NB_TX_{w}DAY_WINDOW`` and ``CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW`` per
        window, aligned with the input rows.
    """
    customer_id = np.asarray(customer_id, dtype=np.int64)
    time_ns = np.asarray(time_ns, dtype=np.int64)
    amount = np.asarray(amount, dtype=np.float64)
    if not len(customer_id) == len(time_ns) == len(amount):
        raise ValueError("customer_window_features: input arrays differ in length")

    offsets = [w * NS_PER_DAY for w in config.windows_days]
    index = _GroupTimeIndex(customer_id, time_ns)
    order, starts = index.order, index.positions(customer_id, time_ns, offsets)
    sorted_card = customer_id[order]
    sorted_rows = np.arange(len(order), dtype=np.int64)
    # Running sums restart at each card, so their rounding error stays at the scale
    # of one card's spending rather than the whole table's.
    card_totals = pd.Series(amount[order]).groupby(sorted_card, sort=False).cumsum().to_numpy()
    card_first_row = np.maximum.accumulate(np.where(_run_starts(sorted_card), sorted_rows, 0))
    # Each row's own place in the sorted table is its window's last row.
    last = np.empty(len(order), dtype=np.int64)
    last[order] = sorted_rows
    first = card_first_row[last]

    out: dict[str, FloatArray] = {}
    for w, start in zip(config.windows_days, starts):
        count = (last + 1 - start).astype(np.float64)
        before_window = np.where(start > first, card_totals[np.maximum(start - 1, 0)], 0.0)
        out[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] = count
        out[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"] = (card_totals[last] - before_window) / count
    return out


def terminal_window_features(
    query_terminal_id: IntArray,
    query_time_ns: IntArray,
    history_terminal_id: IntArray,
    history_time_ns: IntArray,
    history_frauds: npt.ArrayLike,
    history_counts: npt.ArrayLike | None = None,
    *,
    config: FeatureConfig = FeatureConfig(),
) -> dict[str, FloatArray]:
    """Per-terminal transaction count and fraud share over ``(t - delay - w, t - delay]``.

    The history is a separate table so that it can come from elsewhere than the
    queried transactions, e.g. counts pooled over a consortium. A history row is
    either one transaction (``history_counts`` omitted, ``history_frauds`` its 0/1
    label) or an aggregate (``history_counts`` transactions of which
    ``history_frauds`` were fraud, stamped at ``history_time_ns``).

    Parameters
    ----------
    query_terminal_id, query_time_ns : ndarray of int64
        Terminal and timestamp (ns) of each transaction to describe; any order.
    history_terminal_id, history_time_ns : ndarray of int64
        Terminal and timestamp (ns) of each history row; any order.
    history_frauds : array_like
        Frauds per history row (the 0/1 label for single transactions).
    history_counts : array_like, optional
        Transactions per history row; 1 each when omitted. Counts need not be
        integers (e.g. noised aggregates).
    config : FeatureConfig
        Supplies ``windows_days`` and ``delay_days``.

    Returns
    -------
    dict of str to ndarray of float64
        ``TERMINAL_ID_NB_TX_{w}DAY_WINDOW`` and ``TERMINAL_ID_RISK_{w}DAY_WINDOW`` per window,
        aligned with the queries. Risk is 0 for an empty window.
    """
    windows = TerminalWindows(history_terminal_id, history_time_ns, history_frauds, history_counts)
    return windows.features(query_terminal_id, query_time_ns, config=config)


class TerminalWindows:
    """A terminal history prepared once (sorted, with running sums) for the windows of many queries.

    :func:`terminal_window_features` is this class built and asked once; the scoring service
    keeps one over the pooled consortium history, so each request costs binary searches only.

    Parameters
    ----------
    terminal_id, time_ns : ndarray of int64
        Terminal and timestamp (ns) of each history row; any order.
    frauds : array_like
        Frauds per history row (the 0/1 label for single transactions).
    counts : array_like, optional
        Transactions per history row; 1 each when omitted (need not be integers).
    """

    def __init__(self, terminal_id: npt.ArrayLike, time_ns: npt.ArrayLike, frauds: npt.ArrayLike,
                 counts: npt.ArrayLike | None = None) -> None:
        self._terminal = np.asarray(terminal_id, dtype=np.int64)
        self._time = np.asarray(time_ns, dtype=np.int64)
        # Float sums stay exact for integer counts below 2**53 and also admit noisy counts.
        fraud = np.asarray(frauds, dtype=np.float64)
        count = np.ones(len(self._time), dtype=np.float64) if counts is None else np.asarray(counts, dtype=np.float64)
        if not len(self._terminal) == len(self._time) == len(fraud) == len(count):
            raise ValueError("terminal_window_features: history arrays differ in length")
        self._index = _GroupTimeIndex(self._terminal, self._time)
        self._fraud_sums = _prefix_sums(fraud[self._index.order])
        self._count_sums = _prefix_sums(count[self._index.order])

    def __len__(self) -> int:
        return len(self._time)

    def features(self, query_terminal_id: npt.ArrayLike, query_time_ns: npt.ArrayLike, *,
                 config: FeatureConfig = FeatureConfig()) -> dict[str, FloatArray]:
        """Count and fraud share of each query's terminal over ``(t - delay - w, t - delay]``
        (see :func:`terminal_window_features`)."""
        query_terminal = np.asarray(query_terminal_id, dtype=np.int64)
        query_time = np.asarray(query_time_ns, dtype=np.int64)
        if len(query_terminal) != len(query_time):
            raise ValueError("terminal_window_features: query arrays differ in length")
        delay = config.delay_days * NS_PER_DAY
        offsets = [delay] + [delay + w * NS_PER_DAY for w in config.windows_days]
        if len(query_terminal) == 1:  # a scoring request's: in scalars (numpy's calls cost 50 us)
            return self._one(int(query_terminal[0]), int(query_time[0]), offsets, config)
        end, *starts = self._index.positions(query_terminal, query_time, offsets)
        out: dict[str, FloatArray] = {}
        for w, start in zip(config.windows_days, starts):
            n_tx = self._count_sums[end] - self._count_sums[start]
            n_fraud = self._fraud_sums[end] - self._fraud_sums[start]
            out[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = n_tx
            out[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = window_risk(n_fraud, n_tx)
        return out

    def _one(self, terminal: int, time: int, offsets: Sequence[int], config: FeatureConfig) -> dict[str, FloatArray]:
        """:meth:`features` of a single query: the same sums and the same division, in floats."""
        end, *starts = self._index.one_position(terminal, time, offsets)
        counts, frauds = self._count_sums, self._fraud_sums
        out: dict[str, FloatArray] = {}
        for w, start in zip(config.windows_days, starts):
            n_tx = float(counts[end] - counts[start])
            n_fraud = float(frauds[end] - frauds[start])
            out[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = np.array([n_tx])
            out[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = np.array([n_fraud / n_tx if n_tx > 0 else 0.0])
        return out


def window_risk(n_fraud: npt.ArrayLike, n_tx: npt.ArrayLike) -> FloatArray:
    """Fraud share ``n_fraud / n_tx``, 0 where the window holds no transaction.

    Parameters
    ----------
    n_fraud, n_tx : array_like
        Frauds and transactions per window.

    Returns
    -------
    ndarray of float64
    """
    n_fraud = np.asarray(n_fraud, dtype=np.float64)
    n_tx = np.asarray(n_tx, dtype=np.float64)
    risk = np.zeros(np.broadcast(n_fraud, n_tx).shape, dtype=np.float64)
    np.divide(n_fraud, n_tx, out=risk, where=n_tx > 0)
    return risk


# --------------------------------------------------------------------------- frame API


def compute_features(
    tx: pd.DataFrame,
    *,
    start: DateLike | None = None,
    end: DateLike | None = None,
    config: FeatureConfig = FeatureConfig(),
) -> pd.DataFrame:
    """Add the handbook's features to the transactions of a date range.

    Parameters
    ----------
    tx : pandas.DataFrame
        Transactions with the canonical columns ``transaction_id``, ``timestamp``
        (naive datetime64), ``customer_id``, ``terminal_id``, ``amount`` and ``label``
        (0/1; terminal risk needs it). Other columns are carried through. Rows before
        ``start`` serve as history for the windows; any row order.
    start, end : date-like, optional
        First and last day to describe, both inclusive (``end`` covers its whole day);
        a time of day is ignored. ``None`` leaves that side unbounded.
    config : FeatureConfig
        Feature constants.

    Returns
    -------
    pandas.DataFrame
        The input rows with a timestamp in ``[start, end]``, every input column kept,
        plus :func:`feature_columns` (``TX_DURING_*`` int64, the others float64;
        input columns of the same names are replaced). Rows are ordered by
        ``timestamp`` then ``transaction_id``, with a fresh ``RangeIndex``.

    Raises
    ------
    ValueError
        If a required column is missing or holds invalid values (nulls, a non-datetime
        or time-zone aware ``timestamp``, labels other than 0/1, duplicate
        ``transaction_id``), or if ``start`` is after ``end``.

    Notes
    -----
    Transactions of one card in the same instant see each other in
    ``transaction_id`` order: the later id's customer windows include the earlier one,
    not the reverse.
    """
    _check_transactions(tx)
    first_day, after_last_day = _day_bounds(start, end)

    time_ns = timestamps_ns(tx[TIMESTAMP])
    keep = np.ones(len(tx), dtype=bool)
    if first_day is not None:
        # Rows this far back fall outside every window of every described row.
        keep &= time_ns > first_day - config.lookback_days * NS_PER_DAY
    if after_last_day is not None:
        keep &= time_ns < after_last_day
    rows = np.flatnonzero(keep)
    txn_id = tx[TRANSACTION_ID].to_numpy(dtype=np.int64)[rows]
    rows = rows[np.lexsort((txn_id, time_ns[rows]))]

    time = time_ns[rows]
    customer = tx[CUSTOMER_ID].to_numpy(dtype=np.int64)[rows]
    terminal = tx[TERMINAL_ID].to_numpy(dtype=np.int64)[rows]
    amount = tx[AMOUNT].to_numpy(dtype=np.float64)[rows]
    label = tx[LABEL].to_numpy(dtype=np.int64)[rows]

    features: dict[str, npt.NDArray[Any]] = {}
    features.update(calendar_features(time, config=config))
    features.update(customer_window_features(customer, time, amount, config=config))
    features.update(terminal_window_features(terminal, time, terminal, time, label, config=config))

    described = slice(None) if first_day is None else slice(int(np.searchsorted(time, first_day)), None)
    out = tx.iloc[rows[described]].reset_index(drop=True)
    new_columns = pd.DataFrame(
        {name: features[name][described] for name in feature_columns(config)}, index=out.index
    )
    out = out.drop(columns=[c for c in new_columns.columns if c in out.columns])
    return pd.concat([out, new_columns], axis=1)


def _check_transactions(tx: pd.DataFrame) -> None:
    if not isinstance(tx, pd.DataFrame):
        raise ValueError(f"compute_features: expected a pandas DataFrame, got {type(tx).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in tx.columns]
    if missing:
        raise ValueError(
            f"compute_features: missing required column(s) {missing}; "
            f"expected canonical columns {list(REQUIRED_COLUMNS)} (and {LABEL!r})"
        )
    if LABEL not in tx.columns:
        raise ValueError(f"compute_features: column {LABEL!r} (0/1 fraud label) is needed for terminal risk")
    for column in (*REQUIRED_COLUMNS, LABEL):
        if tx[column].isna().any():
            raise ValueError(f"compute_features: column {column!r} has missing values")
    if not pd.api.types.is_datetime64_dtype(tx[TIMESTAMP].dtype):
        raise ValueError(
            f"compute_features: column {TIMESTAMP!r} must be naive datetime64, got {tx[TIMESTAMP].dtype}"
        )
    for column in (TRANSACTION_ID, CUSTOMER_ID, TERMINAL_ID):
        if not pd.api.types.is_integer_dtype(tx[column].dtype):
            raise ValueError(f"compute_features: column {column!r} must be integer, got {tx[column].dtype}")
    if not pd.api.types.is_numeric_dtype(tx[AMOUNT].dtype) or pd.api.types.is_bool_dtype(tx[AMOUNT].dtype):
        raise ValueError(f"compute_features: column {AMOUNT!r} must be numeric, got {tx[AMOUNT].dtype}")
    if not tx[LABEL].isin((0, 1)).all():
        raise ValueError(f"compute_features: column {LABEL!r} must hold only 0 and 1")
    if tx[TRANSACTION_ID].duplicated().any():
        raise ValueError(f"compute_features: column {TRANSACTION_ID!r} has duplicate values")


def timestamps_ns(timestamps: pd.Series) -> IntArray:
    """Naive timestamps as int64 nanoseconds since 1970-01-01."""
    return timestamps.to_numpy(dtype="datetime64[ns]").view(np.int64)


def _day_bounds(start: DateLike | None, end: DateLike | None) -> tuple[int | None, int | None]:
    """Nanosecond bounds ``[first_day, after_last_day)`` of the inclusive day range."""
    first_day = None if start is None else _midnight(start, "start")
    after_last_day = None if end is None else _midnight(end, "end") + NS_PER_DAY
    if first_day is not None and after_last_day is not None and first_day >= after_last_day:
        raise ValueError(f"compute_features: start {start!r} is after end {end!r}")
    return first_day, after_last_day


def _midnight(value: DateLike, name: str) -> int:
    try:
        day = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"compute_features: {name} {value!r} is not a date") from exc
    if day is pd.NaT:
        raise ValueError(f"compute_features: {name} must be a date, got NaT")
    if day.tzinfo is not None:
        raise ValueError(f"compute_features: {name} must be naive like the timestamps, got {day}")
    return int(day.normalize().as_unit("ns").value)
