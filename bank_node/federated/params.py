"""Hyper-parameters of federated gradient-boosted trees, fixed for a whole training run."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

__all__ = ["GBDTParams"]


@dataclass(frozen=True, kw_only=True)
class GBDTParams:
    """Training parameters with XGBoost's meaning (``binary:logistic``, ``tree_method="hist"``).

    Every bank must hold equal parameters: the trees are grown independently on each bank
    from the same decrypted sums, and only equal parameters give equal trees.

    Parameters
    ----------
    n_trees : int
        Number of boosting rounds (XGBoost ``num_boost_round``).
    max_depth : int
        Depth of every tree; the root has depth 0. At least 1.
    eta : float
        Learning rate: leaf values are ``f32(weight) * f32(eta)``.
    reg_lambda : float
        L2 regularisation on leaf weights (XGBoost ``lambda``).
    gamma : float
        Minimum loss reduction to make a split (XGBoost ``min_split_loss``).
    min_child_weight : float
        Minimum hessian sum in each child of a split.
    base_score : float
        Initial prediction, a probability in (0, 1).
    scale_pos_weight : float
        Factor on the gradient and hessian of positive rows.
    n_bins : int
        Maximum number of histogram bins per feature, 2..65536.
    subsample : float
        Fraction of rows drawn (per tree, independently on each bank), in (0, 1].
    colsample_bytree : float
        Fraction of features drawn per tree (the same on every bank), in (0, 1].
    seed : int
        Seed of both samplers; non-negative.
    """

    n_trees: int = 100
    max_depth: int = 3
    eta: float = 0.1
    reg_lambda: float = 1.0
    gamma: float = 0.0
    min_child_weight: float = 1.0
    base_score: float = 0.5
    scale_pos_weight: float = 1.0
    n_bins: int = 256
    subsample: float = 1.0
    colsample_bytree: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int(self, "n_trees", low=1)
        _check_int(self, "max_depth", low=1, high=32)
        _check_int(self, "n_bins", low=2, high=65536)
        _check_int(self, "seed", low=0)
        _check_float(self, "eta", low=0.0, low_open=True)
        _check_float(self, "reg_lambda", low=0.0)
        _check_float(self, "gamma", low=0.0)
        _check_float(self, "min_child_weight", low=0.0)
        _check_float(self, "base_score", low=0.0, high=1.0, low_open=True, high_open=True)
        _check_float(self, "scale_pos_weight", low=0.0, low_open=True)
        _check_float(self, "subsample", low=0.0, high=1.0, low_open=True)
        _check_float(self, "colsample_bytree", low=0.0, high=1.0, low_open=True)


def _check_int(params: GBDTParams, name: str, *, low: int, high: int | None = None) -> None:
    value = getattr(params, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"GBDTParams.{name} must be an int, got {value!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"GBDTParams.{name} must be {bound}, got {value!r}")


def _check_float(
    params: GBDTParams,
    name: str,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    value = getattr(params, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"GBDTParams.{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"GBDTParams.{name} must be finite, got {value!r}")
    too_low = number <= low if low_open else number < low
    too_high = number >= high if high_open else number > high
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open or math.isinf(high) else "]"
        raise ValueError(f"GBDTParams.{name} must be in {left}{low}, {high}{right}, got {value!r}")
