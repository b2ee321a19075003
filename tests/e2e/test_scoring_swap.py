"""A model swap under load, on a real scoring-service process: no request fails, and every answer
was scored by the model it names (its probability is that model's, not the other's)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
import xgboost as xgb

from bank_node.agent.state import StateDir
from bank_node.features import MODEL_INPUTS, compute_features, model_matrix
from bank_node.generator import generate_transactions
from fedfraud.localnet import FEDFRAUD, free_port, wait_for, wait_until_serving
from schemas.transaction import to_canonical
from tests.bank_node.test_scoring_service import as_json, keep_model, scoring_node
from tests.bank_node.test_scoring import _published

pytestmark = pytest.mark.slow

START = pd.Timestamp("2018-05-16")
SENDERS = 4


def test_no_request_fails_and_each_names_the_model_that_scored_it(tmp_path: Path) -> None:
    from bank_node.agent.training import training_rows
    from fedfraud.simulation import partition_customers

    raw = generate_transactions(n_customers=1200, n_terminals=800, days=50, seed=8, start_date="2018-04-01")
    data = to_canonical(raw, None, require_label=True).sort_values(["timestamp", "transaction_id"])
    owner = partition_customers(data["customer_id"], (0.5, 0.3, 0.2), seed=0)
    rows = {f"bank-{i + 1}": training_rows(data[owner == i], train_start=pd.Timestamp("2018-05-06").date(),
                                           train_days=7) for i in range(3)}
    old = _published("xgboost", {"n_trees": 3, "max_depth": 2, "n_bins": 16}, rows)
    new = _published("xgboost", {"n_trees": 15, "max_depth": 3, "n_bins": 32}, rows)

    root = tmp_path / "node"
    state = StateDir(root)
    token = scoring_node(root, data[data["timestamp"] < START], old)

    # One transaction per card: each one's features depend on the stored history only, whatever
    # order the senders' requests arrive in, so each answer can be checked against both models.
    week = data[data["timestamp"] >= START].drop_duplicates("customer_id")
    history = data.copy()
    history.loc[history["timestamp"] >= START, "label"] = 0
    featured = compute_features(history[(history["timestamp"] < START) | history["transaction_id"].isin(
        week["transaction_id"])], start=START).set_index("transaction_id").loc[week["transaction_id"]]
    X = model_matrix(featured.reset_index())
    expected = {}
    for version, body in (("1", old), ("2", new)):
        booster = xgb.Booster()
        booster.load_model(bytearray(body))
        expected[version] = dict(zip(week["transaction_id"], booster.predict(
            xgb.DMatrix(X, feature_names=list(MODEL_INPUTS))), strict=True))

    port = free_port()
    log = open(tmp_path / "service.log", "wb")  # noqa: SIM115 - closed below
    service = subprocess.Popen([*FEDFRAUD, "bank", "serve", "--state-dir", str(root), "--port", str(port),
                                "--model-reload", "0.1"], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    answers: list[dict[str, Any]] = []
    timings: list[tuple[float, float]] = []  # each answer's (sent, received), on the client's clock
    failures: list[str] = []
    try:
        wait_until_serving(f"{url}/v1/ready", service, tmp_path / "service.log", 60, "the scoring service")
        queue = as_json(week)
        lock = threading.Lock()

        def send() -> None:
            session = requests.Session()
            while True:
                with lock:
                    if not queue:
                        return
                    tx = queue.pop(0)
                sent = time.monotonic()
                response = session.post(f"{url}/v1/score", json=tx, timeout=30,
                                        headers={"Authorization": f"Bearer {token}"})
                received = time.monotonic()
                with lock:
                    if response.status_code == 200:
                        answers.append(response.json())
                        timings.append((sent, received))
                    else:
                        failures.append(f"{response.status_code} {response.text[:200]}")

        senders = [threading.Thread(target=send) for _ in range(SENDERS)]
        for sender in senders:
            sender.start()
        wait_for(lambda: len(answers) >= len(week) // 3 or None, 120, "a third of the requests")
        keep_model(state, "2", new)  # the agent keeps a newly promoted model: the service swaps by itself
        for sender in senders:
            sender.join(300)
    finally:
        service.terminate()
        service.wait(timeout=30)
        log.close()

    assert failures == []
    assert len(answers) == len(week) > 600
    versions = [a["model_version"] for a in answers]
    assert set(versions) == {"1", "2"}
    for answer in answers:
        mine = expected[answer["model_version"]][answer["transaction_id"]]
        other = expected["2" if answer["model_version"] == "1" else "1"][answer["transaction_id"]]
        assert abs(answer["probability"] - mine) < 1e-6, answer
        if abs(mine - other) > 1e-4:
            assert abs(answer["probability"] - other) > 1e-5
    # Once the new model answered, the old one never did again: no request sent after an answer
    # from the new model was received got an answer from the old one. (Requests sent earlier may
    # still finish later with the old model they started with: a slow one can be passed by many.)
    first_new = min(received for answer, (_, received) in zip(answers, timings, strict=True)
                    if answer["model_version"] == "2")
    late = [answer["transaction_id"] for answer, (sent, _) in zip(answers, timings, strict=True)
            if answer["model_version"] == "1" and sent > first_new]
    assert late == []
