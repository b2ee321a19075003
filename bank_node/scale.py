"""The bank node's work on Dask, for transaction histories larger than one machine's memory.

The pandas path (:func:`bank_node.features.compute_features`, :func:`~bank_node.federated.party.make_level_payload`)
stays the default for data that fits. Here the same computations run on a ``dask.dataframe`` over
partitioned Parquet, with results equal to the pandas path's:

- **features**: a card's windows need only that card's history, a terminal's only that terminal's;
  the rows are shuffled by card, then by terminal, and each partition (whole cards, whole
  terminals) goes through the very functions of the pandas path. The two halves are joined on
  ``transaction_id``: every value is the one the pandas path computes, to the bit.
- **histograms**: each partition bins its rows with the consortium's cuts, computes gradients and
  adds its histograms; the partial histograms are added up. Float sums in another order may differ
  in the last bit, so the payload a bank would send (the histograms in fixed point, as the secure
  sum encodes them) is the same.

A cluster is found by :func:`dask_client`: ``scheduler`` names an existing one (``tcp://host:8786``),
otherwise a local cluster of worker processes is started for the command's duration.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from bank_node.features import (
    AMOUNT,
    CUSTOMER_ID,
    FEATURE_COLUMNS,
    LABEL,
    NS_PER_DAY,
    TERMINAL_ID,
    TIMESTAMP,
    TRANSACTION_ID,
    FeatureConfig,
    _day_bounds,
    calendar_features,
    customer_window_features,
    feature_columns,
    terminal_window_features,
    timestamps_ns,
)

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client

__all__ = ["dask_client", "dask_features", "dask_level_histograms", "dask_tree", "read_transactions", "source_names"]

FloatArray = npt.NDArray[np.float64]
#: The model inputs as a featured frame names them (:func:`bank_node.features.model_matrix`).
MODEL_COLUMNS: tuple[str, ...] = (AMOUNT, *FEATURE_COLUMNS)


@contextmanager
def dask_client(scheduler: str | None = None, *, n_workers: int = 2, threads_per_worker: int = 1,
                memory_limit: str = "auto") -> Iterator[Client]:
    """A Dask client of the cluster at ``scheduler``, or of a local cluster started here."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    with LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                      memory_limit=memory_limit, dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


CANONICAL: tuple[str, ...] = (TRANSACTION_ID, TIMESTAMP, CUSTOMER_ID, TERMINAL_ID, AMOUNT, LABEL)


def _canonical_part(part: pd.DataFrame, resolved: dict[str, str]) -> pd.DataFrame:
    """One partition validated and renamed as :func:`schemas.transaction.to_canonical` does."""
    from schemas.transaction import to_canonical

    return to_canonical(part, resolved, require_label=True)[list(CANONICAL)]


def source_names(path: str, mapping: dict[str, str] | None = None, *,
                 columns: list[str] | None = None) -> dict[str, str]:
    """Which column of the Parquet data at ``path`` holds each canonical field (an explicit
    ``mapping`` first, then the canonical names, then the handbook's).

    Raises
    ------
    FedfraudInputError
        A canonical field maps to no column.
    """
    import dask.dataframe as dd

    from schemas.errors import FedfraudInputError
    from schemas.transaction import resolve_columns

    present = list(dd.read_parquet(path).columns) if columns is None else columns
    resolved = resolve_columns(present, mapping)
    missing = [field for field in CANONICAL if field not in resolved or resolved[field] not in present]
    if missing:
        raise FedfraudInputError(f"{path} has no column for {', '.join(missing)} (name them with --columns)",
                                 {field: ["no such column"] for field in missing})
    return {field: resolved[field] for field in CANONICAL}


def read_transactions(path: str, mapping: dict[str, str] | None = None) -> dd.DataFrame:
    """Labelled transactions from a Parquet file or a folder of Parquet files, as a Dask frame of
    the canonical columns; each partition is validated as the pandas path validates a file
    (a bad value fails the computation with the same message, naming the column and rows).

    Raises
    ------
    FedfraudInputError
        A canonical field maps to no column.
    """
    import dask.dataframe as dd

    frame = dd.read_parquet(path)
    resolved = source_names(path, mapping, columns=list(frame.columns))
    meta = pd.DataFrame({TRANSACTION_ID: pd.Series(dtype="int64"), TIMESTAMP: pd.Series(dtype="datetime64[ns]"),
                         CUSTOMER_ID: pd.Series(dtype="int64"), TERMINAL_ID: pd.Series(dtype="int64"),
                         AMOUNT: pd.Series(dtype="float64"), LABEL: pd.Series(dtype="int64")})
    return frame[[resolved[field] for field in CANONICAL]].map_partitions(_canonical_part, resolved, meta=meta)


# ------------------------------------------------------------------------------------ features


def _card_part(part: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """Calendar and card features of a partition holding whole cards (rows in the pandas path's order)."""
    part = part.sort_values([TIMESTAMP, TRANSACTION_ID], kind="stable")
    time = timestamps_ns(part[TIMESTAMP])
    values = {**calendar_features(time, config=config),
              **customer_window_features(part[CUSTOMER_ID].to_numpy(dtype=np.int64), time,
                                         part[AMOUNT].to_numpy(dtype=np.float64), config=config)}
    return part.assign(**values).reset_index(drop=True)


def _terminal_part(part: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """Terminal features of a partition holding whole terminals, keyed by transaction id."""
    terminal = part[TERMINAL_ID].to_numpy(dtype=np.int64)
    time = timestamps_ns(part[TIMESTAMP])
    values = terminal_window_features(terminal, time, terminal, time, part[LABEL].to_numpy(dtype=np.int64),
                                      config=config)
    return pd.DataFrame({TRANSACTION_ID: part[TRANSACTION_ID].to_numpy(), **values})


def dask_features(transactions: dd.DataFrame, *, start: Any = None, end: Any = None,
                  config: FeatureConfig = FeatureConfig()) -> dd.DataFrame:
    """:func:`~bank_node.features.compute_features` on a Dask frame (rows in no particular order).

    Rows before ``start`` serve as history; the result holds the rows of ``[start, end]``.
    """
    first_day, after_last_day = _day_bounds(start, end)
    frame = transactions
    if first_day is not None:
        frame = frame[frame[TIMESTAMP] > pd.Timestamp(first_day - config.lookback_days * NS_PER_DAY)]
    if after_last_day is not None:
        frame = frame[frame[TIMESTAMP] < pd.Timestamp(after_last_day)]
    names = feature_columns(config)
    card_columns = [c for c in names if not c.startswith("TERMINAL_ID_")]
    terminal_columns = [c for c in names if c.startswith("TERMINAL_ID_")]

    card_meta = frame._meta.assign(**{c: pd.Series(dtype="int64" if c.startswith("TX_DURING") else "float64")
                                      for c in card_columns})
    by_card = frame.shuffle(CUSTOMER_ID).map_partitions(_card_part, config, meta=card_meta)
    terminal_meta = pd.DataFrame({TRANSACTION_ID: pd.Series(dtype=frame[TRANSACTION_ID].dtype),
                                  **{c: pd.Series(dtype="float64") for c in terminal_columns}})
    by_terminal = frame.shuffle(TERMINAL_ID).map_partitions(_terminal_part, config, meta=terminal_meta)
    joined = by_card.merge(by_terminal, on=TRANSACTION_ID, how="inner")
    if first_day is not None:
        joined = joined[joined[TIMESTAMP] >= pd.Timestamp(first_day)]
    return joined[[*frame.columns, *names]]


# ------------------------------------------------------------------------------------ histograms


def _partition_histograms(part: pd.DataFrame, columns: Sequence[str], cuts: Sequence[npt.NDArray[np.float32]],
                          margin: float, params: Any, request: Any) -> FloatArray:
    """One partition's histograms for a tree level: its rows binned, their gradients, added up."""
    from bank_node.federated.binning import bin_index
    from bank_node.federated.histogram import build_histograms
    from bank_node.federated.party import tree_gradients

    X = part[list(columns)].to_numpy(dtype=np.float64)
    labels = part[LABEL].to_numpy(dtype=np.float32)
    bins = bin_index(X, list(cuts))
    grad, hess = tree_gradients(np.full(len(labels), margin, dtype=np.float32), labels, params, tree_index=0)
    positions = (part["_position"].to_numpy(dtype=np.int32) if "_position" in part.columns
                 else np.zeros(len(labels), dtype=np.int32))
    hist = build_histograms(bins, grad, hess, positions, request.nodes, request.n_bins, features=request.features)
    return np.asarray(hist, dtype=np.float64)


def dask_level_histograms(featured: dd.DataFrame, cuts: Sequence[npt.NDArray[np.float32]], request: Any,
                          params: Any, margin: float, columns: Sequence[str] = MODEL_COLUMNS) -> FloatArray:
    """A tree level's histograms over every row of ``featured`` (the first tree: every row's
    margin is ``margin``; rows sit in node 0 unless a ``_position`` column says otherwise).

    Returns what :func:`~bank_node.federated.histogram.build_histograms` gives on all rows at
    once, up to the order of float additions: each partition's histograms are computed where the
    partition is, and only those (nodes x features x bins x 2 values) travel."""
    import dask

    if getattr(params, "subsample", 1.0) < 1.0:
        raise ValueError("row subsampling draws rows by their position in the bank's frame: not on Dask")
    partials = [dask.delayed(_partition_histograms)(part, tuple(columns), tuple(cuts), margin, params, request)
                for part in featured.to_delayed()]
    total: FloatArray | None = None
    for partial in dask.compute(*partials):
        total = partial if total is None else total + partial
    if total is None:
        raise ValueError("no partition to build histograms from")
    return total


def _advanced(part: pd.DataFrame, columns: Sequence[str], cuts: Sequence[npt.NDArray[np.float32]],
              splits: Sequence[Any]) -> pd.DataFrame:
    """A partition with each row's node moved by a level's splits."""
    from bank_node.federated.binning import bin_index
    from bank_node.federated.party import advance_positions

    bins = bin_index(part[list(columns)].to_numpy(dtype=np.float64), list(cuts))
    positions = (part["_position"].to_numpy(dtype=np.int32) if "_position" in part.columns
                 else np.zeros(len(part), dtype=np.int32))
    return part.assign(_position=advance_positions(bins, positions, splits))


def dask_tree(featured: dd.DataFrame, cuts: Sequence[npt.NDArray[np.float32]], params: Any,
              columns: Sequence[str] = MODEL_COLUMNS) -> Any:
    """Grow the first tree of ``params`` on one bank's rows on Dask, level by level: each level's
    histograms are added up over the partitions, the splits chosen, and every row moved to its
    child where it lies (as the federated protocol does with the consortium's summed histograms
    in place of this bank's own).

    Returns the grown :class:`~bank_node.federated.tree.Tree`."""
    from bank_node.federated.grower import TreeGrower
    from bank_node.federated.histogram import flatten_histograms
    from bank_node.federated.objective import base_margin

    grower = TreeGrower(params=params, bins_per_feature=np.array([len(c) + 1 for c in cuts], dtype=np.int64),
                        features=np.arange(len(columns)), cuts=list(cuts))
    margin = float(base_margin(params.base_score))
    frame = featured
    while (request := grower.request) is not None:
        hist = dask_level_histograms(frame, cuts, request, params, margin, columns)
        result = grower.apply_level_sum(flatten_histograms(hist, request.bins_per_feature))
        if grower.request is not None:
            meta = frame._meta.assign(_position=pd.Series(dtype="int32"))
            frame = frame.map_partitions(_advanced, tuple(columns), tuple(cuts), tuple(result.splits),
                                         meta=meta).persist()
    return grower.tree()
