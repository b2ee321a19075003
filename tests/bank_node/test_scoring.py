"""Scores, decisions' inputs and reasons from the consortium's model files: the scores are the
model's own (XGBoost's predict, the logistic model's), and the reasons add up to the margin."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

import crypto
from bank_node.agent.state import StateDir
from bank_node.agent.training import TrainingSet, prepare_run, training_rows
from bank_node.features import MODEL_INPUTS
from bank_node.federated.lockstep import run_lockstep
from bank_node.generator import generate_transactions
import bank_node.treeshap as treeshap
from bank_node.scoring import current_model_file, load_model
from consortium.secure_sum import SecureSum
from fedfraud.simulation import partition_customers
from schemas.transaction import to_canonical


@pytest.fixture(scope="module")
def rows() -> dict[str, TrainingSet]:
    raw = generate_transactions(n_customers=450, n_terminals=500, days=50, seed=5, start_date="2018-04-01")
    frame = to_canonical(raw, None, require_label=True)
    owner = partition_customers(frame["customer_id"], (0.5, 0.3, 0.2), seed=0)
    return {f"bank-{i + 1}": training_rows(frame[owner == i], train_start=pd.Timestamp("2018-05-10").date(),
                                           train_days=7) for i in range(3)}


def _published(model: str, params: dict[str, object], rows: dict[str, TrainingSet]) -> bytes:
    """The file the banks would propose (the same bytes on every bank)."""
    secret = crypto.generate("plain")
    prepared = {b: prepare_run(model, params, r, party_index=i) for i, (b, r) in enumerate(sorted(rows.items()))}
    result = run_lockstep({b: p.algorithm() for b, p in prepared.items()}, contexts=dict.fromkeys(rows, secret),
                          aggregator=SecureSum(context=crypto.load_context(secret.public_context(), require_public=True)))
    return prepared["bank-1"].serialize(result.results["bank-1"])


def test_xgboost_scores_are_the_boosters_and_reasons_add_up_to_the_margin(rows: dict[str, TrainingSet]) -> None:
    body = _published("xgboost", {"n_trees": 8, "max_depth": 3, "n_bins": 32}, rows)
    model = load_model(body, version="3", family="xgboost", exact_reasons_max=50)
    X = rows["bank-1"].X[:400]
    booster = xgb.Booster()
    booster.load_model(bytearray(body))
    data = xgb.DMatrix(X, feature_names=list(MODEL_INPUTS))

    exact = model.score(X[:50])
    assert exact.exact
    np.testing.assert_allclose(exact.probability, booster.predict(data)[:50], rtol=0, atol=0)
    margins = booster.predict(data, output_margin=True)
    np.testing.assert_allclose(exact.contributions.sum(axis=1), margins[:50], atol=1e-5)
    # read from the model's tables, they are XGBoost's exact TreeSHAP values (and the probabilities
    # above, equal to predict's, came from the same look-ups)
    assert model.tables is not None and model.tables.base_margin is not None
    np.testing.assert_allclose(exact.contributions, booster.predict(data, pred_contribs=True)[:50], rtol=0, atol=1e-6)
    # a row with a missing value is XGBoost's to attribute (it sends it its own way at each split)
    missing = X[:5].copy()
    missing[2, 0] = np.nan
    gap = model.score(missing)
    holes = xgb.DMatrix(missing, feature_names=list(MODEL_INPUTS))
    assert gap.exact
    np.testing.assert_array_equal(gap.contributions, booster.predict(holes, pred_contribs=True))
    np.testing.assert_array_equal(gap.probability, booster.predict(holes))
    approx = model.score(X)  # over the limit: XGBoost's cheap approximation, which also adds up
    assert not approx.exact
    np.testing.assert_allclose(approx.probability, booster.predict(data))
    np.testing.assert_allclose(approx.contributions.sum(axis=1), margins, atol=1e-5)

    riskiest = int(np.argmax(exact.probability))
    reasons = exact.reasons(X[:50], riskiest, top=3)
    assert len(reasons) == 3 and all(r.feature in MODEL_INPUTS for r in reasons)
    sizes = [abs(r.contribution) for r in reasons]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == np.abs(exact.contributions[riskiest, :-1]).max()
    assert reasons[0].value == X[riskiest, MODEL_INPUTS.index(reasons[0].feature)]


def test_one_transactions_reasons_are_its_row_of_a_batchs_ties_in_input_order() -> None:
    """A single transaction's reasons are ranked on their own path; they are the same as its row's
    among many, ties (equal size, either sign) kept in input order."""
    from bank_node.scoring import Scores

    rng = np.random.default_rng(5)
    n = len(MODEL_INPUTS)
    contributions = np.round(rng.normal(size=(80, n + 1)), 1)  # to one decimal: many ties
    contributions[0, :-1] = 0.0
    contributions[1, :-1] = 0.1
    contributions[1, :5] = [0.5, -0.5, 0.5, -0.0, 0.0]
    X = rng.normal(size=(80, n))
    scores = Scores(probability=np.zeros(80), contributions=contributions, exact=True)
    batch = scores.reason_records(X, top=4)
    assert [r["feature"] for r in batch[1][:3]] == list(MODEL_INPUTS[:3])
    for i in range(80):
        assert scores.reason_records(X[i : i + 1], top=4, rows=slice(i, i + 1)) == [batch[i]]


def test_a_model_whose_tables_are_declined_or_inexact_is_scored_by_xgboost(
    rows: dict[str, TrainingSet], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What ops/README.md says: a model over the tables' memory budget is explained by XGBoost, and
    the log says why at load; tables whose probability is not XGBoost's bit for bit leave it to
    XGBoost. Either way the answers are XGBoost's own."""
    body = _published("xgboost", {"n_trees": 8, "max_depth": 3, "n_bins": 32}, rows)
    X = rows["bank-1"].X[:20]
    booster = xgb.Booster()
    booster.load_model(bytearray(body))
    data = xgb.DMatrix(X, feature_names=list(MODEL_INPUTS))

    monkeypatch.setattr(treeshap, "DEFAULT_TABLE_BUDGET_BYTES", 1000)
    with caplog.at_level(logging.WARNING, logger="bank_node.scoring"):
        declined = load_model(body, version="4", family="xgboost")
    assert declined.tables is None
    assert "model 4: exact reasons from XGBoost's own TreeSHAP" in caplog.text and "over the budget" in caplog.text
    scores = declined.score(X)
    assert scores.exact
    np.testing.assert_array_equal(scores.contributions, booster.predict(data, pred_contribs=True))
    np.testing.assert_array_equal(scores.probability, booster.predict(data))
    monkeypatch.undo()

    exact_sigmoid = treeshap._sigmoid
    monkeypatch.setattr(treeshap, "_sigmoid", lambda margin: np.nextafter(exact_sigmoid(margin), np.float32(1)))
    inexact = load_model(body, version="5", family="xgboost")
    assert inexact.tables is not None and inexact.tables.base_margin is None  # contributions only
    scores = inexact.score(X)
    np.testing.assert_array_equal(scores.probability, booster.predict(data))
    np.testing.assert_allclose(scores.contributions, booster.predict(data, pred_contribs=True), rtol=0, atol=1e-6)


def test_logistic_scores_and_reasons_are_exact(rows: dict[str, TrainingSet]) -> None:
    from bank_node.federated.logreg import LogRegModel

    body = _published("logreg", {"max_rounds": 6}, rows)
    model = load_model(body, version="4", family="logreg")
    X = rows["bank-2"].X
    scores = model.score(X)
    reference = LogRegModel.from_json(body.decode())
    np.testing.assert_allclose(scores.probability, reference.predict_proba(X))
    np.testing.assert_allclose(scores.contributions.sum(axis=1), reference.decision_function(X), atol=1e-9)


def test_a_model_with_other_inputs_or_of_another_family_is_refused(rows: dict[str, TrainingSet]) -> None:
    body = _published("xgboost", {"n_trees": 2, "max_depth": 2, "n_bins": 16}, rows)
    renamed = json.loads(body)
    renamed["learner"]["feature_names"][0] = "amount"
    with pytest.raises(ValueError, match="takes inputs"):
        load_model(json.dumps(renamed).encode(), version="5", family="xgboost")
    with pytest.raises(ValueError, match="not a fedfraud logistic-regression model"):
        load_model(body, version="5", family="logreg")


def test_the_model_is_found_from_another_working_directory_and_in_a_moved_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent ran as `fedfraud bank agent --state-dir node` in tmp_path: its run records hold
    # model paths relative to that directory. The service runs elsewhere (systemd, another shell).
    monkeypatch.chdir(tmp_path)
    agent_state = StateDir("node")
    agent_state.ensure()
    path = agent_state.save_model("1", "xgboost", b'{"model": 1}')
    agent_state.update_run("run-1", {"status": "published", "model": "xgboost", "version": "1",
                                     "model_file": str(path), "promoted": True, "matches_proposal": True})
    assert not path.is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    found = current_model_file(StateDir(tmp_path / "node"), "xgboost")
    assert found is not None and found[1].read_bytes() == b'{"model": 1}'
    # The state directory restored at another path (a backup, a new disk) serves its own copy.
    (tmp_path / "node").rename(tmp_path / "restored")
    found = current_model_file(StateDir(tmp_path / "restored"), "xgboost")
    assert found is not None and found[1] == tmp_path / "restored" / "models" / "1-xgboost.json"
    assert found[1].read_bytes() == b'{"model": 1}'


def test_the_model_in_use_is_the_newest_promoted_one_the_agent_kept(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "node")
    state.ensure()
    for version, status, promoted in (("1", "published", True), ("2", "published", True),
                                      ("3", "published", False), ("4", "refused", False)):
        path = state.save_model(version, "xgboost", b"{}")
        state.update_run(f"run-{version}", {"status": status, "model": "xgboost", "version": version,
                                            "model_file": str(path), "promoted": promoted, "matches_proposal": True})
    found = current_model_file(state, "xgboost")
    assert found is not None and found[0] == "2"
    assert current_model_file(state, "logreg") is None
    # The consortium serves version 1 again (an operator's rollback): so does the node.
    state.save_current_models({"xgboost": {"version": "1", "since": "2018-06-12T09:00:00", "reason": "rollback"}})
    assert current_model_file(state, "xgboost")[0] == "1"  # type: ignore[index]
    # A version this bank did not promote or did not keep is never served, whatever the consortium says.
    for version in ("3", "4", "7"):
        state.save_current_models({"xgboost": {"version": version, "since": "2018-06-12T09:00:00", "reason": "x"}})
        assert current_model_file(state, "xgboost")[0] == "2"  # type: ignore[index]
