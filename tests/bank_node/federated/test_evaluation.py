"""Federated evaluation: the pooled AUC and average precision from encrypted, masked score
histograms equal the exact pooled metrics on the handbook's test week, to within 0.002."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from sklearn.metrics import average_precision_score, roc_auc_score

import crypto
from bank_node.data import load_transactions
from bank_node.features import MODEL_INPUTS
from bank_node.federated.evaluation import federated_evaluation, metrics_from_histograms, score_histogram
from bank_node.federated.lockstep import run_lockstep
from bank_node.federated.rounds import simulated_mask_sessions
from consortium.secure_sum import SecureSum
from fedfraud.simulation import SimulationConfig, prepare_banks


@pytest.fixture(scope="module")
def handbook_banks(handbook_dir: Path) -> list[Any]:
    frame = load_transactions(handbook_dir / "transactions.parquet", require_label=True).frame
    return prepare_banks(frame, SimulationConfig(n_banks=5))


def _booster(banks: list[Any], rounds: int, depth: int) -> xgb.Booster:
    X = np.vstack([b.X_train for b in banks])
    y = np.concatenate([b.y_train for b in banks])
    data = xgb.DMatrix(X, label=y, feature_names=list(MODEL_INPUTS))
    return xgb.train({"objective": "binary:logistic", "max_depth": depth, "eta": 0.1, "tree_method": "hist",
                      "nthread": 2}, data, num_boost_round=rounds)


def test_pooled_metrics_from_encrypted_histograms_match_the_exact_ones(handbook_banks: list[Any]) -> None:
    candidate, current = _booster(handbook_banks, 100, 3), _booster(handbook_banks, 5, 1)

    def scorer(booster: xgb.Booster) -> Any:
        return lambda X: booster.predict(xgb.DMatrix(X, feature_names=list(MODEL_INPUTS)))

    names = [b.name for b in handbook_banks]
    secret = crypto.generate("ckks")
    aggregator = SecureSum(context=crypto.load_context(secret.public_context(), require_public=True))
    result = run_lockstep(
        {b.name: federated_evaluation([scorer(candidate), scorer(current)], b.X_test, b.test["label"].to_numpy(dtype=np.float64))
         for b in handbook_banks},
        contexts={name: secret for name in names}, aggregator=aggregator,
        masks=simulated_mask_sessions(names, "eval-run"),
    )
    pooled = {name: result.results[name] for name in names}
    assert len({repr(metrics) for metrics in pooled.values()}) == 1  # every bank computes the same numbers

    X = np.vstack([b.X_test for b in handbook_banks])
    y = np.concatenate([b.test["label"].to_numpy(dtype=np.float64) for b in handbook_banks])
    for booster, metrics in zip((candidate, current), pooled["bank-1"], strict=True):
        scores = scorer(booster)(X)
        assert abs(metrics.auc - roc_auc_score(y, scores)) <= 0.002
        assert abs(metrics.average_precision - average_precision_score(y, scores)) <= 0.002
        assert (metrics.rows, metrics.frauds) == (len(y), int(y.sum()))
    assert pooled["bank-1"][0].auc > pooled["bank-1"][1].auc  # the gate can tell the better model


def test_histogram_metrics_are_exact_when_no_two_classes_share_a_bin() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.0001, 0.9999, 400).round(3)
    labels = (rng.uniform(size=400) < scores).astype(int)
    metrics = metrics_from_histograms(score_histogram(scores, labels, n_bins=1 << 16))
    assert metrics.auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.average_precision == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    with pytest.raises(ValueError, match="0 frauds"):
        metrics_from_histograms(score_histogram(scores, np.zeros(400), n_bins=64))
