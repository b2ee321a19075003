"""Fixtures: synthetic fraud-like data split unevenly over four banks, and its global bins."""

from __future__ import annotations

from dataclasses import dataclass

from collections.abc import Callable

import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import make_classification

from bank_node.federated.params import GBDTParams
from bank_node.federated.binning import (
    FeatureScale,
    bin_index,
    fine_grid,
    global_cuts,
    local_grid_counts,
)

N_ROWS = 4000
N_FEATURES = 10
# Uneven bank sizes, as in a real consortium.
PARTY_SHARES = (0.4, 0.3, 0.2, 0.1)


@dataclass(frozen=True)
class BankData:
    """Pooled rows, the banks' row ranges, and the global bins agreed from their counts."""

    X: np.ndarray
    y: np.ndarray
    scales: list[FeatureScale]
    parties: list[slice]
    cuts: list[np.ndarray]
    bins: np.ndarray

    def party_data(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(self.bins[s], self.y[s]) for s in self.parties]


def make_features(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[FeatureScale]]:
    """Classification data reshaped into fraud-like features: amount, count, risk, flag, ..."""
    X, y = make_classification(
        n_samples=n_rows,
        n_features=N_FEATURES,
        n_informative=6,
        n_redundant=2,
        weights=[0.85],
        random_state=seed,
    )
    X[:, 0] = np.round(np.exp(1.5 * X[:, 0] + 3.0), 2)  # amount: skewed, cents
    X[:, 1] = np.clip(np.round(2.0 * X[:, 1] + 5.0), 0, 40)  # a count
    X[:, 2] = 1.0 / (1.0 + np.exp(-X[:, 2]))  # a risk in [0, 1]
    X[:, 3] = (X[:, 3] > 0.3).astype(np.float64)  # a flag
    scales = [
        FeatureScale(kind="log", low=0.01, high=1e6, resolution=2000),
        FeatureScale(kind="integer", low=0, high=100),
        FeatureScale(kind="linear", low=0.0, high=1.0, resolution=1000),
        FeatureScale(kind="binary"),
    ] + [FeatureScale()] * (N_FEATURES - 4)
    return X.astype(np.float32), y.astype(np.float32), scales


def party_slices(n_rows: int) -> list[slice]:
    bounds = np.concatenate([[0], np.round(np.cumsum(PARTY_SHARES) * n_rows)]).astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def make_bank_data(n_rows: int = N_ROWS, *, seed: int = 7, n_bins: int = 64) -> BankData:
    """Data, bank split and the global cuts agreed from the banks' summed grid counts."""
    X, y, scales = make_features(n_rows, seed=seed)
    grid = fine_grid(scales)
    parties = party_slices(n_rows)
    summed = np.zeros(grid.size)
    for s in parties:
        summed = summed + local_grid_counts(X[s], grid)
    cuts = global_cuts(summed, grid, n_bins=n_bins)
    return BankData(X=X, y=y, scales=scales, parties=parties, cuts=cuts, bins=bin_index(X, cuts))


@pytest.fixture(scope="session")
def gbdt_data() -> BankData:
    """4000 rows, 10 features, four banks of uneven size, global cuts with at most 64 bins."""
    return make_bank_data()


@pytest.fixture(scope="session")
def gbdt_data_256() -> BankData:
    """As :func:`gbdt_data`, with up to 256 bins per feature."""
    return make_bank_data(n_bins=256, seed=11)


def train_xgboost_on_bins(bins: np.ndarray, y: np.ndarray, params: GBDTParams) -> xgb.Booster:
    """XGBoost ``hist`` on rows already mapped to global bin indices (cuts fall between integers)."""
    return xgb.train(
        {
            "objective": "binary:logistic",
            "tree_method": "hist",
            "max_bin": 256,
            "max_depth": params.max_depth,
            "eta": params.eta,
            "lambda": params.reg_lambda,
            "gamma": params.gamma,
            "min_child_weight": params.min_child_weight,
            "base_score": params.base_score,
            "scale_pos_weight": params.scale_pos_weight,
            "nthread": 1,
        },
        xgb.DMatrix(np.asarray(bins, dtype=np.float32), label=y),
        params.n_trees,
    )


@pytest.fixture(scope="session")
def xgboost_on_bins() -> Callable[[np.ndarray, np.ndarray, GBDTParams], xgb.Booster]:
    """The XGBoost reference the protocol must reproduce (see :func:`train_xgboost_on_bins`)."""
    return train_xgboost_on_bins
