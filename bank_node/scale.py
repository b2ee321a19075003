"""The bank node's work on Dask, for transaction histories larger than one machine's memory.

The pandas path (:func:`bank_node.features.compute_features`, :class:`bank_node.agent.training.TrainingSet`)
stays the default for data that fits. Here the same computations run on a ``dask.dataframe`` over
partitioned Parquet, with results equal to the pandas path's:

- **features**: a card's windows need only that card's history, a terminal's only that terminal's;
  the rows are shuffled by card, then by terminal, and each partition (whole cards, whole
  terminals) goes through the very functions of the pandas path. The two halves are joined on
  ``transaction_id``: every value is the one the pandas path computes, to the bit.
- **training** (:class:`DaskTrainingSet`): the featured rows stay on the workers, one pandas
  partition each, and the federated algorithms (:mod:`bank_node.federated.parts`) run there: each
  partition keeps its own state (bins, margins, node of each row, standardised features) and
  sends back only its contribution to a sum (histograms, derivatives, score counts), added up in
  partition order. Float sums in another order may differ in the last bit, below the fixed point
  a secure sum carries: the bank proposes the model the pandas path trains, to the byte.

A cluster is found by :func:`dask_client`: ``scheduler`` names an existing one (``tcp://host:8786``),
otherwise a local cluster of worker processes is started for the command's duration.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd

from bank_node.features import (
    AMOUNT,
    CUSTOMER_ID,
    LABEL,
    MODEL_INPUTS,
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
    from distributed import Client, Future

__all__ = ["ClusterError", "DaskParts", "DaskTrainingSet", "cluster_errors", "dask_client", "dask_features", "dask_tree",
           "read_transactions", "refuse_duplicate_ids", "source_names"]

log = logging.getLogger(__name__)
T = TypeVar("T")

FloatArray = npt.NDArray[np.float64]


class ClusterError(ValueError):
    """The Dask cluster failed a computation (a worker lost, the scheduler gone): the bank's data
    is not at fault, and the run goes on without this bank (a ValueError, as the agent reads one)."""


@contextmanager
def cluster_errors(what: str) -> Iterator[None]:
    """Failures of the cluster itself, while doing ``what``, as :class:`ClusterError`."""
    from concurrent.futures import CancelledError

    from distributed.scheduler import KilledWorker

    try:
        yield
    except (OSError, TimeoutError, CancelledError, KilledWorker) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ClusterError(f"the Dask cluster failed while {what}: {type(exc).__name__}"
                           + (f": {detail[:300]}" if detail else "")) from None


@contextmanager
def dask_client(scheduler: str | None = None, *, n_workers: int = 2, threads_per_worker: int = 1,
                memory_limit: str = "auto") -> Iterator[Client]:
    """A Dask client of the cluster at ``scheduler``, or of a local cluster started here.

    Raises
    ------
    FedfraudInputError
        No Dask scheduler answers at ``scheduler``.
    """
    from distributed import Client, LocalCluster

    from schemas.errors import FedfraudInputError

    # Each shuffle's start and end is a WARNING of the scheduler's, two per shuffle of every run.
    logging.getLogger("distributed.shuffle").setLevel(logging.ERROR)
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise FedfraudInputError(f"--dask-scheduler {scheduler}: no Dask scheduler answers there "
                                     f"({str(exc).splitlines()[0][:200]})", {"dask_scheduler": ["unreachable"]}) from None
        with client:
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


def _read_parquet(path: str) -> dd.DataFrame:
    """The Parquet data at ``path`` as a Dask frame.

    Raises
    ------
    FedfraudInputError
        Nothing there, no Parquet file in the folder, or a file that is not Parquet.
    """
    import dask.dataframe as dd
    import pyarrow as pa

    from schemas.errors import FedfraudInputError

    where = Path(path)
    if not where.exists():
        raise FedfraudInputError(f"{path}: no such file or folder", {"data": ["does not exist"]})
    if where.is_dir() and not any(where.rglob("*.parquet")):
        raise FedfraudInputError(f"{path} holds no Parquet file (*.parquet)", {"data": ["no Parquet file"]})
    try:
        return dd.read_parquet(path)
    except (ValueError, OSError, pa.ArrowException) as exc:
        cause = exc.__cause__ or exc  # Dask wraps the reader's own message
        raise FedfraudInputError(f"{path} is not readable as Parquet: {str(cause).splitlines()[0][:300]}",
                                 {"data": ["not Parquet"]}) from None


def source_names(path: str, mapping: dict[str, str] | None = None, *,
                 columns: list[str] | None = None) -> dict[str, str]:
    """Which column of the Parquet data at ``path`` holds each canonical field (an explicit
    ``mapping`` first, then the canonical names, then the handbook's).

    Raises
    ------
    FedfraudInputError
        A canonical field maps to no column.
    """
    from schemas.errors import FedfraudInputError
    from schemas.transaction import resolve_columns

    present = list(_read_parquet(path).columns) if columns is None else columns
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
    frame = _read_parquet(path)
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


def refuse_duplicate_ids(transactions: dd.DataFrame) -> None:
    """Refuse a transaction id held twice anywhere in the data, as the pandas path refuses it in a
    file (each partition is checked alone as it is read; an id repeated in two files, an export of
    one day written twice, would otherwise be joined with itself and counted many times).

    Raises
    ------
    FedfraudInputError
        Naming up to five of the repeated ids.
    """
    from schemas.errors import FedfraudInputError

    with cluster_errors("checking the transaction ids"):
        counts = transactions[TRANSACTION_ID].value_counts(split_out=max(1, transactions.npartitions))
        repeated = counts[counts > 1].compute()
    if len(repeated):
        ids = ", ".join(str(i) for i in sorted(repeated.index.tolist())[:5])
        raise FedfraudInputError(f"{len(repeated)} transaction id(s) appear more than once across the files, e.g. {ids}",
                                 {TRANSACTION_ID: ["duplicate ids"]})


def dask_features(transactions: dd.DataFrame, *, start: Any = None, end: Any = None,
                  config: FeatureConfig = FeatureConfig(), ids_checked: bool = False) -> dd.DataFrame:
    """:func:`~bank_node.features.compute_features` on a Dask frame (rows in no particular order).

    Rows before ``start`` serve as history; the result holds the rows of ``[start, end]``. The
    rows read are first checked for a repeated transaction id (:func:`refuse_duplicate_ids`),
    unless ``ids_checked``: the caller checked every row already.
    """
    first_day, after_last_day = _day_bounds(start, end)
    frame = transactions
    if first_day is not None:
        frame = frame[frame[TIMESTAMP] > pd.Timestamp(first_day - config.lookback_days * NS_PER_DAY)]
    if after_last_day is not None:
        frame = frame[frame[TIMESTAMP] < pd.Timestamp(after_last_day)]
    if not ids_checked:
        refuse_duplicate_ids(frame)
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


# ------------------------------------------------------------------------------------ one tree


def dask_tree(featured: dd.DataFrame, cuts: Sequence[npt.NDArray[np.float32]], params: Any) -> Any:
    """Grow the first tree of ``params`` on one bank's featured rows on Dask (the cluster of the
    current client), level by level, as the federated protocol does with this bank's own
    histograms in place of the consortium's sums: each level's histograms are added up over the
    partitions, the splits chosen, and every row moved to its child where it lies.

    Returns the grown :class:`~bank_node.federated.tree.Tree`."""
    from distributed import default_client

    from bank_node.federated.gbdt import GBDTPart
    from bank_node.federated.grower import TreeGrower
    from bank_node.federated.objective import base_margin

    grower = TreeGrower(params=params, bins_per_feature=np.array([len(c) + 1 for c in cuts], dtype=np.int64),
                        features=np.arange(len(MODEL_INPUTS)), cuts=list(cuts))
    rows = (DaskTrainingSet.of(default_client(), featured).parts(GBDTPart.of)
            .apply(functools.partial(GBDTPart.binned, cuts=tuple(cuts), margin=float(base_margin(params.base_score))))
            .apply(functools.partial(GBDTPart.tree_started, params=params, tree_index=0, party_index=0, clip=None)))
    while (request := grower.request) is not None:
        result = grower.apply_level_sum(rows.total(functools.partial(GBDTPart.level_payload, request=request)))
        rows = rows.apply(functools.partial(GBDTPart.advanced, splits=tuple(result.splits)))
    return grower.tree()


# ------------------------------------------------------------------------------------ training


class DaskParts(Generic[T]):
    """A federated algorithm's parts (:mod:`bank_node.federated.parts`), one per partition, each
    kept on the worker that holds it: a step runs there, and only contributions travel back."""

    def __init__(self, client: Client, futures: Sequence[Future]) -> None:
        self.client = client
        self.futures = list(futures)

    @property
    def whole(self) -> bool:
        return False

    def apply(self, step: Callable[[T], T]) -> DaskParts[T]:
        with cluster_errors("training"):
            return DaskParts(self.client, self.client.map(step, self.futures, pure=False))

    def total(self, value: Callable[[T], npt.ArrayLike]) -> FloatArray:
        with cluster_errors("training"):
            partials = self.client.gather(self.client.map(value, self.futures, pure=False))
        total: FloatArray | None = None
        for partial in partials:  # in partition order, whichever worker answered first
            part = np.asarray(partial, dtype=np.float64)
            total = part if total is None else total + part
        if total is None:
            raise ValueError("no partition to add up")
        return total


def _part_of(frame: pd.DataFrame, part: Callable[[FloatArray, FloatArray], T]) -> T:
    from bank_node.features import model_matrix

    return part(model_matrix(frame), frame[LABEL].to_numpy(dtype=np.float64))


def _label_counts(frame: pd.DataFrame) -> FloatArray:
    return np.array([len(frame), float(frame[LABEL].sum())], dtype=np.float64)


def _frame_histogram(frame: pd.DataFrame, score: Callable[[Any], Any], n_bins: int) -> FloatArray:
    from bank_node.features import model_matrix
    from bank_node.federated.evaluation import score_histogram

    return score_histogram(score(model_matrix(frame)), frame[LABEL].to_numpy(), n_bins=n_bins)


_COVERED = "_consortium_covered"


def _consortium_part(frame: pd.DataFrame, history: Any, secret: bytes) -> pd.DataFrame:
    from bank_node.federated.terminal_stats import with_consortium_terminal_features

    shared, covered = with_consortium_terminal_features(frame.drop(columns=[_COVERED], errors="ignore"), history,
                                                        secret=secret)
    return shared.assign(**{_COVERED: covered})


def _covered_count(frame: pd.DataFrame) -> FloatArray:
    return np.array([float(frame[_COVERED].sum())], dtype=np.float64)


@dataclass(frozen=True)
class DaskTrainingSet:
    """A bank's featured rows of a period, as pandas partitions held by a Dask cluster's workers
    (:class:`bank_node.agent.training.Rows`): the federated algorithms run where the rows are.

    Build it with :meth:`of`; partitions without rows are left out.
    """

    client: Client
    frames: tuple[Future, ...]
    n_rows: int
    n_frauds: int

    @classmethod
    def of(cls, client: Client, featured: dd.DataFrame) -> DaskTrainingSet:
        """The rows of ``featured``, computed once and kept on the workers."""
        with cluster_errors("featuring the rows"):
            frames = client.compute(featured.to_delayed())
            counts = client.gather(client.map(_label_counts, frames, pure=False))
        kept = tuple(frame for frame, (n, _) in zip(frames, counts) if n > 0)
        n_rows, n_frauds = (int(v) for v in np.sum(counts, axis=0)) if counts else (0, 0)
        return cls(client=client, frames=kept, n_rows=n_rows, n_frauds=n_frauds)

    @property
    def whole(self) -> bool:
        return False

    @property
    def held(self) -> bool:
        """Whether every partition is still held by the cluster (not lost with a worker or a
        restarted scheduler)."""
        return all(frame.status == "finished" for frame in self.frames)

    def parts(self, part: Callable[[FloatArray, FloatArray], T]) -> DaskParts[T]:
        """Each partition's model inputs and labels made into ``part(X, y)`` where it lies."""
        with cluster_errors("training"):
            return DaskParts(self.client, self.client.map(_part_of, self.frames, part=part, pure=False))

    def score_histogram(self, score: Callable[[Any], Any], n_bins: int) -> FloatArray:
        """The rows' score histogram under a model's ``score``, counted partition by partition."""
        return DaskParts(self.client, self.frames).total(functools.partial(_frame_histogram, score=score,
                                                                           n_bins=n_bins))

    def with_consortium_terminals(self, history: Any, *, secret: bytes) -> DaskTrainingSet:
        """The same rows with the consortium's terminal features where the terminal passed the
        threshold (:func:`~bank_node.federated.terminal_stats.with_consortium_terminal_features`
        on each partition; the history is sent to each worker once)."""
        with cluster_errors("computing consortium terminal features"):
            shared = self.client.scatter(history, broadcast=True, hash=False)
            frames = tuple(self.client.map(_consortium_part, self.frames, history=shared, secret=secret, pure=False))
        covered = int(DaskParts(self.client, frames).total(_covered_count)[0]) if frames else 0
        log.info("consortium terminal features: %d of %d rows covered (threshold %d banks)", covered, self.n_rows,
                 history.threshold)
        return replace(self, frames=frames)
