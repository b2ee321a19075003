"""Split finding: the vectorised search picks what a brute-force float64 search picks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bank_node.federated.histogram import build_histograms
from bank_node.federated.params import GBDTParams
from bank_node.federated.split import find_best_splits, leaf_value

N_BINS = 20


def _data(seed: int, n: int = 3000, n_features: int = 6) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    bins = rng.integers(0, N_BINS, size=(n, n_features)).astype(np.uint8)
    signal = 0.4 * (bins[:, 1] > 8) - 0.3 * (bins[:, 4] < 5) + 0.2 * (bins[:, 0] % 3 == 0)
    grad = (rng.normal(size=n) * 0.5 - signal).astype(np.float32)
    hess = rng.uniform(0.05, 0.25, n).astype(np.float32)
    positions = rng.integers(1, 3, n).astype(np.int32)  # two nodes: 1 and 2
    return bins, grad, hess, positions


def _brute_force(bins: np.ndarray, grad: np.ndarray, hess: np.ndarray, params: GBDTParams):
    """Best (feature, bin, gain) from raw row sums in float64, or None."""
    lam = params.reg_lambda

    def score(g: float, h: float) -> float:
        return g * g / (h + lam)

    g_all = math.fsum(grad.astype(np.float64))
    h_all = math.fsum(hess.astype(np.float64))
    best = None
    for f in range(bins.shape[1]):
        for b in range(N_BINS):
            left = bins[:, f] <= b
            gl, hl = math.fsum(grad[left].astype(np.float64)), math.fsum(hess[left].astype(np.float64))
            gr, hr = g_all - gl, h_all - hl
            if min(hl, hr) < params.min_child_weight or min(hl, hr) <= 0:
                continue
            gain = score(gl, hl) + score(gr, hr) - score(g_all, h_all)
            if best is None or gain > best[2]:
                best = (f, b, gain)
    if best is None or best[2] <= 1e-6 or best[2] < params.gamma:
        return None
    return best


@pytest.mark.parametrize(
    "params",
    [
        GBDTParams(),
        GBDTParams(reg_lambda=5.0, min_child_weight=40.0),
        GBDTParams(reg_lambda=0.0, min_child_weight=0.0),
        GBDTParams(gamma=2.0, min_child_weight=100.0),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_search_agrees_with_brute_force(params: GBDTParams, seed: int) -> None:
    bins, grad, hess, positions = _data(seed)
    hist = build_histograms(bins, grad, hess, positions, [1, 2], N_BINS)
    found = find_best_splits(hist, params)
    for node, split in zip([1, 2], found, strict=True):
        rows = positions == node
        expected = _brute_force(bins[rows], grad[rows], hess[rows], params)
        if expected is None:
            assert split is None
            continue
        assert split is not None
        assert (split.feature, split.split_bin) == expected[:2]
        assert split.gain == pytest.approx(expected[2], rel=1e-5)
        assert min(split.left_hess, split.right_hess) >= params.min_child_weight
        left = rows & (bins[:, split.feature] <= split.split_bin)
        assert split.left_grad == pytest.approx(float(grad[left].sum(dtype=np.float64)), abs=1e-9)


def test_gamma_above_the_best_gain_leaves_a_leaf() -> None:
    bins, grad, hess, positions = _data(0)
    hist = build_histograms(bins, grad, hess, positions, [1], N_BINS)
    (split,) = find_best_splits(hist, GBDTParams())
    assert split is not None
    assert find_best_splits(hist, GBDTParams(gamma=split.gain * 1.01)) == [None]


def test_ties_go_to_the_lowest_feature_then_the_lowest_bin() -> None:
    bins, grad, hess, positions = _data(3)
    bins = bins.copy()
    bins[:, 1] = np.where(bins[:, 1] >= 9, bins[:, 1] + 1, bins[:, 1])  # bin 9 left empty
    bins[:, 5] = bins[:, 1]  # an exact copy of the best feature, at a higher index
    hist = build_histograms(bins, grad, hess, positions, [1], N_BINS + 1)
    (split,) = find_best_splits(hist, GBDTParams())
    assert split is not None
    assert split.feature == 1
    # "<= 8" and "<= 9" split the rows alike (bin 9 is empty); the lower bin is chosen
    assert split.split_bin == 8


def test_feature_mask_and_column_ids() -> None:
    bins, grad, hess, positions = _data(0)
    hist = build_histograms(bins, grad, hess, positions, [1], N_BINS)
    (best,) = find_best_splits(hist, GBDTParams())
    assert best is not None
    mask = np.ones(bins.shape[1], dtype=bool)
    mask[best.feature] = False
    (second,) = find_best_splits(hist, GBDTParams(), feature_mask=mask)
    assert second is not None and second.feature != best.feature
    columns = [10, 11, 12, 13, 14, 15]
    (renamed,) = find_best_splits(hist, GBDTParams(), features=columns)
    assert renamed is not None and renamed.feature == columns[best.feature]


def test_leaf_value_is_float32_weight_times_eta() -> None:
    params = GBDTParams(eta=0.3, reg_lambda=1.0)
    value = leaf_value(-12.5, 40.0, params)
    assert value.dtype == np.float32
    assert value == np.float32(np.float32(12.5 / 41.0) * np.float32(0.3))
    assert leaf_value(3.0, 0.5, GBDTParams()) == 0.0  # hessian below min_child_weight
