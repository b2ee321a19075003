"""Logistic gradients bit-identical to XGBoost's, including libm's expf."""

from __future__ import annotations

import ctypes
import ctypes.util
import json

import numpy as np
import pytest
import xgboost as xgb

from bank_node.federated.objective import (
    EXPF_FROM_LIBM,
    base_margin,
    expf,
    logistic_gradients,
    sigmoid,
)


@pytest.mark.skipif(not EXPF_FROM_LIBM, reason="no C library expf on this platform")
def test_expf_equals_libm_bit_for_bit() -> None:
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    c_expf = libm.expf
    c_expf.restype, c_expf.argtypes = ctypes.c_float, [ctypes.c_float]
    rng = np.random.default_rng(3)
    x = np.concatenate(
        [
            (rng.normal(size=150_000) * 6).astype(np.float32),
            rng.uniform(-110, 88.7, 50_000).astype(np.float32),
            np.array([0.0, -0.0, 88.7, -87.33, -103.9, -200.0, 1e-30], dtype=np.float32),
        ]
    )
    expected = np.array([c_expf(v) for v in x.tolist()], dtype=np.float32)
    np.testing.assert_array_equal(expf(x).view(np.uint32), expected.view(np.uint32))


def test_gradients_grow_the_same_trees_as_xgboost_logistic() -> None:
    rng = np.random.default_rng(5)
    X = rng.integers(0, 30, size=(2000, 6)).astype(np.float32)
    y = (X[:, 0] + 3 * rng.normal(size=2000) > 18).astype(np.float32)
    dtrain = xgb.DMatrix(X, label=y)
    common = {"tree_method": "hist", "max_depth": 3, "eta": 0.3, "nthread": 1, "scale_pos_weight": 2.5}
    builtin = xgb.train({**common, "objective": "binary:logistic", "base_score": 0.5}, dtrain, 10)

    def ours(margin: np.ndarray, data: xgb.DMatrix) -> tuple[np.ndarray, np.ndarray]:
        return logistic_gradients(margin.astype(np.float32), data.get_label(), scale_pos_weight=2.5)

    custom = xgb.train(
        {**common, "objective": "binary:logitraw", "base_score": 0.0, "disable_default_eval_metric": 1},
        dtrain,
        10,
        obj=ours,
    )
    trees_a = json.loads(builtin.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    trees_b = json.loads(custom.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    for a, b in zip(trees_a, trees_b, strict=True):
        assert a["split_conditions"] == b["split_conditions"]
        assert a["loss_changes"] == b["loss_changes"]  # equal gains need equal gradients


@pytest.mark.parametrize("base_score", [0.5, 0.3, 0.02, 0.9, 0.123456])
def test_base_margin_equals_xgboost(base_score: float) -> None:
    X = np.arange(20, dtype=np.float32).reshape(10, 2)
    dtrain = xgb.DMatrix(X, label=np.arange(10) % 2)
    booster = xgb.train(
        {"objective": "binary:logistic", "base_score": base_score, "eta": 0.0, "max_depth": 1}, dtrain, 1
    )
    assert booster.predict(dtrain, output_margin=True)[0] == base_margin(base_score)


def test_gradients_follow_the_logistic_loss() -> None:
    margin = np.array([-30.0, -1.0, 0.0, 2.0, 100.0], dtype=np.float32)
    y = np.array([0, 1, 1, 0, 1], dtype=np.float32)
    grad, hess = logistic_gradients(margin, y, scale_pos_weight=3.0)
    p = 1.0 / (1.0 + np.exp(-margin.astype(np.float64)))
    weight = np.where(y == 1, 3.0, 1.0)
    np.testing.assert_allclose(grad, (p - y) * weight, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(hess, np.maximum(p * (1 - p), 1e-16) * weight, rtol=1e-5, atol=1e-15)
    assert grad.dtype == hess.dtype == np.float32
    assert hess.min() > 0
    assert sigmoid(np.float32(0.0)) == np.float32(0.5)


def test_labels_outside_unit_interval_are_refused() -> None:
    with pytest.raises(ValueError, match="labels"):
        logistic_gradients(np.zeros(2, dtype=np.float32), np.array([0.0, 2.0]))
