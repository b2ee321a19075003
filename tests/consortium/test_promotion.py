"""The promotion gate: a run's model replaces the current one only if the banks' identical, signed
assessments say it is not worse; otherwise it is kept for the record and the run is rejected.
Operators can roll back. Every model records its lineage."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

import crypto
from schemas.assessment import Assessment
from tests.consortium.conftest import Consortium, bearer


def _model(tag: str) -> bytes:
    return json.dumps({"learner": {"trees": [tag]}}).encode()


def _metrics(auc: float) -> dict[str, Any]:
    return {"auc": auc, "average_precision": auc / 2, "rows": 1000, "frauds": 10}


def _train(consortium: Consortium, he: crypto.HEScheme, body: bytes, *, auc: float | None = None,
           baseline_auc: float | None = None, assessors: tuple[str, ...] = ("bank-1", "bank-2", "bank-3")) -> dict[str, Any]:
    """A run with one released round; each bank assesses (if asked) and proposes ``body``."""
    run = consortium.open_run()
    run_id = run["run_id"]
    for bank in consortium.banks.values():
        assert bank.contribute(run_id, "r/n3", he.encrypt(np.ones(3))).status_code == 201
    if auc is not None:
        document = Assessment(
            run_id=run_id, model_digest=hashlib.sha256(body).hexdigest(), baseline_version=run["baseline_version"],
            tolerance=run["promotion_tolerance"], candidate=_metrics(auc),
            baseline=None if baseline_auc is None else _metrics(baseline_auc),
        ).to_bytes()
        for bank_id in assessors:
            assert consortium.bank(bank_id).assess(run_id, document).status_code == 201
    for bank in consortium.banks.values():
        bank.propose(run_id, body)
    return consortium.run(run_id)


def _current(consortium: Consortium) -> list[tuple[str, int]]:
    listed = consortium.client.get("/v1/models/current", headers=bearer(consortium.operator)).get_json()
    return [(row["family"], row["version"]) for row in listed]


def test_a_better_model_is_promoted_a_worse_one_rejected_and_the_current_stays(
    consortium: Consortium, he_key: crypto.HEScheme
) -> None:
    first = _train(consortium, he_key, _model("first"))  # nothing to beat: promoted without a gate
    assert first["state"] == "completed" and _current(consortium) == [("xgboost", 1)]

    second_run = consortium.open_run()
    assert second_run["baseline_version"] == 1 and second_run["promotion_tolerance"] == 0.005
    consortium.client.post(f"/v1/runs/{second_run['run_id']}/cancel", json={}, headers=bearer(consortium.operator))

    better = _train(consortium, he_key, _model("better"), auc=0.90, baseline_auc=0.88)
    assert better["state"] == "completed" and _current(consortium) == [("xgboost", 2)]
    worse = _train(consortium, he_key, _model("worse"), auc=0.80, baseline_auc=0.90)
    assert worse["state"] == "rejected" and "worse than the current model" in worse["failure_reason"]
    assert _current(consortium) == [("xgboost", 2)]
    model = consortium.client.get(f"/v1/models/{worse['model_version']}", headers=bearer(consortium.operator)).get_json()
    assert model["status"] == "rejected" and model["current"] is False
    assert model["assessment"]["candidate"]["auc"] == 0.80 and model["assessment"]["promote"] is False
    assert model["lineage"]["baseline_version"] == 2 and model["lineage"]["rounds_released"] == 1
    assert model["lineage"]["window"]["validation_days"] == 7
    within_tolerance = _train(consortium, he_key, _model("close"), auc=0.897, baseline_auc=0.90)
    assert within_tolerance["state"] == "completed" and _current(consortium) == [("xgboost", 4)]


def test_without_identical_assessments_of_a_quorum_nothing_is_published(
    consortium: Consortium, he_key: crypto.HEScheme
) -> None:
    _train(consortium, he_key, _model("first"))
    unassessed = _train(consortium, he_key, _model("next"))
    assert unassessed["state"] == "open" and unassessed["model_version"] is None
    only_two = _train(consortium, he_key, _model("two"), auc=0.9, baseline_auc=0.8, assessors=("bank-1", "bank-2"))
    assert only_two["state"] == "open" and only_two["model_version"] is None


def test_malformed_inconsistent_or_foreign_assessments_are_refused(consortium: Consortium, he_key: crypto.HEScheme) -> None:
    _train(consortium, he_key, _model("first"))
    run = consortium.open_run()
    bank = consortium.bank("bank-1")
    good = Assessment(run_id=run["run_id"], model_digest="a" * 64, baseline_version=1, tolerance=0.005,
                      candidate=_metrics(0.9), baseline=_metrics(0.8)).to_bytes()
    assert bank.assess(run["run_id"], good, signature="A" * 86 + "==").status_code == 400
    lying = good.replace(b'"promote":true', b'"promote":false')
    assert bank.assess(run["run_id"], lying).status_code == 422
    other_baseline = good.replace(b'"baseline_version":1', b'"baseline_version":7')
    assert bank.assess(run["run_id"], other_baseline).status_code == 422
    assert bank.assess(run["run_id"], b"{}").status_code == 422
    assert bank.assess(run["run_id"], good).status_code == 201
    changed = Assessment(run_id=run["run_id"], model_digest="b" * 64, baseline_version=1, tolerance=0.005,
                         candidate=_metrics(0.9), baseline=_metrics(0.8)).to_bytes()
    assert bank.assess(run["run_id"], changed).status_code == 409


def test_operators_roll_back_and_only_operators(consortium: Consortium, he_key: crypto.HEScheme) -> None:
    _train(consortium, he_key, _model("first"))
    _train(consortium, he_key, _model("second"), auc=0.9, baseline_auc=0.85)
    assert _current(consortium) == [("xgboost", 2)]
    bank = consortium.bank("bank-1")
    assert bank.client.put("/v1/models/1/current", json={}, headers=bank.auth).status_code == 403
    back = consortium.client.put("/v1/models/1/current", json={"reason": "v2 misfires on Mondays"},
                                 headers=bearer(consortium.operator))
    assert back.status_code == 200 and "v2 misfires" in back.get_json()["reason"]
    assert _current(consortium) == [("xgboost", 1)]
    assert consortium.open_run()["baseline_version"] == 1
    missing = consortium.client.put("/v1/models/99/current", json={}, headers=bearer(consortium.operator))
    assert missing.status_code == 404
    # The operator cannot undo the gate alone: a version the banks rejected is never made current.
    rejected = _train(consortium, he_key, _model("worse"), auc=0.5, baseline_auc=0.85)
    refused = consortium.client.put(f"/v1/models/{rejected['model_version']}/current", json={},
                                    headers=bearer(consortium.operator))
    assert refused.status_code == 409 and "rejected" in refused.get_json()["message"]
    assert _current(consortium) == [("xgboost", 1)]


def test_one_bank_lying_in_its_assessment_cannot_flip_the_decision(
    consortium4: Consortium, he_key: crypto.HEScheme
) -> None:
    """Three banks find the candidate worse; the fourth claims it is better. The honest majority's
    document decides: the model is rejected and the current one stays."""
    consortium = consortium4
    _train(consortium, he_key, _model("first"))
    run = consortium.open_run()
    run_id = run["run_id"]
    body = _model("worse")
    for bank in consortium.banks.values():
        assert bank.contribute(run_id, "r/n3", he_key.encrypt(np.ones(3))).status_code == 201

    def document(auc: float) -> bytes:
        return Assessment(run_id=run_id, model_digest=hashlib.sha256(body).hexdigest(), baseline_version=1,
                          tolerance=run["promotion_tolerance"], candidate=_metrics(auc),
                          baseline=_metrics(0.9)).to_bytes()

    assert consortium.bank("bank-1").assess(run_id, document(0.99)).status_code == 201  # the liar
    for bank_id in ("bank-2", "bank-3", "bank-4"):
        assert consortium.bank(bank_id).assess(run_id, document(0.7)).status_code == 201
    for bank in consortium.banks.values():
        bank.propose(run_id, body)
    finished = consortium.run(run_id)
    assert finished["state"] == "rejected" and _current(consortium) == [("xgboost", 1)]
    model = consortium.client.get(f"/v1/models/{finished['model_version']}", headers=bearer(consortium.operator))
    assert model.get_json()["banks"] == ["bank-2", "bank-3", "bank-4"]


UNGATED = {"as_of": "2018-06-12", "train_days": 7, "validation_days": 0, "label_delay_days": 0}


def test_a_run_without_validation_days_is_refused_once_the_family_serves_a_model(
    consortium: Consortium, he_key: crypto.HEScheme
) -> None:
    """The banks would refuse it (their served model replaced unchecked): the service says so at
    the door, naming the field, and opens nothing."""
    _train(consortium, he_key, _model("first"), auc=0.8)
    response = consortium.client.post("/v1/runs", headers=bearer(consortium.operator),
                                      json={"model": "xgboost", "params": {}, "window": UNGATED})
    assert response.status_code == 422
    body = response.get_json()
    assert "serves model 1" in body["message"] and "validation days" in str(body["errors"]["window"])
    runs = consortium.client.get("/v1/runs", headers=bearer(consortium.operator)).get_json()
    assert [r["state"] for r in runs] == ["completed"]


def test_one_bank_cannot_decide_the_record_of_an_ungated_run(consortium: Consortium, he_key: crypto.HEScheme) -> None:
    """Without validation days nothing is gated (a family's first model); one bank's assessment
    saying "worse" is not the record of the published model and does not reject it."""
    run = consortium.open_run(window=UNGATED)
    run_id, body = run["run_id"], _model("second")
    for bank in consortium.banks.values():
        assert bank.contribute(run_id, "r/n3", he_key.encrypt(np.ones(3))).status_code == 201
    lone = Assessment(run_id=run_id, model_digest=hashlib.sha256(body).hexdigest(),
                      baseline_version=run["baseline_version"], tolerance=run["promotion_tolerance"],
                      candidate=_metrics(0.5), baseline=None).to_bytes()
    assert consortium.bank("bank-1").assess(run_id, lone).status_code == 201
    for bank in consortium.banks.values():
        bank.propose(run_id, body)
    finished = consortium.run(run_id)
    model = consortium.client.get(f"/v1/models/{finished['model_version']}", headers=bearer(consortium.operator)).get_json()
    assert model["status"] == "promoted" and model["assessment"] is None
