"""The level protocol: what banks encrypt, how the shared grower answers, and the samplers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from bank_node.federated.binning import bins_per_feature
from bank_node.federated.grower import LevelRequest, TreeGrower
from bank_node.federated.local_booster import train_local
from bank_node.federated.objective import base_margin
from bank_node.federated.params import GBDTParams
from bank_node.federated.party import (
    advance_positions,
    make_level_payload,
    tree_gradients,
    update_margin,
)
from bank_node.federated.sampling import column_sample, row_sample_mask
from bank_node.federated.tree import Tree, TreeBuilder

if TYPE_CHECKING:
    from conftest import BankData


def _grow_with_noise(
    data: BankData, params: GBDTParams, noise: float, tie_tolerance: float = 0.0
) -> tuple[Tree, list[LevelRequest]]:
    """Drive one tree as the encrypted protocol does, with relative noise on each decrypted sum."""
    rng = np.random.default_rng(0)
    parties = [(data.bins[s], data.y[s]) for s in data.parties]
    grower = TreeGrower(
        params=params,
        bins_per_feature=bins_per_feature(data.cuts),
        cuts=data.cuts,
        tie_tolerance=tie_tolerance,
    )
    start = base_margin(params.base_score)
    grads = [tree_gradients(np.full(len(y), start), y, params, tree_index=0) for _, y in parties]
    positions = [np.zeros(len(y), dtype=np.int32) for _, y in parties]
    requests = []
    while (request := grower.request) is not None:
        requests.append(request)
        payloads = [
            make_level_payload(b, g, h, pos, request)
            for (b, _), (g, h), pos in zip(parties, grads, positions, strict=True)
        ]
        assert all(p.shape == (request.payload_length,) for p in payloads)
        total = np.sum(payloads, axis=0)
        total = total * (1.0 + noise * rng.standard_normal(total.size))
        result = grower.apply_level_sum(total)
        positions = [
            advance_positions(b, pos, result.splits)
            for (b, _), pos in zip(parties, positions, strict=True)
        ]
    tree = grower.tree()
    for (b, _), pos in zip(parties, positions, strict=True):
        np.testing.assert_array_equal(pos, tree.apply_bins(b))  # rows end in their leaves
    return tree, requests


def test_requests_build_one_child_per_split(gbdt_data: BankData) -> None:
    params = GBDTParams(max_depth=4)
    tree, requests = _grow_with_noise(gbdt_data, params, noise=0.0)
    assert [r.depth for r in requests] == [0, 1, 2, 3]
    np.testing.assert_array_equal(requests[0].nodes, [0])
    per_node = 2 * int(bins_per_feature(gbdt_data.cuts).sum())
    for r in requests:
        assert r.payload_length == per_node * r.nodes.size
    for r in requests[1:]:
        for node in r.nodes:  # the built child has the smaller hessian sum of its pair
            parent = tree.parent[node]
            sibling = tree.left[parent] + tree.right[parent] - node
            assert tree.sum_hess[node] <= tree.sum_hess[sibling]
    assert requests[3].nodes.size == 4  # 8 nodes at depth 3, half of them built


def test_ckks_like_noise_keeps_the_model(gbdt_data: BankData) -> None:
    params = GBDTParams(max_depth=5)
    exact, _ = _grow_with_noise(gbdt_data, params, noise=0.0)
    noisy, _ = _grow_with_noise(gbdt_data, params, noise=1e-9)
    # Noise may break an exact tie between two features that split the rows alike (this
    # data has one): the tree can differ, its predictions on the training rows cannot.
    np.testing.assert_allclose(
        noisy.predict_bins(gbdt_data.bins), exact.predict_bins(gbdt_data.bins), atol=1e-6
    )
    np.testing.assert_allclose(noisy.loss_change, exact.loss_change, rtol=1e-5, atol=1e-5)


def test_tie_tolerance_restores_xgboost_choice_under_noise(gbdt_data: BankData) -> None:
    params = GBDTParams(max_depth=5)
    exact, _ = _grow_with_noise(gbdt_data, params, noise=0.0)
    noisy, _ = _grow_with_noise(gbdt_data, params, noise=1e-9, tie_tolerance=1e-6)
    np.testing.assert_array_equal(exact.feature, noisy.feature)
    np.testing.assert_array_equal(exact.split_bin, noisy.split_bin)
    np.testing.assert_allclose(exact.value, noisy.value, atol=1e-6)


def test_finished_grower_refuses_more_sums(gbdt_data: BankData) -> None:
    params = GBDTParams(max_depth=1)
    grower = TreeGrower(params=params, bins_per_feature=bins_per_feature(gbdt_data.cuts))
    with pytest.raises(RuntimeError, match="not finished"):
        grower.tree()
    request = grower.request
    assert request is not None
    margin = np.zeros(len(gbdt_data.y), np.float32)
    g, h = tree_gradients(margin, gbdt_data.y, params, tree_index=0)
    at_root = np.zeros(len(g), np.int32)
    grower.apply_level_sum(make_level_payload(gbdt_data.bins, g, h, at_root, request))
    assert grower.finished and grower.tree().n_nodes == 3
    with pytest.raises(RuntimeError, match="finished"):
        grower.apply_level_sum(np.zeros(request.payload_length))


def test_column_sample_is_shared_and_restricts_splits(gbdt_data: BankData) -> None:
    params = GBDTParams(n_trees=8, max_depth=3, colsample_bytree=0.5, seed=3)
    samples = [column_sample(10, params, t) for t in range(8)]
    assert all(s.size == 5 and np.all(np.diff(s) > 0) for s in samples)
    assert len({tuple(s) for s in samples}) > 1
    np.testing.assert_array_equal(samples[2], column_sample(10, params, 2))
    model = train_local(gbdt_data.party_data(), params=params, cuts=gbdt_data.cuts)
    for tree, sample in zip(model.trees, samples, strict=True):
        assert set(tree.feature[~tree.is_leaf]) <= set(sample.tolist())


def test_row_sample_is_seeded_per_bank_and_zeroes_gradients() -> None:
    params = GBDTParams(subsample=0.7, seed=5)
    a = row_sample_mask(20_000, params, tree_index=1, party_index=0)
    assert abs(a.mean() - 0.7) < 0.02
    np.testing.assert_array_equal(a, row_sample_mask(20_000, params, tree_index=1, party_index=0))
    assert not np.array_equal(a, row_sample_mask(20_000, params, tree_index=1, party_index=1))
    assert not np.array_equal(a, row_sample_mask(20_000, params, tree_index=2, party_index=0))
    y = np.zeros(20_000, np.float32)
    g, h = tree_gradients(np.zeros(20_000, np.float32), y, params, tree_index=1, party_index=0)
    assert np.all(g[~a] == 0) and np.all(h[~a] == 0) and np.all(h[a] > 0)


def test_subsampled_training_is_reproducible(gbdt_data: BankData) -> None:
    params = GBDTParams(n_trees=5, subsample=0.8, colsample_bytree=0.8, seed=1)
    first = train_local(gbdt_data.party_data(), params=params, cuts=gbdt_data.cuts)
    second = train_local(gbdt_data.party_data(), params=params, cuts=gbdt_data.cuts)
    np.testing.assert_array_equal(first.predict_margin(gbdt_data.X), second.predict_margin(gbdt_data.X))


def test_margin_update_adds_leaf_values_in_float32() -> None:
    builder = TreeBuilder(root_value=0.0, root_weight=0.0, root_hess=10.0)
    builder.split(
        0,
        feature=0,
        split_bin=0,
        threshold=1.0,
        gain=1.0,
        weight=0.0,
        hess=10.0,
        left_value=0.1,
        left_hess=5.0,
        right_value=-0.2,
        right_hess=5.0,
    )
    tree = builder.build()
    margin = update_margin(np.array([1.0, 1.0], np.float32), tree, np.array([1, 2]))
    assert margin.dtype == np.float32
    expected = [np.float32(1.0) + np.float32(0.1), np.float32(1.0) - np.float32(0.2)]
    np.testing.assert_array_equal(margin, expected)


def test_federated_model_separates_frauds(gbdt_data: BankData) -> None:
    parties = [(gbdt_data.bins[s], gbdt_data.y[s]) for s in np.array_split(np.arange(3000), 3)]
    params = GBDTParams(n_trees=30, max_depth=3, eta=0.3)
    model = train_local(parties, params=params, cuts=gbdt_data.cuts)
    held_out = slice(3000, None)
    auc = roc_auc_score(gbdt_data.y[held_out], model.predict_proba(gbdt_data.X[held_out]))
    assert auc > 0.85
