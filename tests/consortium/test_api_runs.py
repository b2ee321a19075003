"""Opening runs as a new user would try it, and ending them: params refused at the door, the
window every bank trains on, cancellation, withdrawal with a reason, the run's deadline."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

import crypto
from tests.consortium.conftest import Consortium, bearer


def _open(consortium: Consortium, body: dict[str, Any]) -> Any:
    return consortium.client.post("/v1/runs", json=body, headers=bearer(consortium.operator))


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"n_trees": 100000}, "params.n_trees", "from 1 to 2000"),
        ({"n_trees": -5}, "params.n_trees", "from 1 to 2000"),
        ({"max_depth": 100000}, "params.max_depth", "from 1 to 10"),
        ({"foo": 1}, "params.foo", "Unknown field"),
        ({"eta": "fast"}, "params.eta", "number"),
        ({"n_trees": 2.5}, "params.n_trees", "integer"),
    ],
)
def test_invalid_params_are_refused_at_the_door(
    consortium: Consortium, snapshot: Any, params: dict[str, Any], field: str, words: str
) -> None:
    before = snapshot()
    response = _open(consortium, {"model": "xgboost", "params": params})
    assert response.status_code == 422
    errors = response.get_json()["errors"]
    assert words in json.dumps(errors) and field in json.dumps(errors)
    assert snapshot() == before


def test_logreg_params_are_checked_against_their_own_family(consortium: Consortium) -> None:
    refused = _open(consortium, {"model": "logreg", "params": {"n_trees": 10}})
    assert refused.status_code == 422 and "params.n_trees" in json.dumps(refused.get_json()["errors"])
    assert _open(consortium, {"model": "logreg", "params": {"C": 0.5, "max_rounds": 5}}).status_code == 201


def test_a_huge_or_deeply_nested_body_is_refused_without_a_500(consortium: Consortium, snapshot: Any) -> None:
    before = snapshot()
    huge = consortium.client.post(
        "/v1/runs", data=json.dumps({"model": "xgboost", "params": {"note": "x" * 50_000_000}}),
        headers=bearer(consortium.operator), content_type="application/json",
    )
    assert huge.status_code == 413 and "at most" in huge.get_json()["message"]
    deep = "[" * 5000 + "]" * 5000
    nested = consortium.client.post(
        "/v1/runs", data='{"model": "xgboost", "params": {"a": ' + deep + "}}",
        headers=bearer(consortium.operator), content_type="application/json",
    )
    assert nested.status_code == 400 and "nested too deeply" in nested.get_json()["message"]
    assert snapshot() == before


def test_the_run_carries_its_window(consortium: Consortium, app: Any, clock: Any) -> None:
    window = {"as_of": "2018-08-01", "train_days": 14, "validation_days": 3, "label_delay_days": 7}
    run = _open(consortium, {"model": "xgboost", "window": window}).get_json()
    assert run["window"] == window
    # Without one: today in the consortium's time zone (02:00 UTC on 1 March is still 28 Feb in New York).
    app.config["TIME_ZONE"] = "America/New_York"
    default = _open(consortium, {"model": "xgboost"}).get_json()
    assert default["window"] == {"as_of": "2025-02-28", "train_days": 7, "validation_days": 7, "label_delay_days": 7}
    bad = _open(consortium, {"model": "xgboost", "window": {"as_of": "2018-13-01"}})
    assert bad.status_code == 422 and "window" in bad.get_json()["errors"]


def test_the_operator_cancels_a_run_and_nothing_more_is_taken(consortium: Consortium, he_key: crypto.HEScheme) -> None:
    run_id = consortium.open_run()["run_id"]
    operator = bearer(consortium.operator)
    bank = consortium.bank("bank-1")
    assert bank.client.post(f"/v1/runs/{run_id}/cancel", json={}, headers=bank.auth).status_code == 403
    cancelled = consortium.client.post(f"/v1/runs/{run_id}/cancel", json={"reason": "wrong window"}, headers=operator)
    assert cancelled.status_code == 200
    body = cancelled.get_json()
    assert body["state"] == "cancelled" and "wrong window" in body["failure_reason"]
    assert bank.contribute(run_id, "r/n2", he_key.encrypt(np.ones(2))).status_code == 409
    again = consortium.client.post(f"/v1/runs/{run_id}/cancel", json={}, headers=operator)
    assert again.status_code == 409
    listed = consortium.client.get("/v1/runs?state=cancelled", headers=operator).get_json()
    assert [r["run_id"] for r in listed] == [run_id]


def test_a_bank_that_cannot_take_part_says_why_and_the_others_go_on(
    consortium4: Consortium, he_key: crypto.HEScheme
) -> None:
    run_id = consortium4.open_run()["run_id"]
    banks = consortium4.banks
    withdrawn = banks["bank-4"].client.post(
        f"/v1/runs/{run_id}/withdrawals", json={"reason": "no transactions in the window"}, headers=banks["bank-4"].auth
    )
    assert withdrawn.status_code == 200 and withdrawn.get_json()["state"] == "open"
    assert banks["bank-4"].contribute(run_id, "r/n2", he_key.encrypt(np.ones(2))).status_code == 403
    for bank_id in ("bank-1", "bank-2", "bank-3"):
        assert banks[bank_id].contribute(run_id, "r/n2", he_key.encrypt(np.ones(2))).status_code == 201
    assert banks["bank-1"].aggregate(run_id, "r/n2").status_code == 200  # released without waiting for bank-4

    second = banks["bank-3"].client.post(
        f"/v1/runs/{run_id}/withdrawals", json={"reason": "params refused: n_bins"}, headers=banks["bank-3"].auth
    )
    run = second.get_json()
    assert second.status_code == 200, run
    assert run["state"] == "failed"
    assert "fewer than the quorum" in run["failure_reason"] and "no transactions in the window" in run["failure_reason"]
    assert run["withdrawn"] == {"bank-4": "no transactions in the window", "bank-3": "params refused: n_bins"}


def test_an_open_run_fails_at_its_deadline(consortium: Consortium, clock: Any, client: FlaskClient) -> None:
    run_id = _open(consortium, {"model": "xgboost", "run_timeout_s": 3600}).get_json()["run_id"]
    clock.advance(3599)
    assert consortium.run(run_id)["state"] == "open"
    clock.advance(2)
    run = consortium.run(run_id)
    assert run["state"] == "failed" and "deadline" in run["failure_reason"]


def test_the_runs_progress_is_visible_from_the_consortium(consortium: Consortium, he_key: crypto.HEScheme) -> None:
    run_id = _open(consortium, {"model": "xgboost", "params": {"n_trees": 4, "max_depth": 2}}).get_json()["run_id"]
    assert consortium.run(run_id)["progress"]["phase"] == "starting"
    for key, n in (("gbdt/bins/n3", 3), ("gbdt/tree-0/level-0/n5", 5), ("gbdt/tree-0/level-1/n5", 5),
                   ("gbdt/tree-1/level-0/n5", 5)):
        for bank in consortium.banks.values():
            assert bank.contribute(run_id, key, he_key.encrypt(np.ones(n))).status_code == 201
    consortium.bank("bank-1").contribute(run_id, "gbdt/tree-1/level-1/n5", he_key.encrypt(np.ones(5)))  # still open
    full = consortium.run(run_id)
    progress = full["progress"]
    assert progress == {"phase": "trees", "rounds_released": 4, "rounds_expected": 9, "n_trees": 4, "tree": 2,
                        "epoch": 0}
    assert len(full["rounds"]) == 5
    # A dashboard polling the run can leave its rounds out: the rest, progress included, is the same.
    operator = bearer(consortium.operator)
    light = consortium.client.get(f"/v1/runs/{run_id}?rounds=false", headers=operator).get_json()
    assert light == {name: value for name, value in full.items() if name != "rounds"}
    listed = consortium.client.get("/v1/runs?state=open&rounds=false", headers=operator).get_json()
    assert listed == [light]
    assert consortium.client.get("/v1/runs?rounds=true", headers=operator).get_json()[0] == full
    refused = consortium.client.get(f"/v1/runs/{run_id}?rounds=maybe", headers=operator)
    assert refused.status_code == 422 and "rounds" in refused.get_json()["errors"]


def test_a_withdrawn_bank_is_not_listed_as_dropped_from_a_failed_round(
    consortium4: Consortium, he_key: crypto.HEScheme, clock: Any
) -> None:
    run_id = _open(consortium4, {"model": "xgboost", "round_timeout_s": 10}).get_json()["run_id"]
    banks = consortium4.banks
    banks["bank-4"].client.post(f"/v1/runs/{run_id}/withdrawals", json={"reason": "no data"},
                                headers=banks["bank-4"].auth)
    banks["bank-1"].contribute(run_id, "r/n2", he_key.encrypt(np.ones(2)))
    clock.advance(11)
    rounds = consortium4.run(run_id)["rounds"]
    assert rounds[0]["state"] == "failed" and rounds[0]["dropped"] == ["bank-2", "bank-3"]
