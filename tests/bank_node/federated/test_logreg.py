"""Federated logistic regression reaches the model fitted on all banks' rows pooled."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import crypto
from bank_node.federated.inmemory import run_banks
from bank_node.federated.logreg import LogRegModel, LogRegParams, federated_logreg
from consortium.secure_sum import SecureSum


def bank_data() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    X, y = make_classification(n_samples=5000, n_features=8, weights=[0.96], random_state=3)
    X[:, 0] = X[:, 0] * 40 + 60  # an amount-like column far from standard scale
    parts = np.split(np.random.default_rng(0).permutation(len(y)), [600, 2100])  # uneven banks
    return X, y, parts


@pytest.mark.parametrize("scheme", ["plain", "ckks", "paillier"])
def test_federated_equals_pooled_fit(scheme: str) -> None:
    X, y, parts = bank_data()
    secret = crypto.generate(scheme, **({"key_bits": 1024} if scheme == "paillier" else {}))
    aggregator = SecureSum(context=crypto.load_context(secret.public_context()))
    banks = {f"bank-{i}": part for i, part in enumerate(parts)}
    results, runners = run_banks(
        {bank: (lambda rows=rows: federated_logreg(X[rows], y[rows])) for bank, rows in banks.items()},
        contexts={bank: secret for bank in banks},
        aggregator=aggregator,
    )
    models = list(results.values())
    assert all(model == models[0] for model in models), "every bank must derive the same model"
    scaler = StandardScaler().fit(X)
    pooled = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-10, max_iter=1000)
    pooled.fit(scaler.transform(X), y)
    expected = pooled.predict_proba(scaler.transform(X))[:, 1]
    np.testing.assert_allclose(models[0].predict_proba(X), expected, atol=1e-5)
    assert all(runner.ledger.rounds == models[0].rounds + 3 for runner in runners.values())


def test_model_json_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = LogRegModel(feature_names=("a", "b"), mean=(1.0, 2.0), scale=(3.0, 4.0), coef=(0.5, -0.25), intercept=0.1)
    path = tmp_path / "m.json"
    model.save(path)
    assert LogRegModel.from_json(path.read_text()) == model
    with pytest.raises(ValueError, match="not a fedfraud logistic-regression model"):
        LogRegModel.from_json('{"model": "xgboost"}')


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(ValueError, match="C must be positive"):
        LogRegParams(C=0)
    with pytest.raises(ValueError, match="class_weight"):
        LogRegParams(class_weight="auto")  # type: ignore[arg-type]
