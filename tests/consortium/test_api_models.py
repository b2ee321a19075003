"""Proposals of the finished model, publication on agreement, and the model registry."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flask.testing import FlaskClient

import crypto

MODEL = json.dumps({"learner": {"gradient_booster": {"name": "gbtree"}}, "version": [3, 0, 0]}).encode()
OTHER = json.dumps({"learner": {"gradient_booster": {"name": "gbtree", "trees": 2}}}).encode()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _train(consortium: Any, he_key: crypto.HEScheme, banks: tuple[str, ...] = ("bank-1", "bank-2", "bank-3")) -> str:
    run_id = consortium.open_run(model="xgboost")["run_id"]
    for bank_id in banks:
        assert consortium.bank(bank_id).contribute(run_id, "r", he_key.encrypt(np.ones(3))).status_code == 201
    return run_id  # type: ignore[no-any-return]


def test_model_is_published_when_every_contributor_proposes_the_same_digest(
    consortium: Any, he_key: crypto.HEScheme, client: FlaskClient, compliance_token: str
) -> None:
    run_id = _train(consortium, he_key)
    first = consortium.bank("bank-1").propose(run_id, MODEL)
    assert first.status_code == 201
    assert first.get_json()["state"] == "waiting" and first.get_json()["agreed"] == 1
    disagree = consortium.bank("bank-2").propose(run_id, OTHER)
    assert disagree.get_json()["state"] == "waiting"
    assert consortium.bank("bank-3").propose(run_id, MODEL).get_json()["state"] == "waiting"
    assert client.get("/v1/models", headers=auth(compliance_token)).get_json() == []
    # bank-2 fixes its model: now all three agree.
    agreed = consortium.bank("bank-2").propose(run_id, MODEL)
    assert agreed.status_code == 201
    body = agreed.get_json()
    assert body["state"] == "published" and body["model_version"] == 1 and body["required"] == 3
    assert consortium.run(run_id)["state"] == "completed"
    assert consortium.run(run_id)["model_version"] == 1

    models = client.get("/v1/models", headers=auth(compliance_token)).get_json()
    assert [m["version"] for m in models] == [1]
    assert models[0]["banks"] == ["bank-1", "bank-2", "bank-3"] and models[0]["family"] == "xgboost"
    meta = client.get("/v1/models/1", headers=auth(compliance_token))
    assert meta.get_json()["run_id"] == run_id
    download = client.get("/v1/models/1/download", headers=auth(compliance_token))
    assert download.status_code == 200 and download.data == MODEL
    assert client.get("/v1/models/2", headers=auth(compliance_token)).status_code == 404
    late = consortium.bank("bank-1").propose(run_id, MODEL)
    assert late.status_code == 409


def test_only_banks_that_took_part_must_agree(consortium4: Any, he_key: crypto.HEScheme, clock: Any) -> None:
    consortium = consortium4
    run_id = consortium.open_run(min_banks=3, round_timeout_s=10)["run_id"]
    for bank_id in ("bank-1", "bank-2", "bank-3"):
        consortium.bank(bank_id).contribute(run_id, "r", he_key.encrypt(np.ones(3)))
    clock.advance(11)
    assert consortium.bank("bank-1").aggregate(run_id, "r").status_code == 200
    # bank-4 took part in no round: its proposal counts for nothing
    assert consortium.bank("bank-4").propose(run_id, MODEL).get_json()["state"] == "waiting"
    for bank_id in ("bank-1", "bank-2"):
        assert consortium.bank(bank_id).propose(run_id, MODEL).get_json()["state"] == "waiting"
    published = consortium.bank("bank-3").propose(run_id, MODEL).get_json()
    assert published["state"] == "published" and published["required"] == 3
    model = consortium.client.get(f"/v1/models/{published['model_version']}", headers={"Authorization": f"Bearer {consortium.operator}"}).get_json()
    assert model["banks"] == ["bank-1", "bank-2", "bank-3"]
    assert {p["bank_id"] for p in model["proposals"]} == {"bank-1", "bank-2", "bank-3"}


def test_repeating_a_proposal_records_nothing_new(consortium: Any, he_key: crypto.HEScheme, snapshot: Any) -> None:
    run_id = _train(consortium, he_key)
    assert consortium.bank("bank-1").propose(run_id, MODEL).status_code == 201
    before = snapshot()
    again = consortium.bank("bank-1").propose(run_id, MODEL)
    assert again.status_code == 200
    assert snapshot() == before


def test_bad_proposals_are_refused_and_store_nothing(
    consortium: Any, he_key: crypto.HEScheme, snapshot: Any, client: FlaskClient, bank_factory: Any
) -> None:
    run_id = _train(consortium, he_key)
    one = consortium.bank("bank-1")
    before = snapshot()
    assert one.propose(run_id, MODEL, signature="A" * 86 + "==").status_code == 400
    assert one.propose(run_id, b"not json").status_code == 422
    assert one.propose("run-nope", MODEL).status_code == 404
    unsigned = client.post(f"/v1/runs/{run_id}/proposals", data=MODEL, headers=one.auth, content_type="application/octet-stream")
    assert unsigned.status_code == 400
    wrong_type = client.post(f"/v1/runs/{run_id}/proposals", data=MODEL, headers=one.auth, content_type="text/plain")
    assert wrong_type.status_code == 415
    assert snapshot() == before
