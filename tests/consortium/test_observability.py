"""The aggregator's /metrics (for an operator or monitoring token) and its request ids."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

import crypto
from consortium.auth import issue_token
from consortium.logs import JsonFormatter, RequestIdFilter
from consortium.storage.database import db
from tests.consortium.conftest import bearer


def scrape(consortium: Any, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = consortium.client.get("/metrics", headers=bearer(token))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def monitoring_token(app: Flask) -> str:
    with app.app_context():
        token = issue_token(db.session, "monitoring")
        db.session.commit()
    return token


def test_metrics_follow_a_run_for_a_monitoring_token_only(
    app: Flask, consortium: Any, he_key: crypto.HEScheme, compliance_token: str
) -> None:
    monitor = monitoring_token(app)
    assert consortium.client.get("/metrics").status_code == 401
    assert consortium.client.get("/metrics", headers=bearer(compliance_token)).status_code == 403
    assert consortium.client.get("/metrics", headers=consortium.bank("bank-1").auth).status_code == 403
    # The monitoring token scrapes and does nothing else.
    assert consortium.client.get("/v1/runs", headers=bearer(monitor)).status_code == 403

    before = scrape(consortium, monitor)
    run_id = consortium.open_run()["run_id"]
    payloads = [he_key.encrypt(np.full(8, float(i + 1))) for i in range(3)]
    for bank, payload in zip(consortium.banks.values(), payloads[:2], strict=False):
        assert bank.contribute(run_id, "r", payload).status_code == 201
    during = scrape(consortium, monitor)
    assert value(during, "fedfraud_runs", state="open") == value(before, "fedfraud_runs", state="open") + 1
    assert value(during, "fedfraud_rounds_open") == 1
    assert value(during, "fedfraud_contributions_total", outcome="accepted") == 2

    assert consortium.bank("bank-3").contribute(run_id, "r", payloads[2]).status_code == 201
    # A replay is refused, and counted so.
    assert consortium.bank("bank-3").contribute(run_id, "r", payloads[2]).status_code == 409
    after = scrape(consortium, operator := consortium.operator)
    assert operator
    assert value(after, "fedfraud_contributions_total", outcome="accepted") == 3
    assert value(after, "fedfraud_contributions_total", outcome="refused") == 1
    assert value(after, "fedfraud_contribution_bytes_total") == sum(len(p) for p in payloads)
    assert value(after, "fedfraud_rounds_open") == 0
    assert value(after, "fedfraud_round_seconds_count", outcome="released") == 1
    # Request latency per endpoint, from the exporter.
    assert value(after, "flask_http_request_duration_seconds_count", method="PUT", status="201",
                 endpoint="runs.contribute") == 3


def test_a_request_is_named_in_its_answer_and_in_every_log_line_it_causes(
    consortium: Any, he_key: crypto.HEScheme, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="consortium")
    caplog.handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("consortium")
    logger.addHandler(caplog.handler)  # a command run earlier may have stopped propagation
    try:
        run_id = consortium.open_run()["run_id"]
        bank = consortium.bank("bank-1")
        named = "bank-1-0f3a9c2e51d7"
        response = bank.client.put(f"/v1/runs/{run_id}/contributions/r", data=b"not a ciphertext",
                                   headers={**bank.auth, "X-Request-ID": named, "X-Fedfraud-Signature": "x"},
                                   content_type="application/octet-stream")
        assert response.status_code >= 400 and response.headers["X-Request-ID"] == named
        # A header that could forge log lines or carry anything but a name is not echoed.
        for bad in ("short", "x" * 65, "evil\"}{\"level\":\"error", "a b c d e f g h"):
            answered = consortium.client.get("/v1/health", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
            assert answered != bad and len(answered) == 32
    finally:
        logger.removeHandler(caplog.handler)
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    of_the_request = [line for line in lines if line.get("request_id") == named]
    assert {line["message"] for line in of_the_request} >= {"request"}
    access = next(line for line in of_the_request if line["message"] == "request")
    assert access["route"] == "/v1/runs/<string:run_id>/contributions/<path:round_key>"
    assert access["run_id"] == run_id and access["round_key"] == "r" and access["status"] == response.status_code
    assert "not a ciphertext" not in json.dumps(lines)
