"""XGBoost JSON export: ``xgboost.Booster`` loads it and scores raw features as we do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import xgboost as xgb

from bank_node.federated.ensemble import GBDTModel
from bank_node.federated.local_booster import train_local
from bank_node.federated.params import GBDTParams
from bank_node.federated.xgb_export import (
    from_xgboost_json,
    load_xgboost_json,
    save_xgboost_json,
    to_xgboost_json,
)

if TYPE_CHECKING:
    from conftest import BankData

PARAMS = GBDTParams(n_trees=20, max_depth=5, eta=0.3, base_score=0.2, scale_pos_weight=2.0)


@pytest.fixture(scope="module")
def model(gbdt_data: BankData) -> GBDTModel:
    return train_local(gbdt_data.party_data(), params=PARAMS, cuts=gbdt_data.cuts)


def test_booster_predicts_raw_features_like_the_model(
    model: GBDTModel, gbdt_data: BankData, tmp_path: Path
) -> None:
    path = tmp_path / "model.json"
    save_xgboost_json(model, path, params=PARAMS)
    booster = xgb.Booster(model_file=str(path))
    # unseen rows too: other data from the same source, plus values beyond every cut
    X = np.vstack([gbdt_data.X, gbdt_data.X[:50] * 3.7 - 1.0, np.full((2, 10), 1e9, np.float32)])
    dmatrix = xgb.DMatrix(X)
    margin = booster.predict(dmatrix, output_margin=True)
    assert np.abs(margin - model.predict_margin(X)).max() <= 1e-6
    assert np.abs(booster.predict(dmatrix) - model.predict_proba(X)).max() <= 1e-6


def test_thresholds_route_rows_as_their_bins_do(model: GBDTModel, gbdt_data: BankData) -> None:
    np.testing.assert_array_equal(
        model.predict_margin(gbdt_data.X), model.predict_margin_bins(gbdt_data.bins)
    )
    for tree in model.trees:
        np.testing.assert_array_equal(tree.apply(gbdt_data.X), tree.apply_bins(gbdt_data.bins))


def test_missing_values_go_right_in_both(model: GBDTModel, gbdt_data: BankData) -> None:
    X = gbdt_data.X[:200].copy()
    X[::3, 0] = np.nan
    X[1::3, 2] = np.nan
    booster = xgb.Booster(model_file=bytearray(json.dumps(to_xgboost_json(model)).encode()))
    margin = booster.predict(xgb.DMatrix(X), output_margin=True)
    assert np.abs(margin - model.predict_margin(X)).max() <= 1e-6


def test_export_round_trips_with_cuts(model: GBDTModel, gbdt_data: BankData, tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    save_xgboost_json(model, path, feature_names=[f"f{i}" for i in range(10)])
    back = load_xgboost_json(path, cuts=gbdt_data.cuts)
    assert back.base_score == pytest.approx(model.base_score)
    for a, b in zip(model.trees, back.trees, strict=True):
        np.testing.assert_array_equal(a.split_bin, b.split_bin)
        np.testing.assert_array_equal(a.threshold, b.threshold)
        np.testing.assert_array_equal(a.value, b.value)
    np.testing.assert_array_equal(back.predict_margin(gbdt_data.X), model.predict_margin(gbdt_data.X))
    assert xgb.Booster(model_file=str(path)).feature_names == [f"f{i}" for i in range(10)]


def test_xgboost_own_model_reads_back(gbdt_data: BankData, tmp_path: Path) -> None:
    dtrain = xgb.DMatrix(gbdt_data.bins.astype(np.float32), label=gbdt_data.y)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "base_score": 0.4}, dtrain, 5)
    booster.save_model(str(tmp_path / "xgb.json"))
    ours = load_xgboost_json(tmp_path / "xgb.json")
    np.testing.assert_array_equal(
        ours.predict_margin_bins(gbdt_data.bins), booster.predict(dtrain, output_margin=True)
    )


def test_other_objectives_are_refused(model: GBDTModel) -> None:
    document = to_xgboost_json(model)
    document["learner"]["objective"]["name"] = "reg:squarederror"
    with pytest.raises(ValueError, match="binary:logistic"):
        from_xgboost_json(document)
