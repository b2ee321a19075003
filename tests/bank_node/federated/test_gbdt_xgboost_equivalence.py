"""THE equivalence: summing bank histograms grows XGBoost's ``hist`` trees on the pooled rows.

XGBoost trains on the pooled rows with every feature already replaced by its global bin
index, so its candidate cuts are the integers 1..K-1 and its split ``x < c`` is our split
"bin <= c - 1". Our side never sees pooled rows: it sums the four banks' histograms.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import xgboost as xgb

from bank_node.federated.ensemble import GBDTModel
from bank_node.federated.local_booster import train_local
from bank_node.federated.params import GBDTParams
from bank_node.federated.tree import Tree

if TYPE_CHECKING:
    from conftest import BankData

CASES = {
    "depth3-defaults": GBDTParams(n_trees=25, max_depth=3, eta=0.3),
    "depth6-regularised": GBDTParams(
        n_trees=25,
        max_depth=6,
        eta=0.2,
        reg_lambda=2.0,
        gamma=0.5,
        min_child_weight=3.0,
        base_score=0.15,
        scale_pos_weight=4.0,
    ),
    "depth4-small-children": GBDTParams(
        n_trees=20, max_depth=4, eta=0.5, reg_lambda=0.5, min_child_weight=0.1, base_score=0.3
    ),
}


def _xgboost(train: Any, data: BankData, params: GBDTParams) -> dict[str, Any]:
    booster = train(data.bins, data.y, params)
    dtrain = xgb.DMatrix(data.bins.astype(np.float32), label=data.y)
    return {
        "trees": json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"],
        "margin": booster.predict(dtrain, output_margin=True),
    }


def _assert_same_tree(ours: Tree, theirs: dict[str, Any], where: str) -> int:
    """Walk both trees from the root; return the number of leaves compared."""
    left, right = theirs["left_children"], theirs["right_children"]
    feature, condition = theirs["split_indices"], theirs["split_conditions"]
    leaves = 0
    stack = [(0, 0)]
    while stack:
        a, b = stack.pop()
        at = f"{where}, node {a}"
        assert (ours.left[a] < 0) == (left[b] < 0), f"{at}: leaf in one tree only"
        if left[b] < 0:
            assert abs(float(ours.value[a]) - condition[b]) <= 1e-6, f"{at}: leaf values differ"
            leaves += 1
            continue
        assert ours.feature[a] == feature[b], f"{at}: split features differ"
        assert ours.split_bin[a] == int(condition[b]) - 1, f"{at}: split bins differ"
        stack += [(int(ours.left[a]), left[b]), (int(ours.right[a]), right[b])]
    return leaves


@pytest.mark.parametrize("case", sorted(CASES))
def test_summed_bank_histograms_grow_xgboost_trees(gbdt_data: BankData, case: str, xgboost_on_bins: Any) -> None:
    params = CASES[case]
    model = train_local(gbdt_data.party_data(), params=params)
    reference = _xgboost(xgboost_on_bins, gbdt_data, params)
    assert len(model.trees) == len(reference["trees"]) == params.n_trees
    leaves = sum(
        _assert_same_tree(tree, theirs, f"{case}, tree {t}")
        for t, (tree, theirs) in enumerate(zip(model.trees, reference["trees"], strict=True))
    )
    assert leaves > params.n_trees * 2  # the trees are not stumps
    # XGBoost numbers nodes the same way, level by level
    for tree, theirs in zip(model.trees, reference["trees"], strict=True):
        np.testing.assert_array_equal(tree.left, theirs["left_children"])
        np.testing.assert_allclose(tree.loss_change, theirs["loss_changes"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.predict_margin_bins(gbdt_data.bins), reference["margin"], atol=1e-5)


def test_256_bins_and_a_different_party_split(gbdt_data_256: BankData, xgboost_on_bins: Any) -> None:
    params = GBDTParams(n_trees=20, max_depth=5, eta=0.3)
    bins, y = gbdt_data_256.bins, gbdt_data_256.y
    order = np.random.default_rng(0).permutation(len(y))  # banks hold arbitrary rows
    parties = [(bins[i], y[i]) for i in np.array_split(order, 5)]
    model = train_local(parties, params=params)
    reference = _xgboost(xgboost_on_bins, gbdt_data_256, params)
    for t, (tree, theirs) in enumerate(zip(model.trees, reference["trees"], strict=True)):
        _assert_same_tree(tree, theirs, f"tree {t}")
    assert int(bins.max()) > 200


def test_one_bank_alone_is_the_pooled_model(gbdt_data: BankData) -> None:
    params = GBDTParams(n_trees=10, max_depth=4, eta=0.3)
    pooled: GBDTModel = train_local([(gbdt_data.bins, gbdt_data.y)], params=params)
    federated = train_local(gbdt_data.party_data(), params=params)
    for a, b in zip(pooled.trees, federated.trees, strict=True):
        np.testing.assert_array_equal(a.feature, b.feature)
        np.testing.assert_array_equal(a.split_bin, b.split_bin)
        np.testing.assert_allclose(a.value, b.value, atol=1e-6)
