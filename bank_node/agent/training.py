"""What a bank trains on, and how a run's model family and params become its algorithm.

The training rows follow the simulator's recipe (:func:`fedfraud.simulation.prepare_banks`):
features computed from the bank's own transactions only, with the history the windows need
before the training period, then the rows inside the period. The finished model is serialized
canonically (sorted keys, no spaces) so that every bank proposes byte-identical files, hence the
same digest, which is what lets the consortium publish it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd

from bank_node.evaluation import Windows, in_train_period
from bank_node.features import (
    LABEL,
    MODEL_INPUTS,
    TERMINAL_ID,
    TIMESTAMP,
    TRANSACTION_ID,
    FeatureConfig,
    compute_features,
    model_matrix,
)
from bank_node.federated.ensemble import GBDTModel
from bank_node.federated.feature_scales import scales_for
from bank_node.federated.evaluation import score_histogram
from bank_node.federated.gbdt import GBDTPart, federated_gbdt_over, refuse_subsample_in_parts
from bank_node.federated.logreg import LogRegModel, LogRegParams, LogRegPart, federated_logreg_over
from bank_node.federated.params import GBDTParams
from bank_node.federated.parts import Local, Parts
from bank_node.federated.privacy import PrivateContribution
from bank_node.federated.rounds import Algorithm
from bank_node.federated.terminal_stats import ConsortiumHistory, with_consortium_terminal_features
from bank_node.federated.xgb_export import to_xgboost_json
from schemas.errors import FedfraudInputError
from schemas.privacy import run_privacy
from schemas.run import DEFAULT_TERMINAL_THRESHOLD, MODEL_FAMILIES, RunWindow, split_run_params

__all__ = [
    "FEATURES_ATTRIBUTE",
    "MODEL_FAMILIES",
    "FeatureSettings",
    "PreparedRun",
    "TrainingSet",
    "DaskSource",
    "Rows",
    "StoreSource",
    "TransactionSource",
    "canonical_json",
    "feature_settings",
    "gbdt_params",
    "logreg_params",
    "prepare_run",
    "nothing_to_train",
    "training_period",
    "training_rows",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class TrainingSet:
    """A bank's training rows: model inputs and labels, and the featured rows they came from
    (what consortium terminal features replace columns of)."""

    X: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]
    featured: pd.DataFrame | None = None

    @property
    def n_rows(self) -> int:
        return len(self.y)

    @property
    def whole(self) -> bool:
        """Every row in this process, in order (row subsampling draws by position)."""
        return True

    @property
    def n_frauds(self) -> int:
        """Fraud rows."""
        return int(self.y.sum())

    def parts(self, part: Callable[[npt.NDArray[np.float64], npt.NDArray[np.float64]], T]) -> Local[T]:
        """The rows as one part of an algorithm's state (:mod:`bank_node.federated.parts`)."""
        return Local(part(self.X, self.y))

    def score_histogram(self, score: Callable[[Any], Any], n_bins: int) -> npt.NDArray[np.float64]:
        """The rows' :func:`~bank_node.federated.evaluation.score_histogram` under a model's ``score``."""
        return score_histogram(score(self.X), self.y, n_bins=n_bins)

    def with_consortium_terminals(self, history: ConsortiumHistory, *, secret: bytes) -> TrainingSet:
        """The same rows with the terminal features of terminals above the history's threshold
        computed over the consortium's events.

        Raises
        ------
        ValueError
            The rows' featured frame is unknown, or the history lacks days their windows reach.
        """
        if self.featured is None:
            raise ValueError("these training rows keep no featured frame to put consortium features in")
        shared, covered = with_consortium_terminal_features(self.featured, history, secret=secret)
        log.info("consortium terminal features: %d of %d rows covered (threshold %d banks)",
                 int(covered.sum()), len(covered), history.threshold)
        return TrainingSet(X=model_matrix(shared), y=self.y, featured=shared)


class Rows(Protocol):
    """A bank's training or validation rows, wherever they are held: a :class:`TrainingSet` in
    this process, or a :class:`bank_node.scale.DaskTrainingSet` on a Dask cluster."""

    @property
    def n_rows(self) -> int: ...

    @property
    def whole(self) -> bool: ...

    @property
    def n_frauds(self) -> int: ...

    def parts(self, part: Callable[[npt.NDArray[np.float64], npt.NDArray[np.float64]], T]) -> Parts[T]: ...

    def score_histogram(self, score: Callable[[Any], Any], n_bins: int) -> npt.NDArray[np.float64]: ...

    def with_consortium_terminals(self, history: ConsortiumHistory, *, secret: bytes) -> Rows: ...


def nothing_to_train(train_start: date, train_days: int) -> FedfraudInputError:
    """The refusal of a training period that holds no transaction."""
    return FedfraudInputError(f"no transactions from {train_start} for {train_days} days: nothing to train on",
                              {"train_start": ["the training period holds no transaction"]})


def training_rows(transactions: pd.DataFrame, *, train_start: date, train_days: int) -> TrainingSet:
    """The bank's training rows of a period, features computed from its own transactions.

    Parameters
    ----------
    transactions
        Canonical transactions with labels (``bank_node.data.load_transactions``).
    train_start
        First training day.
    train_days
        Length of the training period in days.

    Raises
    ------
    FedfraudInputError
        No transaction in the training period.
    """
    windows = Windows(train_start=pd.Timestamp(train_start), train_days=train_days)
    features = FeatureConfig()
    lookback = pd.Timedelta(days=max(features.windows_days) + features.delay_days + 1)
    timestamps = transactions[TIMESTAMP]
    in_scope = (timestamps >= windows.train_start - lookback) & (timestamps < windows.train_end)
    featured = compute_features(
        transactions[in_scope.to_numpy()],
        start=windows.train_start.date().isoformat(),
        end=(windows.train_end - pd.Timedelta(days=1)).date().isoformat(),
    )
    train = featured[in_train_period(featured, windows)]
    if train.empty:
        raise nothing_to_train(train_start, train_days)
    rows = TrainingSet(
        X=model_matrix(train),
        y=train[LABEL].to_numpy(dtype=np.float64),
        featured=train.reset_index(drop=True),
    )
    _warn_one_class(rows)
    return rows


def _warn_one_class(rows: Rows) -> None:
    if rows.n_frauds in (0, rows.n_rows):
        log.warning("the training period holds one class only: rows=%d frauds=%d", rows.n_rows, rows.n_frauds)


def training_period(window: RunWindow | None, train_start: date | None, train_days: int) -> tuple[date, int]:
    """The training period of a run: its window's, or the agent's command line's for a run without one.

    Raises
    ------
    FedfraudInputError
        Neither says when training starts.
    """
    if window is not None:
        if train_start is not None and (window.train_start, window.train_days) != (train_start, train_days):
            log.info("training on the run's window, not the command line's: start=%s days=%d", window.train_start,
                     window.train_days)
        return window.train_start, window.train_days
    if train_start is None:
        raise FedfraudInputError("the run carries no window and the agent was given no --train-start",
                                 {"train_start": ["missing"]})
    return train_start, train_days


class TransactionSource:
    """The bank's transaction file, read again when it changes (a nightly export, say).

    Parameters
    ----------
    path
        Parquet or CSV file with labels.
    train_start, train_days
        The training period of runs that carry no window (a run's window always wins).
    mapping
        The file's names for the canonical fields, where they differ.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        train_start: date | None,
        train_days: int,
        mapping: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.train_start = train_start
        self.train_days = train_days
        self.mapping = dict(mapping or {})
        self._cached: tuple[tuple[float, int, date, int], TrainingSet] | None = None
        # (mtime, size, train start, days) of the cached rows
        self._frame: tuple[tuple[float, int], pd.DataFrame] | None = None

    def _load(self) -> tuple[tuple[float, int], pd.DataFrame]:
        """The file's transactions, read again only when its modification time or size changed."""
        from bank_node.data import load_transactions

        try:
            stat = self.path.stat()
        except FileNotFoundError:
            raise FedfraudInputError(f"no such file: {self.path}", {"data": ["does not exist"]}) from None
        version = (stat.st_mtime, stat.st_size)
        if self._frame is None or self._frame[0] != version:
            self._frame = (version, load_transactions(self.path, self.mapping, require_label=True).frame)
        return self._frame

    def transactions(self, start: date, end: date) -> pd.DataFrame:
        """The file's transactions from ``start`` to before ``end`` (days), with their labels."""
        frame = self._load()[1]
        stamps = frame[TIMESTAMP]
        return frame[((stamps >= pd.Timestamp(start)) & (stamps < pd.Timestamp(end))).to_numpy()]

    def rows(self, window: RunWindow | None = None) -> TrainingSet:
        """The training rows of the file's current content, for ``window`` (the run's) if given."""
        (mtime, size), frame = self._load()
        train_start, train_days = training_period(window, self.train_start, self.train_days)
        version = (mtime, size, train_start, train_days)
        if self._cached is None or self._cached[0] != version:
            rows = training_rows(frame, train_start=train_start, train_days=train_days)
            log.info("training rows loaded: path=%s rows=%d frauds=%d", self.path, len(rows.y), rows.n_frauds)
            self._cached = (version, rows)
        return self._cached[1]


class StoreSource:
    """The node's transaction store (``bank_node/store.py``) as the agent's training rows.

    Parameters
    ----------
    store
        The store.
    train_start, train_days
        The training period of runs that carry no window.
    """

    def __init__(self, store: Any, *, train_start: date | None = None, train_days: int = 7) -> None:
        self.store = store
        self.train_start = train_start
        self.train_days = train_days
        self._span: tuple[Any, date, date, pd.DataFrame] | None = None
        # (store version, first day, end day, rows): a run reads its training, validation and
        # terminal days, all within one span, so the store is read once per run

    def rows(self, window: RunWindow | None = None) -> TrainingSet:
        """The training rows of ``window`` (the run's), read from the store.

        Transactions without a confirmed label by then count as genuine: a fraud is labelled
        when it is reported, and the window's label delay leaves time for that.
        """
        train_start, train_days = training_period(window, self.train_start, self.train_days)
        lookback = timedelta(days=FeatureConfig().lookback_days + 1)
        if window is not None:  # everything the run will read: its training, validation and terminal days
            self._read(window.train_start - lookback, window.as_of + timedelta(days=1))
        frame = self.transactions(train_start - lookback, train_start + timedelta(days=train_days))
        return training_rows(frame, train_start=train_start, train_days=train_days)

    def transactions(self, start: date, end: date) -> pd.DataFrame:
        """The stored transactions from ``start`` to before ``end`` (days); a transaction without
        a confirmed label counts as genuine."""
        frame = self._read(start, end)
        stamps = frame[TIMESTAMP]
        frame = frame[((stamps >= pd.Timestamp(start)) & (stamps < pd.Timestamp(end))).to_numpy()].copy()
        unlabelled = int(frame[LABEL].isna().sum())
        if unlabelled:
            log.info("transactions without a confirmed label count as genuine: %d of %d", unlabelled, len(frame))
        frame[LABEL] = frame[LABEL].fillna(0).astype(np.int64)
        return frame

    def _read(self, start: date, end: date) -> pd.DataFrame:
        """The store's rows of a span covering ``[start, end)``, read again only when the store
        changed (a file ingested or labels recorded) or the span is not covered."""
        version = self.store.version()
        if self._span is not None:
            held_version, first, stop, frame = self._span
            if held_version == version and first <= start and end <= stop:
                return frame
        frame = self.store.between(datetime.combine(start, datetime.min.time()),
                                   datetime.combine(end, datetime.min.time()))
        self._span = (version, start, end, frame)
        return frame


class DaskSource:
    """The bank's transactions as partitioned Parquet (a file, or a folder of files), featured and
    trained on a Dask cluster: for histories larger than this machine's memory.

    Parameters
    ----------
    path
        Parquet file or folder of Parquet files with labels.
    client
        The Dask client (:func:`bank_node.scale.dask_client`).
    train_start, train_days
        The training period of runs that carry no window (a run's window always wins).
    mapping
        The files' names for the canonical fields, where they differ.
    """

    def __init__(self, path: str | os.PathLike[str], client: Any, *, train_start: date | None, train_days: int,
                 mapping: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.client = client
        self.train_start = train_start
        self.train_days = train_days
        self.mapping = dict(mapping or {})
        self._cached: tuple[Any, Any] | None = None  # (files' version and period, rows)
        self._ids_checked: Any = None  # the files' version whose ids were all checked unique

    def _version(self) -> tuple[tuple[str, float, int], ...]:
        """Each Parquet file's name, modification time and size (new files are a new version;
        a path that is not there has none, and reading it says so)."""
        files = sorted(self.path.rglob("*.parquet")) if self.path.is_dir() else [self.path]
        return tuple((str(f), f.stat().st_mtime, f.stat().st_size) for f in files if f.exists())

    def _checked_frame(self, version: Any) -> Any:
        """The files' transactions, every id checked unique once per version of the files (not
        again for each period a run reads: training, validation, the days to pool)."""
        from bank_node.scale import read_transactions, refuse_duplicate_ids

        frame = read_transactions(str(self.path), self.mapping)
        if self._ids_checked != version:
            refuse_duplicate_ids(frame)
            self._ids_checked = version
        return frame

    def check(self) -> None:
        """Fail now on files that cannot be read or lack a field (what can be seen without
        reading every row: the rows' values are checked as each run reads them).

        Raises
        ------
        FedfraudInputError
            Naming the path or the missing fields.
        """
        from bank_node.scale import source_names

        source_names(str(self.path), self.mapping)

    def rows(self, window: RunWindow | None = None) -> Any:
        """The training rows of the files' current content for ``window`` (the run's) if given:
        a :class:`bank_node.scale.DaskTrainingSet`, its rows kept on the cluster.

        Raises
        ------
        FedfraudInputError
            No transaction in the training period, or a file that does not validate.
        """
        from bank_node.scale import DaskTrainingSet, dask_features

        train_start, train_days = training_period(window, self.train_start, self.train_days)
        version = (self._version(), train_start, train_days)
        if self._cached is None or self._cached[0] != version or not self._cached[1].held:
            self._cached = None  # the cluster lets go of the previous rows
            last_day = train_start + timedelta(days=train_days - 1)
            featured = dask_features(self._checked_frame(version[0]), start=train_start.isoformat(),
                                     end=last_day.isoformat(), ids_checked=True)
            rows = DaskTrainingSet.of(self.client, featured)
            if rows.n_rows == 0:
                raise nothing_to_train(train_start, train_days)
            log.info("training rows loaded on Dask: path=%s rows=%d frauds=%d partitions=%d", self.path, rows.n_rows,
                     rows.n_frauds, len(rows.frames))
            _warn_one_class(rows)
            self._cached = (version, rows)
        return self._cached[1]

    def transactions(self, start: date, end: date) -> pd.DataFrame:
        """The files' transactions from ``start`` to before ``end`` (days), gathered into this
        process: the days a run's terminal features reach, whose events it pools. Only what the
        pooling reads is gathered: the id, the time, the terminal and the label."""
        from bank_node.scale import cluster_errors

        frame = self._checked_frame(self._version())
        stamps = frame[TIMESTAMP]
        chosen = frame[(stamps >= pd.Timestamp(start)) & (stamps < pd.Timestamp(end))][
            [TRANSACTION_ID, TIMESTAMP, TERMINAL_ID, LABEL]]
        with cluster_errors("reading the days to pool"):
            gathered = self.client.compute(chosen).result()
        return gathered.sort_values([TIMESTAMP, TRANSACTION_ID], kind="stable").reset_index(drop=True)


def gbdt_params(params: Mapping[str, Any]) -> GBDTParams:
    """:class:`GBDTParams` from a run's params, validated as the consortium validates them.

    Raises
    ------
    FedfraudInputError
        An unknown name, a wrong type or a value out of range.
    """
    return GBDTParams(**split_run_params("xgboost", params)[0])


def logreg_params(params: Mapping[str, Any]) -> LogRegParams:
    """:class:`LogRegParams` from a run's params, validated as the consortium validates them."""
    return LogRegParams(**split_run_params("logreg", params)[0])


FEATURES_ATTRIBUTE = "fedfraud_features"
"""Where a model file says how its inputs were built (an XGBoost learner attribute, or a key of
the logistic-regression document); absent: every feature from the bank's own transactions."""


@dataclass(frozen=True)
class FeatureSettings:
    """How a model's inputs are built.

    Attributes
    ----------
    consortium
        Terminal features over the consortium's pooled events, for terminals seen by at least
        ``threshold`` banks (the bank's own values elsewhere).
    terminal_epsilon
        Pooled as noisy day counts per terminal at this epsilon per day, or exact events (None).
    """

    consortium: bool = False
    threshold: int = DEFAULT_TERMINAL_THRESHOLD
    terminal_epsilon: float | None = None

    def to_attribute(self) -> str:
        """The settings as the model file records them (a JSON string)."""
        recorded: dict[str, Any] = {"terminal_features": "consortium", "terminal_threshold": self.threshold}
        if self.terminal_epsilon is not None:
            recorded["terminal_dp_epsilon"] = self.terminal_epsilon
        return json.dumps(recorded, sort_keys=True, separators=(",", ":"))

    def history_id(self, key_id: str) -> str:
        """Under which name the node keeps the pooled history these features read: the
        consortium key's id, and the epsilon of noisy day counts (never mixed with exact events)."""
        return key_id if self.terminal_epsilon is None else f"{key_id}/day-counts-eps-{self.terminal_epsilon:g}"

    @classmethod
    def of_model_file(cls, body: bytes) -> FeatureSettings:
        """The settings a model file (as :func:`prepare_run` serializes it) records.

        Raises
        ------
        ValueError
            The file is not JSON, or records settings this version does not know.
        """
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError("a model file is a JSON object")
        learner = document.get("learner")
        if "learner" in document and not (isinstance(learner, dict) and isinstance(learner.get("attributes", {}), dict)):
            raise ValueError("the model file's 'learner' is not an XGBoost learner")
        attributes = learner.get("attributes", {}) if isinstance(learner, dict) else document
        recorded = attributes.get(FEATURES_ATTRIBUTE)
        if recorded is None:
            return cls()
        settings = json.loads(recorded)
        epsilon = settings.get("terminal_dp_epsilon")
        if (settings.get("terminal_features") != "consortium" or not isinstance(settings.get("terminal_threshold"), int)
                or not (epsilon is None or (isinstance(epsilon, (int, float)) and epsilon > 0))):
            raise ValueError(f"the model records feature settings this node does not know: {recorded}")
        return cls(consortium=True, threshold=int(settings["terminal_threshold"]),
                   terminal_epsilon=None if epsilon is None else float(epsilon))


def feature_settings(model: str, params: Mapping[str, Any]) -> FeatureSettings:
    """The feature settings of a run's params (validated)."""
    features = split_run_params(model, params)[1]
    epsilon = features.get("terminal_dp_epsilon")
    return FeatureSettings(consortium=bool(features.get("consortium_features", False)),
                           threshold=int(features.get("terminal_threshold", DEFAULT_TERMINAL_THRESHOLD)),
                           terminal_epsilon=None if epsilon is None else float(epsilon))


def canonical_json(document: Any) -> bytes:
    """The one byte string of a JSON document: sorted keys, no whitespace, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


@dataclass(frozen=True)
class PreparedRun:
    """A run's algorithm for this bank, and how its result becomes the proposal file.

    ``algorithm`` makes a fresh generator each call, so the run can start over without a bank
    that dropped out (:meth:`~bank_node.federated.rounds.BankRunner.run`).
    """

    algorithm: Callable[[], Algorithm[Any]]
    serialize: Callable[[Any], bytes]

    @staticmethod
    def digest(body: bytes) -> str:
        """Hex SHA-256 of a proposal, as the consortium compares them."""
        return hashlib.sha256(body).hexdigest()


def prepare_run(
    model: str,
    params: Mapping[str, Any],
    rows: Rows,
    *,
    party_index: int,
    n_parties: int = 1,
) -> PreparedRun:
    """Build this bank's algorithm for a run.

    Parameters
    ----------
    model
        ``"xgboost"`` or ``"logreg"``.
    params
        The run's params.
    rows
        The bank's training rows.
    party_index
        The bank's place among the run's sorted participants.
    n_parties
        How many banks take part (a private run's noise is told from signal by it).

    Raises
    ------
    FedfraudInputError
        Unknown model family or invalid params.
    """
    if model not in MODEL_FAMILIES:
        raise FedfraudInputError(
            f"run model {model!r} is not one this agent trains ({', '.join(MODEL_FAMILIES)})",
            {"model": [f"expected one of {', '.join(MODEL_FAMILIES)}"]},
        )
    features = feature_settings(model, params)
    setting = run_privacy(model, params)
    # Each call of the algorithm factory draws fresh noise: a run started over without a bank
    # that dropped out must not release the same noise twice on different sums.
    def privacy() -> PrivateContribution | None:
        return None if setting is None else PrivateContribution(setting, n_parties=n_parties)

    if model == "xgboost":
        tree_params = gbdt_params(params)

        def xgboost_file(fitted: GBDTModel) -> bytes:
            document = to_xgboost_json(fitted, params=tree_params, feature_names=MODEL_INPUTS)
            if features.consortium:
                document["learner"]["attributes"][FEATURES_ATTRIBUTE] = features.to_attribute()
            return canonical_json(document)

        refuse_subsample_in_parts(tree_params, whole=rows.whole)  # before any round, not at the first tree

        def trees() -> Algorithm[GBDTModel]:
            return federated_gbdt_over(
                rows.parts(GBDTPart.of), n_features=len(MODEL_INPUTS), params=tree_params,
                scales=scales_for(MODEL_INPUTS), party_index=party_index, privacy=privacy(),
            )

        return PreparedRun(algorithm=trees, serialize=xgboost_file)
    lr_params = logreg_params(params)

    def logreg_file(fitted: LogRegModel) -> bytes:
        document = json.loads(fitted.to_json())
        if features.consortium:
            document[FEATURES_ATTRIBUTE] = features.to_attribute()
        return canonical_json(document)

    def regression() -> Algorithm[LogRegModel]:
        return federated_logreg_over(rows.parts(LogRegPart), n_features=len(MODEL_INPUTS), params=lr_params,
                                     feature_names=MODEL_INPUTS, scales=scales_for(MODEL_INPUTS), privacy=privacy())

    return PreparedRun(algorithm=regression, serialize=logreg_file)
