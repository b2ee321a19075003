"""One JSON error shape for every error, and the OpenAPI document."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from consortium.app import create_app

ERROR_KEYS = {"code", "status", "message", "errors"}


def assert_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert ERROR_KEYS <= set(body), body
    assert body["code"] == status
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    return body  # type: ignore[no-any-return]


def test_openapi_document_is_served_at_openapi_json(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.get_json()
    assert spec["openapi"].startswith("3.")
    contribution = spec["paths"]["/v1/runs/{run_id}/contributions/{round_key}"]["put"]
    assert contribution["requestBody"]["content"]["application/octet-stream"]["schema"]["format"] == "binary"
    assert "bearerAuth" in spec["components"]["securitySchemes"]


def test_health_needs_no_token(client: FlaskClient) -> None:
    response = client.get("/v1/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok"}


def test_unknown_url_is_a_json_404(client: FlaskClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404)


def test_wrong_method_is_a_json_405_with_allow(client: FlaskClient) -> None:
    response = client.delete("/v1/health")
    assert_error(response, 405)
    assert "GET" in response.headers["Allow"]


def test_malformed_json_is_a_400_naming_the_problem(client: FlaskClient, operator_token: str) -> None:
    response = client.post(
        "/v1/banks",
        data='{"bank_id": "bank-1", "name": ',
        headers={"Authorization": f"Bearer {operator_token}"},
        content_type="application/json",
    )
    body = assert_error(response, 400)
    assert "malformed JSON" in body["message"] and "line 1" in body["message"]


def test_a_number_too_long_to_read_is_a_400_not_a_500(client: FlaskClient, operator_token: str) -> None:
    response = client.post(
        "/v1/banks",
        data='{"bank_id": "bank-1", "name": "One", "weight": ' + "9" * 5000 + "}",
        headers={"Authorization": f"Bearer {operator_token}"},
        content_type="application/json",
    )
    body = assert_error(response, 400)
    assert "malformed JSON" in body["message"] and "digits" in body["message"]


@pytest.mark.parametrize(("method", "path", "body", "status", "field"), [
    # Python's "$" also matches before a final newline: "bank-9\n" is not an id, nor a name.
    ("post", "/v1/banks", b'{"bank_id": "bank-9\\n", "name": "Nine"}', 422, "bank_id"),
    ("post", "/v1/banks", b'{"bank_id": "bank-9", "name": "Nine\\n"}', 422, "name"),
    ("post", "/v1/runs", b'{"model": "xgboost", "participants": ["bank-1", "bank-2", "bank-3\\n"]}', 422,
     "participants"),
    # A lone surrogate could not be written to the database or into a ledger entry (it was a 500).
    ("post", "/v1/banks", b'{"bank_id": "bank-s1", "name": "\\ud800"}', 400, None),
    ("post", "/v1/banks", b'{"bank_id": "bank-s1", "name": "Z\\ud83d"}', 400, None),
    # Counts are JSON integers: 3.99 banks was taken as 3, "3600" as 3600, 1.5 days as 1.
    ("post", "/v1/runs", b'{"model": "xgboost", "min_banks": 3.99}', 422, "min_banks"),
    ("post", "/v1/runs", b'{"model": "xgboost", "run_timeout_s": "3600"}', 422, "run_timeout_s"),
    ("put", "/v1/schedules/xgboost", b'{"train_days": 1.5}', 422, "train_days"),
    ("put", "/v1/schedules/xgboost", b'{"enabled": "yes"}', 422, "enabled"),
    ("put", "/v1/schedules/xgboost", b'{"enabled": 1}', 422, "enabled"),
    ("post", "/v1/ledger/proofs/inclusions", b'{"indices": [0.5]}', 422, "indices"),
])
def test_values_that_were_mangled_or_failed_later_are_refused_naming_the_field(
    client: FlaskClient, operator_token: str, method: str, path: str, body: bytes, status: int, field: str | None
) -> None:
    response = getattr(client, method)(path, data=body, content_type="application/json",
                                       headers={"Authorization": f"Bearer {operator_token}"})
    answer = assert_error(response, status)
    if field is not None:
        assert field in answer["errors"], answer
    else:
        assert "surrogate" in answer["message"]


def test_a_name_with_a_surrogate_pair_is_kept(client: FlaskClient, operator_token: str) -> None:
    response = client.post("/v1/banks", data=b'{"bank_id": "bank-e1", "name": "Bank \\ud83d\\ude00"}',
                           content_type="application/json", headers={"Authorization": f"Bearer {operator_token}"})
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()["name"] == "Bank \U0001f600"


def test_json_endpoint_given_text_is_415(client: FlaskClient, operator_token: str) -> None:
    response = client.post(
        "/v1/banks", data="bank-1", headers={"Authorization": f"Bearer {operator_token}"}, content_type="text/plain"
    )
    body = assert_error(response, 415)
    assert "application/json" in body["message"]


def test_validation_errors_are_422_with_field_names(client: FlaskClient, operator_token: str) -> None:
    response = client.post(
        "/v1/banks", json={"bank_id": "Bank One!", "extra": 1}, headers={"Authorization": f"Bearer {operator_token}"}
    )
    body = assert_error(response, 422)
    assert set(body["errors"]) == {"bank_id", "name", "extra"}


def test_oversized_body_is_a_json_413(client: FlaskClient, operator_token: str, app: Flask) -> None:
    too_big = b"x" * (app.config["MAX_CONTENT_LENGTH"] + 1)
    response = client.post(
        "/v1/banks", data=too_big, headers={"Authorization": f"Bearer {operator_token}"}, content_type="application/json"
    )
    assert_error(response, 413)


def test_unexpected_error_is_a_json_500_without_details(app_config: dict[str, Any]) -> None:
    app = create_app(app_config)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internal detail")

    response = app.test_client().get("/boom")
    body = assert_error(response, 500)
    assert "secret internal detail" not in response.get_data(as_text=True)
    assert body["errors"] == {}


PROTECTED = [
    ("get", "/v1/banks"),
    ("post", "/v1/banks"),
    ("get", "/v1/runs"),
    ("post", "/v1/runs"),
    ("get", "/v1/keys/context"),
    ("get", "/v1/models"),
]


@pytest.mark.parametrize("header", [None, "Bearer not-a-token", "Basic abc"])
def test_missing_or_unknown_token_is_401(client: FlaskClient, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    for method, path in PROTECTED:
        response = getattr(client, method)(path, headers=headers)
        assert_error(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), [("get", "/v1//health"), ("put", "/v1/runs/run-1/contributions//r0"),
                                              ("get", "/v1/runs/run-1/aggregates//r0")])
def test_a_doubled_slash_gets_the_json_error_shape_not_an_html_redirect(
    client: FlaskClient, operator_token: str, method: str, path: str
) -> None:
    response = getattr(client, method)(path, headers={"Authorization": f"Bearer {operator_token}"})
    assert 400 <= response.status_code < 500 and "Location" not in response.headers
    assert_error(response, response.status_code)
