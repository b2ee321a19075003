"""Federated logistic regression: global scaling and Newton rounds over secure sums.

Every bank runs :func:`federated_logreg` on its own rows. The consortium-wide quantities it needs
are sums over banks, so each is one secure sum:

1. ``logreg/counts``: rows and frauds, for the global class weights and averages;
2. ``logreg/mean``: each bank's share of the feature means, ``sum(x) / N``;
3. ``logreg/var``: each bank's share of the variances, ``sum((x - mean)^2) / N``;
4. ``logreg/round-k``: each bank's sample-weighted gradient and Hessian of the logistic loss at
   the current global weights, divided by ``N``.

From the summed gradient and Hessian every bank takes the same Newton step on the consortium's
objective, so the weights converge to those of one logistic regression fitted on all banks' rows
pooled (the objective is scikit-learn's: ``C * sum_i s_i * logloss_i + ||coef||^2 / 2``, intercept
not penalised). Contributions are divided by the global row count so that every encrypted value
stays an average, well inside the secure sum's range, whatever the banks' sizes; each sum is exact
at the fixed-point resolution its request declares (:data:`DERIVATIVE_RESOLUTION`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from bank_node.federated.binning import FeatureScale
from bank_node.federated.feature_scales import clip_range
from bank_node.federated.parts import Local, Parts
from bank_node.federated.privacy import PrivateContribution
from bank_node.federated.rounds import Algorithm, SumRequest

FloatArray = npt.NDArray[np.float64]

#: Fixed-point factor of the averaged gradients and Hessians: secure sums are exact at a resolution
#: of ``1 / DERIVATIVE_RESOLUTION`` and carry magnitudes up to ``2^30 / DERIVATIVE_RESOLUTION``
#: (256: averages of standardised features' derivatives are of order one).
DERIVATIVE_RESOLUTION = 2.0**22
#: Fixed-point factors of the feature means and variances (magnitudes up to 16384 and 1e6).
MEAN_RESOLUTION = 2.0**16
VARIANCE_RESOLUTION = 2.0**10


@dataclass(frozen=True)
class LogRegParams:
    """Hyperparameters, the same on every bank (and for the centralized reference).

    Attributes
    ----------
    C
        Inverse L2 regularisation strength, as in scikit-learn.
    class_weight
        ``"balanced"`` weighs each class by ``N / (2 * N_class)`` over the consortium's rows.
    max_rounds
        Most Newton rounds.
    tol
        Stop when no weight moves by more than this (HE noise moves them by ~1e-6 a round).
    """

    C: float = 1.0
    class_weight: Literal["balanced"] | None = "balanced"
    max_rounds: int = 30
    tol: float = 1e-5

    def __post_init__(self) -> None:
        if not self.C > 0:
            raise ValueError(f"C must be positive, got {self.C!r}")
        if self.class_weight not in ("balanced", None):
            raise ValueError(f"class_weight must be 'balanced' or None, got {self.class_weight!r}")
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be at least 1, got {self.max_rounds!r}")
        if not self.tol > 0:
            raise ValueError(f"tol must be positive, got {self.tol!r}")


@dataclass(frozen=True)
class LogRegModel:
    """A fitted logistic regression with its feature scaler.

    Attributes
    ----------
    feature_names
        Input columns, in order.
    mean, scale
        Standardisation: ``z = (x - mean) / scale``.
    coef, intercept
        Weights on the standardised features.
    rounds
        Newton rounds it took.
    """

    feature_names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    rounds: int = 0

    def decision_function(self, X: npt.ArrayLike) -> FloatArray:
        """Margin per row."""
        Z = (np.asarray(X, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.scale)
        return Z @ np.asarray(self.coef) + self.intercept  # type: ignore[no-any-return]

    def predict_proba(self, X: npt.ArrayLike) -> FloatArray:
        """Fraud probability per row."""
        return _sigmoid(self.decision_function(X))

    def to_json(self) -> str:
        """The model as JSON (coefficients and scaler)."""
        return json.dumps({"model": "logistic_regression", "format_version": 1, **asdict(self)}, indent=2)

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path``."""
        Path(path).write_text(self.to_json())

    @classmethod
    def from_json(cls, text: str) -> LogRegModel:
        """Read a model written by :meth:`to_json`."""
        data: dict[str, Any] = json.loads(text)
        if data.pop("model", None) != "logistic_regression" or data.pop("format_version", None) != 1:
            raise ValueError("not a fedfraud logistic-regression model (format version 1)")
        return cls(
            feature_names=tuple(data["feature_names"]),
            mean=tuple(data["mean"]),
            scale=tuple(data["scale"]),
            coef=tuple(data["coef"]),
            intercept=float(data["intercept"]),
            rounds=int(data.get("rounds", 0)),
        )


def _sigmoid(margin: FloatArray) -> FloatArray:
    return 0.5 * (1.0 + np.tanh(0.5 * margin))  # type: ignore[no-any-return]


def class_weights(n_rows: float, n_frauds: float, mode: Literal["balanced"] | None) -> tuple[float, float]:
    """Weights of the genuine and fraud classes, as scikit-learn's ``class_weight``."""
    if mode is None:
        return 1.0, 1.0
    if not 0 < n_frauds < n_rows:
        raise ValueError("balanced class weights need both classes in the consortium's training rows")
    return n_rows / (2.0 * (n_rows - n_frauds)), n_rows / (2.0 * n_frauds)


def loss_derivatives(
    Zb: FloatArray, y: FloatArray, sample_weight: FloatArray, weights: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Gradient and Hessian of ``sum_i s_i * logloss_i`` at ``weights``.

    ``Zb`` holds the standardised features and a last column of ones (the intercept's).
    """
    p = _sigmoid(Zb @ weights)
    grad = Zb.T @ (sample_weight * (p - y))
    hess = (Zb * (sample_weight * p * (1.0 - p))[:, None]).T @ Zb
    return grad, hess


def newton_step(grad_sum: FloatArray, hess_sum: FloatArray, weights: FloatArray, C: float) -> FloatArray:
    """The Newton step on ``C * loss + ||coef||^2 / 2`` from summed loss derivatives."""
    d = len(weights) - 1
    penalty = np.zeros_like(weights)
    penalty[:d] = weights[:d]
    grad = C * grad_sum + penalty
    hess = C * hess_sum
    hess[np.arange(d), np.arange(d)] += 1.0
    return np.asarray(np.linalg.solve(hess, grad), dtype=np.float64)


def federated_logreg(
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    params: LogRegParams = LogRegParams(),
    feature_names: tuple[str, ...] = (),
    prefix: str = "logreg",
    scales: Sequence[FeatureScale] | None = None,
    privacy: PrivateContribution | None = None,
) -> Algorithm[LogRegModel]:
    """One bank's side of federated logistic regression.

    Parameters
    ----------
    X
        This bank's training rows, shape (n_rows, n_features).
    y
        Its 0/1 labels.
    params
        Hyperparameters, identical on every bank.
    feature_names
        Column names, carried into the model.
    prefix
        Round-key prefix, so several trainings can share a run.
    scales
        The consortium's declared scale of each feature (needed with ``privacy``).
    privacy
        For a differentially private run: no mean or variance is summed (the features are
        clipped to their declared ranges and scaled into [-1, 1] by them), each row's gradient
        and Hessian factors are clipped, and every vector this bank contributes carries its
        Gaussian noise (:mod:`.privacy`).

    Yields
    ------
    SumRequest
        The vectors to sum; receives the decrypted sums.

    Returns
    -------
    LogRegModel
        The consortium's model (the same on every bank).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X must be (n_rows, n_features) with one label per row; got {X.shape} and {y.shape}")
    return (yield from federated_logreg_over(Local(LogRegPart(X=X, y=y)), n_features=X.shape[1], params=params,
                                             feature_names=feature_names, prefix=prefix, scales=scales,
                                             privacy=privacy))


@dataclass(frozen=True)
class LogRegPart:
    """Some of a bank's training rows, and their standardised form once the scaling is known
    (see :mod:`.parts`)."""

    X: FloatArray
    y: FloatArray
    Zb: FloatArray | None = None  # standardised features and a column of ones (the intercept's)
    weight: FloatArray | None = None  # each row's sample weight

    def counts(self) -> FloatArray:
        """Rows and frauds."""
        return np.array([len(self.y), self.y.sum()], dtype=np.float64)

    def column_sums(self) -> FloatArray:
        return np.asarray(self.X.sum(axis=0), dtype=np.float64)

    def squared_deviations(self, mean: FloatArray) -> FloatArray:
        return np.asarray(((self.X - mean) ** 2).sum(axis=0), dtype=np.float64)

    def standardised(self, mean: FloatArray, scale: FloatArray, weights: tuple[float, float],
                     clip: float | None = None) -> LogRegPart:
        """The rows standardised by ``mean`` and ``scale`` (clipped into [-1, 1], and each row's
        weight to ``clip``, in a private run), with the class ``weights`` (genuine, fraud)."""
        Z = (self.X - mean) / scale
        weight = np.where(self.y == 1, weights[1], weights[0])
        if clip is not None:
            Z, weight = np.clip(Z, -1.0, 1.0), np.minimum(weight, clip)
        return dataclasses.replace(self, Zb=np.hstack([Z, np.ones((len(self.X), 1))]), weight=weight)

    def derivatives(self, weights: FloatArray) -> FloatArray:
        """The gradient and the Hessian (flattened) of the rows' weighted loss at ``weights``."""
        assert self.Zb is not None and self.weight is not None, "not standardised"
        grad, hess = loss_derivatives(self.Zb, self.y, self.weight, weights)
        return np.concatenate([grad, hess.ravel()])

    def curvature_bound(self) -> FloatArray:
        """Böhning's bound on the rows' Hessian, ``0.25 * sum w z z^T`` (flattened)."""
        assert self.Zb is not None and self.weight is not None, "not standardised"
        return np.asarray(((self.Zb * (0.25 * self.weight)[:, None]).T @ self.Zb).ravel(), dtype=np.float64)

    def gradient(self, weights: FloatArray) -> FloatArray:
        """The gradient of the rows' weighted loss at ``weights``."""
        assert self.Zb is not None and self.weight is not None, "not standardised"
        return np.asarray(self.Zb.T @ (self.weight * (_sigmoid(self.Zb @ weights) - self.y)), dtype=np.float64)


def federated_logreg_over(
    rows: Parts[LogRegPart],
    *,
    n_features: int,
    params: LogRegParams = LogRegParams(),
    feature_names: tuple[str, ...] = (),
    prefix: str = "logreg",
    scales: Sequence[FeatureScale] | None = None,
    privacy: PrivateContribution | None = None,
) -> Algorithm[LogRegModel]:
    """:func:`federated_logreg` over rows held in parts (:mod:`.parts`): in this process, or on a
    Dask cluster's workers."""
    if privacy is not None:
        if scales is None or len(scales) != n_features:
            raise ValueError("a private logistic regression needs the declared scale of every feature")
        model = yield from _private_logreg(rows, n_features, params, scales, privacy, prefix)
        return dataclasses.replace(model, feature_names=tuple(feature_names or (f"x{i}" for i in range(n_features))))

    counts = yield SumRequest(f"{prefix}/counts", rows.total(LogRegPart.counts))
    n_rows, n_frauds = float(np.rint(counts[0])), float(np.rint(counts[1]))
    if n_rows < 1:
        raise ValueError("the consortium has no training rows")
    mean = yield SumRequest(f"{prefix}/mean", rows.total(LogRegPart.column_sums) / n_rows, scale=MEAN_RESOLUTION)
    var = yield SumRequest(f"{prefix}/var",
                           rows.total(functools.partial(LogRegPart.squared_deviations, mean=mean)) / n_rows,
                           scale=VARIANCE_RESOLUTION)
    var = np.maximum(var, 0.0)  # fixed-point rounding can push an exact zero slightly below it
    scale = np.sqrt(var)
    scale[scale < 1e-12] = 1.0  # constant feature: leave it unscaled, as StandardScaler does

    rows = rows.apply(functools.partial(LogRegPart.standardised, mean=mean, scale=scale,
                                        weights=class_weights(n_rows, n_frauds, params.class_weight)))
    weights = np.zeros(n_features + 1)
    rounds = 0
    for rounds in range(1, params.max_rounds + 1):
        size = n_features + 1
        share = rows.total(functools.partial(LogRegPart.derivatives, weights=weights)) / n_rows
        summed = yield SumRequest(f"{prefix}/round-{rounds}", share, scale=DERIVATIVE_RESOLUTION)
        summed = summed * n_rows
        grad_sum = summed[:size]
        hess_sum = summed[size:].reshape(size, size)
        hess_sum = 0.5 * (hess_sum + hess_sum.T)
        step = newton_step(grad_sum, hess_sum, weights, params.C)
        weights = weights - step
        if np.max(np.abs(step)) < params.tol:
            break
    names = feature_names or tuple(f"x{i}" for i in range(n_features))
    return LogRegModel(
        feature_names=tuple(names),
        mean=tuple(map(float, mean)),
        scale=tuple(map(float, scale)),
        coef=tuple(map(float, weights[:-1])),
        intercept=float(weights[-1]),
        rounds=rounds,
    )


def _private_logreg(rows: Parts[LogRegPart], n_features: int, params: LogRegParams, scales: Sequence[FeatureScale],
                    privacy: PrivateContribution, prefix: str) -> Algorithm[LogRegModel]:
    """:func:`federated_logreg` under differential privacy (see there).

    Each row's weight is clipped to ``clip`` (so its gradient is bounded), and the steps are
    majorize-minimize steps with Böhning's bound on the Hessian, ``0.25 * sum w z z^T``, summed
    once: every later round sums gradients only, and the steps cannot diverge however noisy the
    sums (the loss's curvature never exceeds the bound)."""
    counts = yield SumRequest(f"{prefix}/counts", privacy.noisy(rows.total(LogRegPart.counts), math.sqrt(2.0)))
    n_rows = max(float(np.rint(counts[0])), 2.0)
    n_frauds = float(np.clip(np.rint(counts[1]), 1.0, n_rows - 1.0))
    low, high = np.array([clip_range(s) for s in scales], dtype=np.float64).T
    mean, scale = (low + high) / 2.0, (high - low) / 2.0
    rows = rows.apply(functools.partial(LogRegPart.standardised, mean=mean, scale=scale,
                                        weights=class_weights(n_rows, n_frauds, params.class_weight),
                                        clip=privacy.clip))
    size = n_features + 1
    bound = rows.total(LogRegPart.curvature_bound)
    summed = yield SumRequest(f"{prefix}/bound", privacy.noisy(bound, privacy.bound_sensitivity(size)) / n_rows,
                              scale=DERIVATIVE_RESOLUTION)
    bound_sum = (summed * n_rows).reshape(size, size)
    values, vectors = np.linalg.eigh(0.5 * (bound_sum + bound_sum.T))  # noise can make it indefinite
    bound_sum = (vectors * np.maximum(values, 0.0)) @ vectors.T
    weights = np.zeros(size)
    rounds = 0
    for rounds in range(1, params.max_rounds + 1):
        gradient = rows.total(functools.partial(LogRegPart.gradient, weights=weights))
        summed = yield SumRequest(f"{prefix}/round-{rounds}",
                                  privacy.noisy(gradient, privacy.gradient_sensitivity(size)) / n_rows,
                                  scale=DERIVATIVE_RESOLUTION)
        step = newton_step(summed * n_rows, bound_sum.copy(), weights, params.C)
        weights = weights - step
        if np.max(np.abs(step)) < params.tol:
            break
    return LogRegModel(feature_names=tuple(f"x{i}" for i in range(n_features)), mean=tuple(map(float, mean)),
                       scale=tuple(map(float, scale)), coef=tuple(map(float, weights[:-1])),
                       intercept=float(weights[-1]), rounds=rounds)
