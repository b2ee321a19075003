"""The in-process simulator: several banks, one aggregator, one process, every message serialized.

It partitions a transaction file among banks by card, computes each bank's features from its own
transactions only, trains the federated models through secure sums (the aggregator holds the
public HE context only), the same model families centrally on all rows pooled (the upper bound)
and on each bank alone (the lower bound), and evaluates all of them with the handbook's protocol.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

import crypto
from bank_node.evaluation import Windows, evaluate, in_test_set, in_train_period
from bank_node.features import FEATURE_COLUMNS, MODEL_INPUTS, FeatureConfig, compute_features, model_matrix
from bank_node.federated.feature_scales import scales_for
from bank_node.federated.gbdt import federated_gbdt
from bank_node.federated.lockstep import LockstepCosts, run_lockstep
from bank_node.federated.logreg import LogRegParams, federated_logreg
from bank_node.federated.params import GBDTParams
from bank_node.federated.rounds import Algorithm
from bank_node.federated.terminal_stats import (
    ConsortiumHistory,
    DayCountPrivacy,
    TerminalStatsConfig,
    consortium_history,
    private_consortium_history,
    events_by_day,
    history_days,
    with_consortium_terminal_features,
)
from consortium.secure_sum import SecureSum
from bank_node.federated.privacy import PrivateContribution
from schemas.errors import FedfraudInputError
from schemas.privacy import DEFAULT_DELTA, RunPrivacy, compose_epsilon, run_privacy
from schemas.run import load_run_params

MODELS = ("xgboost", "logreg")
TERMINAL_FEATURES = tuple(c for c in FEATURE_COLUMNS if c.startswith("TERMINAL_ID_"))

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that decides a simulation's outcome."""

    n_banks: int = 5
    sizes: tuple[float, ...] = ()
    train_start: str = "2018-07-25"
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7
    models: tuple[str, ...] = MODELS
    scheme: str = "ckks"
    seed: int = 0
    n_trees: int = 100
    max_depth: int = 3
    eta: float = 0.1
    n_bins: int = 256
    min_banks: int = 3
    consortium_features: bool = False
    terminal_threshold: int = 3
    dp_epsilon: float | None = None
    dp_delta: float = DEFAULT_DELTA
    dp_clip: float = 1.0
    reg_lambda: float = 1.0
    min_child_weight: float = 1.0
    terminal_dp_epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.n_banks < self.min_banks:
            raise FedfraudInputError(f"--banks {self.n_banks}: at least min_banks={self.min_banks} banks are needed")
        if self.sizes and len(self.sizes) != self.n_banks:
            raise FedfraudInputError(f"--sizes gives {len(self.sizes)} shares for {self.n_banks} banks")
        if self.sizes and (min(self.sizes) <= 0 or abs(sum(self.sizes) - 1.0) > 1e-6):
            raise FedfraudInputError("--sizes must be positive shares summing to 1")
        unknown = set(self.models) - set(MODELS)
        if unknown or not self.models:
            raise FedfraudInputError(f"--models must be a subset of {','.join(MODELS)}, got {','.join(self.models)}")
        if self.scheme not in crypto.SCHEMES:
            raise FedfraudInputError(f"--scheme must be one of {', '.join(crypto.SCHEMES)}")
        if self.terminal_threshold < 1:
            raise FedfraudInputError(f"--terminal-threshold must be at least 1 bank, got {self.terminal_threshold}")
        if self.dp_epsilon is not None:  # the runs' own validation: the simulator refuses what a run would
            for model in self.models:
                load_run_params(model, {"dp_epsilon": self.dp_epsilon, "dp_delta": self.dp_delta,
                                        "dp_clip": self.dp_clip})
        if self.terminal_dp_epsilon is not None:
            if not self.consortium_features:
                raise FedfraudInputError("--terminal-dp-epsilon needs --consortium-features (it sets their privacy)")
            try:
                self.terminal_privacy
            except ValueError as exc:
                raise FedfraudInputError(f"--terminal-dp-epsilon: {exc}") from None

    def run_params(self, model: str) -> dict[str, Any]:
        """The params a consortium run of ``model`` would carry for this simulation."""
        params: dict[str, Any] = {}
        if model == "xgboost":
            params = {"n_trees": self.n_trees, "max_depth": self.max_depth, "eta": self.eta, "n_bins": self.n_bins,
                      "seed": self.seed, "reg_lambda": self.reg_lambda, "min_child_weight": self.min_child_weight}
        if self.dp_epsilon is not None:
            params.update(dp_epsilon=self.dp_epsilon, dp_delta=self.dp_delta, dp_clip=self.dp_clip)
        return params

    def privacy(self, model: str) -> RunPrivacy | None:
        """The private runs' setting, or None without differential privacy."""
        return run_privacy(model, self.run_params(model), gate=False)  # the simulator runs no gate

    @property
    def terminal_privacy(self) -> DayCountPrivacy | None:
        """The private variant of the terminal statistics, or None for exact events."""
        if self.terminal_dp_epsilon is None:
            return None
        return DayCountPrivacy(self.terminal_dp_epsilon, self.dp_delta)

    @property
    def shares(self) -> tuple[float, ...]:
        """Each bank's share of the cards: given, or uneven by default (each 0.7 of the previous)."""
        if self.sizes:
            return self.sizes
        raw = 0.7 ** np.arange(self.n_banks)
        return tuple(float(x) for x in raw / raw.sum())

    @property
    def gbdt_params(self) -> GBDTParams:
        """The tree hyperparameters, shared by federated, centralized and local XGBoost."""
        return GBDTParams(
            n_trees=self.n_trees, max_depth=self.max_depth, eta=self.eta, n_bins=self.n_bins, seed=self.seed,
            reg_lambda=self.reg_lambda, min_child_weight=self.min_child_weight,
        )

    @property
    def windows(self) -> Windows:
        """Train, delay and test periods."""
        return Windows(
            train_start=pd.Timestamp(self.train_start),
            train_days=self.train_days,
            delay_days=self.delay_days,
            test_days=self.test_days,
        )


def bank_names(n_banks: int) -> list[str]:
    """``bank-1`` ... ``bank-N``."""
    return [f"bank-{i + 1}" for i in range(n_banks)]


def partition_customers(
    customers: npt.ArrayLike, shares: Sequence[float], *, seed: int
) -> npt.NDArray[np.int64]:
    """Assign each distinct card to a bank (index), in the given shares, at random from ``seed``."""
    distinct = np.unique(np.asarray(customers))
    order = np.random.default_rng(seed).permutation(len(distinct))
    bounds = np.rint(np.cumsum(shares) * len(distinct)).astype(np.int64)
    bank_of_rank = np.searchsorted(bounds, np.arange(len(distinct)), side="right")
    bank = np.empty(len(distinct), dtype=np.int64)
    bank[order] = bank_of_rank
    return bank[np.searchsorted(distinct, np.asarray(customers))]


@dataclass
class BankData:
    """One bank's feature rows for the training and test periods."""

    name: str
    train: pd.DataFrame
    test: pd.DataFrame
    n_cards: int
    transactions: pd.DataFrame | None = None

    def with_rows(self, train: pd.DataFrame, test: pd.DataFrame) -> BankData:
        """The same bank with other feature values for the same rows."""
        return BankData(name=self.name, train=train, test=test, n_cards=self.n_cards, transactions=self.transactions)

    @cached_property
    def X_train(self) -> npt.NDArray[np.float64]:
        """Model inputs of the training rows."""
        return model_matrix(self.train)

    @cached_property
    def y_train(self) -> npt.NDArray[np.float64]:
        """Labels of the training rows."""
        return self.train["label"].to_numpy(dtype=np.float64)

    @cached_property
    def X_test(self) -> npt.NDArray[np.float64]:
        """Model inputs of the test rows."""
        return model_matrix(self.test)

    def top_k(self, total_cards: int) -> int:
        """Cards to rank per day for this bank's CP@k: 100 scaled to its share of the cards."""
        return max(1, round(100 * self.n_cards / total_cards))


def prepare_banks(transactions: pd.DataFrame, config: SimulationConfig, progress: Progress = _quiet) -> list[BankData]:
    """Split the transactions among banks and compute each bank's features from its own rows only."""
    windows = config.windows
    bank_index = partition_customers(transactions["customer_id"], config.shares, seed=config.seed)
    # Rows this far back feed no window; the cut also decides which cards a bank counts (CP@k).
    lookback = pd.Timedelta(days=FeatureConfig().lookback_days + 1)
    in_scope = (transactions["timestamp"] >= windows.train_start - lookback) & (
        transactions["timestamp"] < windows.test_end
    )
    banks = []
    for i, name in enumerate(bank_names(config.n_banks)):
        own = transactions[(bank_index == i) & in_scope.to_numpy()]
        progress(f"features for {name} ({len(own):,} transactions)")
        featured = compute_features(
            own,
            start=windows.train_start,
            end=windows.last_day,
        )
        train = featured[in_train_period(featured, windows)].reset_index(drop=True)
        test = featured[in_test_set(featured, windows)].reset_index(drop=True)
        if train["label"].nunique() < 2:
            raise FedfraudInputError(
                f"{name} has no fraud (or only fraud) in its training period: give it a larger share"
            )
        banks.append(
            BankData(name=name, train=train, test=test, n_cards=int(own["customer_id"].nunique()), transactions=own)
        )
    return banks


@dataclass
class ModelScores:
    """Predicted test scores per bank, for one model."""

    per_bank: dict[str, npt.NDArray[np.float64]]


@dataclass
class SimulationResult:
    """What ``fedfraud simulate`` reports."""

    config: dict[str, Any]
    centralized: dict[str, dict[str, Any]] = field(default_factory=dict)
    federated: dict[str, dict[str, Any]] = field(default_factory=dict)
    local: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    timing: dict[str, dict[str, float]] = field(default_factory=dict)
    bytes: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, dict[str, ModelScores]] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    test_sets: dict[str, pd.DataFrame] = field(default_factory=dict)
    consortium: dict[str, Any] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)

    def spend(self, model: str, setting: RunPrivacy | None, training: str) -> None:
        """Account one federated training: each bank's transactions take part in every one."""
        if setting is not None:
            self._account({"model": model, "training": training, **setting.to_json()}, setting.delta)

    def spend_terminal_statistics(self, setting: DayCountPrivacy) -> None:
        """Account the private terminal statistics: one release holds each transaction."""
        self._account({"model": "terminal statistics", "training": "noisy day counts per terminal",
                       "epsilon": setting.epsilon, "delta": setting.delta, "releases": 1,
                       "noise_multiplier": setting.multiplier}, setting.delta)

    def _account(self, run: dict[str, Any], delta: float) -> None:
        runs = self.privacy.setdefault("runs", [])
        runs.append(run)
        self.privacy["per_bank_epsilon"] = compose_epsilon([(r["noise_multiplier"], r["releases"]) for r in runs],
                                                           delta)
        self.privacy["delta"] = delta
        if not self.config.get("consortium_features"):
            self.privacy["not_covered"] = "nothing"
        elif self.config.get("terminal_dp_epsilon") is None:
            self.privacy["not_covered"] = "the terminal statistics of consortium features (exact event counts)"
        else:
            self.privacy["not_covered"] = "which terminals how many banks saw over the period (presence)"

    def to_json(self) -> dict[str, Any]:
        """The JSON document (scores left out)."""
        out = {
            "config": self.config,
            "centralized": self.centralized,
            "federated": self.federated,
            "local": self.local,
            "timing": self.timing,
            "bytes": self.bytes,
        }
        if self.consortium:
            out["consortium_features"] = self.consortium
        if self.privacy:
            out["privacy"] = self.privacy
        return out


def _metrics(banks: Sequence[BankData], scores: ModelScores, origin: pd.Timestamp, total_cards: int) -> dict[str, Any]:
    pooled_test = pd.concat([b.test for b in banks], ignore_index=True)
    pooled_scores = np.concatenate([scores.per_bank[b.name] for b in banks])
    out: dict[str, Any] = evaluate(pooled_test, pooled_scores, origin=origin).as_dict()
    out["per_bank"] = _local_metrics(banks, scores.per_bank, origin, total_cards)
    return out


def _xgb_params(config: SimulationConfig) -> dict[str, Any]:
    p = config.gbdt_params
    return {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "max_depth": p.max_depth,
        "eta": p.eta,
        "max_bin": p.n_bins,
        "base_score": p.base_score,
        "reg_lambda": p.reg_lambda,
        "gamma": p.gamma,
        "min_child_weight": p.min_child_weight,
        "scale_pos_weight": p.scale_pos_weight,
        "nthread": 2,
        "seed": config.seed,
    }


def train_xgboost(X: npt.NDArray[np.float64], y: npt.NDArray[np.float64], config: SimulationConfig) -> Any:
    """XGBoost ``hist`` with the simulation's hyperparameters (centralized and local baselines)."""
    import xgboost as xgb

    return xgb.train(_xgb_params(config), xgb.DMatrix(X, label=y), num_boost_round=config.n_trees)


def predict_xgboost(booster: Any, X: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Fraud probability per row."""
    import xgboost as xgb

    return np.asarray(booster.predict(xgb.DMatrix(X)), dtype=np.float64)


def train_logreg(X: npt.NDArray[np.float64], y: npt.NDArray[np.float64], params: LogRegParams) -> Any:
    """Standardised scikit-learn logistic regression with the same hyperparameters as the federated one."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = LogisticRegression(C=params.C, class_weight=params.class_weight, max_iter=2000, tol=1e-8)
    return make_pipeline(StandardScaler(), model).fit(X, y)


def _pooled(banks: Sequence[BankData]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    return np.vstack([b.X_train for b in banks]), np.concatenate([b.y_train for b in banks])


def _centralized_scores(
    banks: Sequence[BankData], model: str, config: SimulationConfig
) -> dict[str, npt.NDArray[np.float64]]:
    """Test scores of the model trained on all banks' training rows pooled."""
    X_all, y_all = _pooled(banks)
    if model == "xgboost":
        central = train_xgboost(X_all, y_all, config)
        return {b.name: predict_xgboost(central, b.X_test) for b in banks}
    fitted = train_logreg(X_all, y_all, LogRegParams())
    return {b.name: fitted.predict_proba(b.X_test)[:, 1] for b in banks}


def _local_scores(
    banks: Sequence[BankData], model: str, config: SimulationConfig
) -> dict[str, npt.NDArray[np.float64]]:
    """Test scores of each bank's model trained on its own rows alone."""
    if model == "xgboost":
        return {b.name: predict_xgboost(train_xgboost(b.X_train, b.y_train, config), b.X_test) for b in banks}
    return {b.name: train_logreg(b.X_train, b.y_train, LogRegParams()).predict_proba(b.X_test)[:, 1] for b in banks}


def _federated(
    banks: Sequence[BankData], model: str, config: SimulationConfig, secret: crypto.HEScheme, public: crypto.HEScheme
) -> tuple[Any, LockstepCosts]:
    """Train one model family through secure sums; every bank ends with the same model."""
    algorithms: dict[str, Algorithm[Any]]
    setting = config.privacy(model)
    noise = {b.name: None if setting is None else
             PrivateContribution(setting, n_parties=len(banks), rng=np.random.default_rng([config.seed, i]))
             for i, b in enumerate(banks)}
    scales = scales_for(MODEL_INPUTS)
    if model == "logreg":
        algorithms = {b.name: federated_logreg(b.X_train, b.y_train, feature_names=MODEL_INPUTS, scales=scales,
                                               privacy=noise[b.name]) for b in banks}
    else:
        algorithms = {
            b.name: federated_gbdt(
                b.X_train, b.y_train, params=config.gbdt_params, scales=scales, party_index=i, privacy=noise[b.name]
            )
            for i, b in enumerate(banks)
        }
    run = run_lockstep(
        algorithms,
        contexts={b.name: secret for b in banks},
        aggregator=SecureSum(context=public, min_banks=config.min_banks),
    )
    return run.results[banks[0].name], run.costs


def _local_metrics(
    banks: Sequence[BankData], scores: dict[str, npt.NDArray[np.float64]], origin: pd.Timestamp, total_cards: int
) -> dict[str, dict[str, Any]]:
    return {
        b.name: evaluate(b.test, scores[b.name], origin=origin, k=b.top_k(total_cards)).as_dict() for b in banks
    }


def _predict(fitted: Any, banks: Sequence[BankData]) -> dict[str, npt.NDArray[np.float64]]:
    return {b.name: np.asarray(fitted.predict_proba(b.X_test), dtype=np.float64) for b in banks}


def simulate(
    transactions: pd.DataFrame,
    config: SimulationConfig,
    *,
    progress: Progress = _quiet,
) -> SimulationResult:
    """Run the whole comparison on canonical transactions with labels."""
    banks = prepare_banks(transactions, config, progress)
    origin = config.windows.train_start
    total_cards = sum(b.n_cards for b in banks)
    result = SimulationResult(config={**asdict(config), "shares": list(config.shares)})
    result.bytes = {"uploaded_per_bank": {}, "per_value": None}

    progress(f"key generation ({config.scheme})")
    secret = crypto.generate(config.scheme)
    public = crypto.load_context(secret.public_context(), require_public=True)

    for model in config.models:
        progress(f"{model}: centralized and local baselines")
        scores_c = _centralized_scores(banks, model, config)
        scores_l = _local_scores(banks, model, config)
        result.centralized[model] = _metrics(banks, ModelScores(scores_c), origin, total_cards)
        result.local[model] = _local_metrics(banks, scores_l, origin, total_cards)

        progress(f"{model}: federated training under {config.scheme}")
        fitted, costs = _federated(banks, model, config, secret, public)
        result.spend(model, config.privacy(model), "own features")
        result.models[model] = fitted
        scores_f = _predict(fitted, banks)
        result.federated[model] = _metrics(banks, ModelScores(scores_f), origin, total_cards)
        result.timing[model] = {
            "total_s": costs.wall_s,
            "parallel_banks_s": costs.parallel_s,
            "encrypt_s": sum(costs.encrypt_s.values()),
            "aggregate_s": costs.aggregate_s,
            "decrypt_s": sum(costs.decrypt_s.values()),
            "compute_s": costs.outside_he_s,
            "rounds": costs.rounds,
        }
        if model == "xgboost":
            result.timing[model]["per_tree_s"] = costs.wall_s / config.n_trees
        result.bytes["uploaded_per_bank"][model] = dict(costs.uploaded_bytes)
        result.bytes.setdefault("per_value_by_model", {})[model] = costs.bytes_per_value
        result.scores[model] = {
            "centralized": ModelScores(scores_c),
            "federated": ModelScores(scores_f),
            "local": ModelScores(scores_l),
        }
    per_value = result.bytes.get("per_value_by_model", {})
    result.bytes["per_value"] = per_value.get("xgboost", next(iter(per_value.values()), None))
    if config.consortium_features:
        _consortium_comparison(banks, config, secret, public, result, progress)
    result.test_sets = {b.name: b.test for b in banks}
    result.config["banks"] = {b.name: {"cards": b.n_cards, "train_rows": len(b.train), "test_rows": len(b.test)}
                              for b in banks}
    return result


def _consortium_comparison(
    banks: Sequence[BankData],
    config: SimulationConfig,
    secret: crypto.HEScheme,
    public: crypto.HEScheme,
    result: SimulationResult,
    progress: Progress,
) -> None:
    """Each model again with consortium terminal features, against the full-data upper bound."""
    windows = config.windows
    days = history_days(windows.train_start, windows.last_day)
    private = config.terminal_privacy
    progress(f"consortium terminal statistics: {len(days)} days under {config.scheme}"
             + ("" if private is None else f", noisy day counts at epsilon {private.epsilon:g}"))
    shared_banks, covered, run = with_consortium_features(banks, config, secret, public)
    if private is not None:
        result.spend_terminal_statistics(private)

    progress("full-data features (the centralized upper bound)")
    full_banks = _full_data_banks(banks, config)
    exactness = _compare_terminal_features(shared_banks, full_banks, covered)
    costs = run.costs
    n_banks, n_days = len(banks), len(days)
    section: dict[str, Any] = {
        "terminal_stats": {
            "days": n_days,
            "threshold": config.terminal_threshold,
            "rounds": costs.rounds,
            "rows_covered": exactness.pop("rows_covered"),
            "rows": exactness.pop("rows"),
            "terminals_by_banks_seen": np.bincount(
                run.results[banks[0].name].presence_banks, minlength=n_banks + 1
            ).tolist(),
            "consortium_events": int(run.results[banks[0].name].count.sum()),
            "equal_to_full_data": exactness,
            "total_s": costs.wall_s,
            "per_bank_per_day_s": costs.bank_s / (n_banks * n_days),
            "aggregate_per_day_s": costs.aggregate_s / n_days,
            "uploaded_per_bank_per_day_bytes": {name: v / n_days for name, v in costs.uploaded_bytes.items()},
        },
        "federated": {},
        "local": {},
        "centralized_full_data": {},
    }
    origin = windows.train_start
    total_cards = sum(b.n_cards for b in banks)
    for model in config.models:
        progress(f"{model}: full-data centralized, and local-only with consortium terminal features")
        scores_full = _centralized_scores(full_banks, model, config)
        scores_l = _local_scores(shared_banks, model, config)
        section["centralized_full_data"][model] = _metrics(full_banks, ModelScores(scores_full), origin, total_cards)
        section["local"][model] = _local_metrics(shared_banks, scores_l, origin, total_cards)
        progress(f"{model}: federated training with consortium terminal features")
        fitted, _ = _federated(shared_banks, model, config, secret, public)
        result.spend(model, config.privacy(model), "consortium features")
        scores_f = _predict(fitted, shared_banks)
        section["federated"][model] = _metrics(shared_banks, ModelScores(scores_f), origin, total_cards)
        result.scores[model].update(
            {
                "federated_consortium": ModelScores(scores_f),
                "local_consortium": ModelScores(scores_l),
                "centralized_full_data": ModelScores(scores_full),
            }
        )
    result.consortium = section


def with_consortium_features(
    banks: Sequence[BankData], config: SimulationConfig, secret: crypto.HEScheme, public: crypto.HEScheme
) -> tuple[list[BankData], dict[str, tuple[Any, Any]], Any]:
    """The banks' rows with consortium terminal features (pooled under encryption), which rows
    they cover, and the pooling run."""
    windows = config.windows
    days = history_days(windows.train_start, windows.last_day)
    # The banks share this key as they share the HE secret key; the aggregator never holds it.
    terminal_key = secrets.token_bytes(32)
    stats_config = TerminalStatsConfig(threshold=config.terminal_threshold)
    private = config.terminal_privacy
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0x7E12]))
    algorithms: dict[str, Algorithm[ConsortiumHistory]] = {}
    for b in banks:
        events = events_by_day(_own(b), terminal_key, days)
        if private is None:
            algorithms[b.name] = consortium_history(events, secret=terminal_key, config=stats_config)
        else:
            algorithms[b.name] = private_consortium_history(events, secret=terminal_key, privacy=private,
                                                            config=stats_config, rng=rng)
    run = run_lockstep(
        algorithms,
        contexts={b.name: secret for b in banks},
        aggregator=SecureSum(context=public, min_banks=config.min_banks),
    )
    shared_banks, covered = [], {}
    for b in banks:
        history = run.results[b.name]
        train, covered_train = with_consortium_terminal_features(b.train, history, secret=terminal_key)
        test, covered_test = with_consortium_terminal_features(b.test, history, secret=terminal_key)
        shared_banks.append(b.with_rows(train, test))
        covered[b.name] = (covered_train, covered_test)
    return shared_banks, covered, run


def _own(bank: BankData) -> pd.DataFrame:
    if bank.transactions is None:
        raise ValueError(f"{bank.name} was prepared without its transactions")
    return bank.transactions


def _full_data_banks(banks: Sequence[BankData], config: SimulationConfig) -> list[BankData]:
    """The banks' same rows with features computed on every bank's transactions pooled."""
    windows = config.windows
    pooled = compute_features(
        pd.concat([_own(b) for b in banks], ignore_index=True),
        start=windows.train_start,
        end=windows.last_day,
    ).set_index("transaction_id")
    out = []
    for b in banks:
        train = pooled.loc[b.train["transaction_id"]].reset_index()[b.train.columns]
        test = pooled.loc[b.test["transaction_id"]].reset_index()[b.test.columns]
        out.append(b.with_rows(train, test))
    return out


def _compare_terminal_features(
    shared: Sequence[BankData],
    full: Sequence[BankData],
    covered: dict[str, tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]],
) -> dict[str, Any]:
    """How the consortium terminal features of covered rows compare with the full-data ones."""
    out: dict[str, Any] = {"rows": 0, "rows_covered": 0, "count_mismatches": 0, "max_abs_risk_difference": 0.0}
    for s, f in zip(shared, full):
        for (ours, theirs), mask in zip(((s.train, f.train), (s.test, f.test)), covered[s.name]):
            out["rows"] += len(ours)
            out["rows_covered"] += int(mask.sum())
            for column in TERMINAL_FEATURES:
                a, b = ours[column].to_numpy()[mask], theirs[column].to_numpy()[mask]
                if "NB_TX" in column:
                    out["count_mismatches"] += int(np.count_nonzero(a != b))
                elif len(a):
                    out["max_abs_risk_difference"] = max(out["max_abs_risk_difference"], float(np.max(np.abs(a - b))))
    return out


__all__ = [
    "BankData",
    "SimulationConfig",
    "SimulationResult",
    "partition_customers",
    "prepare_banks",
    "simulate",
]
