"""Enrolment, tokens and roles, and the once-only registration of a bank's public keys."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from consortium.storage.database import db
from consortium.storage.models import Token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_operator_enrols_a_bank_whose_token_is_shown_once_and_stored_hashed(
    client: FlaskClient, operator_token: str, app: Flask
) -> None:
    response = client.post("/v1/banks", json={"bank_id": "bank-1", "name": "First Bank"}, headers=auth(operator_token))
    assert response.status_code == 201
    body = response.get_json()
    assert body["bank_id"] == "bank-1" and body["name"] == "First Bank"
    token = body["token"]
    assert len(token) >= 43
    with app.app_context():
        stored = [row.token_sha256 for row in db.session.execute(select(Token)).scalars()]
    assert token not in stored  # only hashes
    listed = client.get("/v1/banks", headers=auth(token))
    assert listed.status_code == 200
    assert [bank["bank_id"] for bank in listed.get_json()] == ["bank-1"]
    assert "token" not in listed.get_json()[0]


def test_enrolling_the_same_bank_twice_is_409(client: FlaskClient, operator_token: str, snapshot: Any) -> None:
    client.post("/v1/banks", json={"bank_id": "bank-1", "name": "A"}, headers=auth(operator_token))
    before = snapshot()
    response = client.post("/v1/banks", json={"bank_id": "bank-1", "name": "B"}, headers=auth(operator_token))
    assert response.status_code == 409
    assert "already enrolled" in response.get_json()["message"]
    assert snapshot() == before


def test_only_the_operator_enrols(client: FlaskClient, compliance_token: str, bank_factory: Any, operator_token: str) -> None:
    bank = bank_factory(client, operator_token, "bank-1")
    for token in (compliance_token, bank.token):
        response = client.post("/v1/banks", json={"bank_id": "bank-2", "name": "B"}, headers=auth(token))
        assert response.status_code == 403
        assert "operator" in response.get_json()["message"]


def test_a_bank_registers_its_keys_once(client: FlaskClient, operator_token: str, bank_factory: Any, snapshot: Any) -> None:
    bank = bank_factory(client, operator_token, "bank-1")
    response = bank.register_keys()
    assert response.status_code == 200
    assert response.get_json()["signing_key"] == bank.keys.signing_public_b64
    assert response.get_json()["box_key"] == bank.keys.box_public_b64
    listed = client.get("/v1/banks", headers=auth(operator_token)).get_json()
    assert listed[0]["signing_key"] == bank.keys.signing_public_b64
    before = snapshot()
    again = bank.register_keys()
    assert again.status_code == 409
    assert snapshot() == before


def test_a_bank_cannot_register_keys_for_another(client: FlaskClient, operator_token: str, bank_factory: Any) -> None:
    one = bank_factory(client, operator_token, "bank-1")
    bank_factory(client, operator_token, "bank-2")
    response = client.put(
        "/v1/banks/bank-2/keys",
        json={"signing_key": one.keys.signing_public_b64, "box_key": one.keys.box_public_b64},
        headers=one.auth,
    )
    assert response.status_code == 403
    operator = client.put(
        "/v1/banks/bank-2/keys",
        json={"signing_key": one.keys.signing_public_b64, "box_key": one.keys.box_public_b64},
        headers=auth(operator_token),
    )
    assert operator.status_code == 403


def test_unknown_bank_is_404(client: FlaskClient, operator_token: str, bank_factory: Any) -> None:
    one = bank_factory(client, operator_token, "bank-1")
    response = client.put(
        "/v1/banks/bank-9/keys",
        json={"signing_key": one.keys.signing_public_b64, "box_key": one.keys.box_public_b64},
        headers=one.auth,
    )
    assert response.status_code == 404


def test_malformed_public_keys_are_422_naming_the_field(
    client: FlaskClient, operator_token: str, bank_factory: Any, snapshot: Any
) -> None:
    bank = bank_factory(client, operator_token, "bank-1")
    before = snapshot()
    response = client.put(
        "/v1/banks/bank-1/keys", json={"signing_key": "AAAA", "box_key": bank.keys.box_public_b64}, headers=bank.auth
    )
    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == {"signing_key"}
    assert snapshot() == before
