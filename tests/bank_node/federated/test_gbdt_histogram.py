"""Histograms: bincount equals a row loop; payload packing; the sibling trick."""

from __future__ import annotations

import numpy as np
import pytest

from bank_node.federated.histogram import (
    build_histograms,
    choose_children_to_build,
    flatten_histograms,
    node_totals,
    payload_length,
    subtract_histograms,
    unflatten_histograms,
)


@pytest.fixture
def rows() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    n = 1500
    bins = rng.integers(0, 12, size=(n, 5)).astype(np.uint8)
    grad = rng.normal(size=n).astype(np.float32)
    hess = rng.uniform(0.01, 0.25, n).astype(np.float32)
    positions = rng.choice([3, 4, 5, 6], size=n).astype(np.int32)
    return bins, grad, hess, positions


def test_histograms_equal_a_row_loop(rows: tuple[np.ndarray, ...]) -> None:
    bins, grad, hess, positions = rows
    nodes = [6, 3, 5]  # any order; node 4 is not requested
    features = [0, 2, 4]
    hist = build_histograms(bins, grad, hess, positions, nodes, 16, features=features)
    expected = np.zeros((3, 3, 16, 2))
    for r in range(bins.shape[0]):
        if positions[r] not in nodes:
            continue
        i = nodes.index(int(positions[r]))
        for k, f in enumerate(features):
            expected[i, k, bins[r, f], 0] += np.float64(grad[r])
            expected[i, k, bins[r, f], 1] += np.float64(hess[r])
    assert hist.shape == (3, 3, 16, 2) and hist.dtype == np.float64
    np.testing.assert_array_equal(hist, expected)  # same order of additions: bit-equal


def test_node_totals_add_the_first_feature_in_order(rows: tuple[np.ndarray, ...]) -> None:
    bins, grad, hess, positions = rows
    hist = build_histograms(bins, grad, hess, positions, [3, 4], 16)
    totals = node_totals(hist)
    for i, node in enumerate([3, 4]):
        mask = positions == node
        expected = [grad[mask].sum(dtype=np.float64), hess[mask].sum(dtype=np.float64)]
        np.testing.assert_allclose(totals[i], expected)


def test_sibling_equals_parent_minus_built_child(rows: tuple[np.ndarray, ...]) -> None:
    bins, grad, hess, positions = rows
    parent = build_histograms(bins, grad, hess, np.zeros_like(positions), [0], 16)
    children = build_histograms(bins, grad, hess, np.where(positions <= 4, 1, 2), [1, 2], 16)
    derived = subtract_histograms(parent, children[:1])
    np.testing.assert_allclose(derived[0], children[1], atol=1e-12)


def test_smaller_hessian_child_is_built() -> None:
    build, derive = choose_children_to_build([1, 3, 5], [2, 4, 6], [5.0, 1.0, 2.0], [3.0, 7.0, 2.0])
    np.testing.assert_array_equal(build, [2, 3, 5])  # ties build the left child
    np.testing.assert_array_equal(derive, [1, 4, 6])


def test_packed_payload_round_trips_and_drops_padding(rows: tuple[np.ndarray, ...]) -> None:
    bins, grad, hess, positions = rows
    bins = bins.copy()
    bins[:, 1] %= 2  # a 0/1 feature: 2 bins out of 16
    per_feature = np.array([12, 2, 12, 12, 12])
    hist = build_histograms(bins, grad, hess, positions, [3, 4, 5, 6], 16)
    vector = flatten_histograms(hist, per_feature)
    assert vector.shape == (payload_length(4, per_feature),) == (4 * 2 * 50,)
    back = unflatten_histograms(vector, n_nodes=4, n_bins=16, bins_per_feature=per_feature)
    np.testing.assert_array_equal(back, hist)
    dense = flatten_histograms(hist)
    assert dense.size == hist.size
    back_dense = unflatten_histograms(
        dense, n_nodes=4, n_bins=16, bins_per_feature=per_feature, packed=False
    )
    np.testing.assert_array_equal(back_dense, hist)


def test_payload_of_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="values"):
        unflatten_histograms(np.zeros(7), n_nodes=1, n_bins=4, bins_per_feature=[4])
