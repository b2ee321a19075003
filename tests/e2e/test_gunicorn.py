"""The production configuration (ops/gunicorn.conf.py) serves the app with migrations applied."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from fedfraud.localnet import free_port, run_cli, wait_for, wait_until_serving

REPO = Path(__file__).resolve().parents[2]


def test_a_local_consortium_can_run_under_gunicorn_as_in_production(tmp_path: Path) -> None:
    """bench/nightly.py --gunicorn-workers: the local consortium served by ops/gunicorn.conf.py
    with its workers, on the consortium's own database, answering its operator. Two workers
    need PostgreSQL (CI's); on SQLite they are refused at start, saying why."""
    from fedfraud.localnet import LocalConsortium

    base = os.environ.get("FEDFRAUD_TEST_DATABASE_URL")
    with contextlib.ExitStack() as stack:
        local = LocalConsortium(root=tmp_path / "consortium")
        if base:
            from tests.consortium.conftest import pg_schema

            local.env["FEDFRAUD_DATABASE_URL"] = stack.enter_context(pg_schema(base, "gunicorn"))
        local.initialise(["bank-1"])
        if not base:
            with pytest.raises(RuntimeError, match="FEDFRAUD_WORKERS=2: the consortium's database is SQLite"):
                local.start(gunicorn_workers=2)
            local.stop()
        local.start(gunicorn_workers=2 if base else 1)
        try:
            assert local.api("GET", "/v1/banks").status_code == 200
            workers = subprocess.run(["pgrep", "-P", str(local.process.pid if local.process else 0)],
                                     capture_output=True, text=True, check=False).stdout.split()
            assert len(workers) == (2 if base else 1)
        finally:
            local.stop()
    assert (tmp_path / "consortium" / "aggregator.log").read_text().count("Booting worker") == (2 if base else 1)


def test_gunicorn_runs_one_worker_on_sqlite_unless_told_more_which_it_refuses(tmp_path: Path) -> None:
    """Two workers on SQLite both released the same round (its lock is the process's): the
    production configuration runs one there by default, and refuses more, saying what to do,
    whether they are asked for by FEDFRAUD_WORKERS or by gunicorn's own -w."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDFRAUD_")}
    env.update(FEDFRAUD_DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}", FEDFRAUD_BLOB_DIR=str(tmp_path / "blobs"),
               FEDFRAUD_BIND=f"127.0.0.1:{free_port()}")
    command = [str(Path(sys.executable).with_name("gunicorn")), "-c", str(REPO / "ops" / "gunicorn.conf.py")]
    for extra_env, extra_args, asked in (({"FEDFRAUD_WORKERS": "3"}, [], "FEDFRAUD_WORKERS=3"), ({}, ["-w", "3"], "3 workers")):
        refused = subprocess.run([*command, *extra_args], env={**env, **extra_env}, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode != 0
        assert f"{asked}: the consortium's database is SQLite" in refused.stderr
        assert "FEDFRAUD_DATABASE_URL=postgresql://" in refused.stderr and "Traceback" not in refused.stderr
    # Nothing asked: one worker, and the log says why. That one worker is never recycled: while
    # it drained its long polls, nobody would take the banks' requests.
    log = open(tmp_path / "default.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, env={**env, "FEDFRAUD_MAX_REQUESTS": "5"}, cwd=tmp_path, stdout=log,
                               stderr=log)
    try:
        def workers() -> list[str]:
            return subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True,
                                  check=False).stdout.split()

        wait_until_serving(f"http://{env['FEDFRAUD_BIND']}/v1/health", process, tmp_path / "default.log", 60, "gunicorn")
        first = workers()
        assert len(first) == 1
        with requests.Session() as session:
            for _ in range(250):  # past FEDFRAUD_MAX_REQUESTS and its jitter (up to 200)
                assert session.get(f"http://{env['FEDFRAUD_BIND']}/v1/health", timeout=10).status_code == 200
        assert workers() == first
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    assert "SQLite database: one worker" in (tmp_path / "default.log").read_text()


def test_gunicorn_serves_the_consortium(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        base = os.environ.get("FEDFRAUD_TEST_DATABASE_URL")
        if base:  # two workers, as in production
            from tests.consortium.conftest import pg_schema

            url = stack.enter_context(pg_schema(base, "gunicorn"))
        else:  # one worker (SQLite's)
            url = f"sqlite:///{tmp_path / 'c.db'}"
        _serves_the_consortium(tmp_path, url)


def _serves_the_consortium(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDFRAUD_")}
    env.update(
        FEDFRAUD_DATABASE_URL=database_url,
        FEDFRAUD_BLOB_DIR=str(tmp_path / "blobs"),
        FEDFRAUD_BIND=f"127.0.0.1:{port}",
    )
    gunicorn = Path(sys.executable).with_name("gunicorn")
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([str(gunicorn), "-c", str(REPO / "ops" / "gunicorn.conf.py")], env=env, cwd=tmp_path,
                               stdout=log, stderr=log)
    try:

        def health() -> dict[str, str] | None:
            try:
                return dict(requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).json())
            except (requests.RequestException, ValueError):  # still booting: refused, reset or empty
                return None

        assert wait_for(health, 60, "gunicorn") == {"status": "ok", "database": "ok"}
        refused = requests.get(f"http://127.0.0.1:{port}/v1/runs", timeout=5)
        assert refused.status_code == 401 and refused.json()["code"] == 401
        assert requests.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).json()["openapi"].startswith("3.")
        odd = requests.get(f"http://127.0.0.1:{port}/v1/runs/a%22b%5Cc?q=1", timeout=5,
                           headers={"Authorization": "Bearer not-a-real-token-0123456789"})
        assert odd.status_code == 401
        # The workers' metrics are added up: every health check counted, whichever worker served it.
        monitor = run_cli("consortium", "create-token", "--role", "monitoring", env=env).strip().splitlines()[-1]
        for _ in range(10):
            assert requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=5).status_code == 200
        scraped = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5,
                               headers={"Authorization": f"Bearer {monitor}"})
        assert scraped.status_code == 200
        checks = sum(sample.value for family in text_string_to_metric_families(scraped.text)
                     for sample in family.samples if sample.name == "flask_http_request_duration_seconds_count"
                     and sample.labels.get("endpoint") == "health.health")
        assert checks >= 11
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    # The app's access log is one JSON object a line, even for a path with a quote and a
    # backslash, and never holds the Authorization header.
    text = (tmp_path / "gunicorn.log").read_text()
    access = [json.loads(line) for line in text.splitlines() if '"logger": "consortium.access"' in line]
    assert {entry["route"] for entry in access} >= {"/v1/health", "/v1/runs", "/v1/runs/<string:run_id>"}
    assert 'a"b\\c' in {entry.get("run_id") for entry in access}
    assert all(len(entry["request_id"]) == 32 for entry in access)
    assert "not-a-real-token" not in text


def test_scoring_processes_on_one_store_see_each_others_transactions(tmp_path: Path) -> None:
    """ops/gunicorn-scoring.conf.py (two workers) and a second service process (``fedfraud bank
    serve``) on the same node, each process with its own copy of the recent transactions. A
    card's transactions go to one process and the other in turn; every score must still be the
    model's on the batch features of the whole history, and /metrics must add up the workers."""
    import pandas as pd
    import xgboost as xgb

    from bank_node.features import MODEL_INPUTS, compute_features, model_matrix
    from bank_node.generator import generate_transactions
    from schemas.transaction import to_canonical
    from tests.bank_node.test_scoring_service import as_json, scoring_node

    start = pd.Timestamp("2018-05-16")
    raw = generate_transactions(n_customers=300, n_terminals=400, days=50, seed=4, start_date="2018-04-01")
    data = to_canonical(raw, None, require_label=True).sort_values(["timestamp", "transaction_id"])
    # A model that reads the card windows finely, so a transaction missed by one process shows.
    past = compute_features(data[data["timestamp"] < start], start="2018-04-15")
    average = past["CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"]
    target = (average > average.median()) ^ (past["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] >= 3)
    trained = xgb.train({"max_depth": 6, "objective": "binary:logistic", "eta": 0.3},
                        xgb.DMatrix(model_matrix(past), label=target, feature_names=list(MODEL_INPUTS)), 40)
    model = bytes(trained.save_raw("json"))
    root = tmp_path / "node"
    token = scoring_node(root, data[data["timestamp"] < start], model)
    # The busiest cards' next transactions: each one's windows hold the ones scored before it.
    week = data[data["timestamp"] >= start]
    busy = week["customer_id"].value_counts().index[:4]
    chosen = week[week["customer_id"].isin(busy)].head(60)
    assert chosen["customer_id"].value_counts().min() > 5

    port = free_port()
    log = open(tmp_path / "scoring.log", "wb")  # noqa: SIM115 - closed below
    process, env = _start_scoring(root, port, tmp_path, log)
    other_port = free_port()
    other = subprocess.Popen([str(Path(sys.executable).with_name("fedfraud")), "bank", "serve", "--state-dir", str(root),
                              "--port", str(other_port)], cwd=tmp_path, stdout=log, stderr=log,
                             env={k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"})
    urls = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{other_port}"]
    try:
        for service, url in zip((process, other), urls, strict=True):
            wait_until_serving(f"{url}/v1/ready", service, tmp_path / "scoring.log", 60, "the scoring service")
        _wait_for_both_workers(urls[0])
        answers = []
        for i, tx in enumerate(as_json(chosen)):
            response = requests.post(f"{urls[i % 2]}/v1/score", json=tx, timeout=10,
                                     headers={"Authorization": f"Bearer {token}", "Connection": "close"})
            assert response.status_code == 200, response.text
            answers.append(response.json())
        metrics = requests.get(f"{urls[0]}/metrics", timeout=5).text
    finally:
        for running in (process, other):
            running.terminate()
            running.wait(timeout=30)
        log.close()

    history = data[(data["timestamp"] < start) | data["transaction_id"].isin(chosen["transaction_id"])].copy()
    history.loc[history["timestamp"] >= start, "label"] = 0
    featured = compute_features(history, start=start).set_index("transaction_id").loc[chosen["transaction_id"]]
    booster = xgb.Booster()
    booster.load_model(bytearray(model))
    expected = booster.predict(xgb.DMatrix(model_matrix(featured.reset_index()), feature_names=list(MODEL_INPUTS)))
    np.testing.assert_allclose([a["probability"] for a in answers], expected, rtol=1e-6)
    scored = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith("fedfraud_scores_total{"))
    assert scored == (len(chosen) + 1) // 2  # the gunicorn workers' share
    assert _model_versions(metrics) == [1.0, 1.0]  # one per worker, still the model they took up
    # Each worker's own log lines are JSON too, from its start: the model it took up.
    took_up = [line for line in (tmp_path / "scoring.log").read_text().splitlines()
               if line.startswith("{") and json.loads(line).get("logger") == "bank_node.service.models"
               and json.loads(line)["message"].startswith("scoring with model 1")]
    assert len(took_up) >= 2, (tmp_path / "scoring.log").read_text()[-3000:]


def _start_scoring(root: Path, port: int, tmp_path: Path, log: Any, **settings: str) -> tuple[Any, dict[str, str]]:
    """ops/gunicorn-scoring.conf.py serving the node at ``root`` on ``port`` (its output to
    ``log``), with ``settings`` in its environment: the process and that environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDFRAUD_", "PROMETHEUS_"))}
    env.update(FEDFRAUD_STATE_DIR=str(root), FEDFRAUD_SCORING_BIND=f"127.0.0.1:{port}",
               PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"), **settings)
    process = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), "-c",
                                str(REPO / "ops" / "gunicorn-scoring.conf.py")], env=env, cwd=tmp_path,
                               stdout=log, stderr=log)
    return process, env


def _wait_for_both_workers(url: str) -> None:
    """Ready is answered by whichever worker accepts first; the other may still be loading (its
    gauge then reads 0, as it should: it serves nothing yet). Wait for both to serve the model."""
    wait_for(lambda: _model_versions(requests.get(f"{url}/metrics", timeout=5).text) == [1.0, 1.0], 60,
             "both workers to take up the model")


def _model_versions(metrics: str) -> list[float]:
    """The model-version gauges of the scoring workers in a /metrics text, smallest first."""
    return sorted(sample.value for family in text_string_to_metric_families(metrics)
                  for sample in family.samples if sample.name == "fedfraud_model_version")


def test_connections_that_send_nothing_do_not_stop_the_scoring_service(tmp_path: Path) -> None:
    """Two sync workers and two clients that connect and stay silent (a stalled client, a pool
    that connects ahead): each worker drops its silent connection after the idle timeout, says so
    in one line, and scores the next request; none waits for gunicorn's timeout to kill it."""
    import socket

    import pandas as pd
    import xgboost as xgb

    from bank_node.features import MODEL_INPUTS, compute_features, model_matrix
    from bank_node.generator import generate_transactions
    from schemas.transaction import to_canonical
    from tests.bank_node.test_scoring_service import as_json, scoring_node

    start = pd.Timestamp("2018-04-20")
    raw = generate_transactions(n_customers=100, n_terminals=100, days=25, seed=5, start_date="2018-04-01")
    data = to_canonical(raw, None, require_label=True).sort_values(["timestamp", "transaction_id"])
    past = compute_features(data[data["timestamp"] < start], start="2018-04-10")
    trained = xgb.train({"max_depth": 2, "objective": "binary:logistic"},
                        xgb.DMatrix(model_matrix(past), label=past["label"], feature_names=list(MODEL_INPUTS)), 5)
    token = scoring_node(tmp_path / "node", data[data["timestamp"] < start], bytes(trained.save_raw("json")))
    tx = as_json(data[data["timestamp"] >= start].iloc[:1])[0]

    port = free_port()
    log_path = tmp_path / "scoring.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    process, _ = _start_scoring(tmp_path / "node", port, tmp_path, log, FEDFRAUD_IDLE_TIMEOUT_S="2")
    url = f"http://127.0.0.1:{port}"
    silent: list[socket.socket] = []
    try:
        wait_until_serving(f"{url}/v1/ready", process, log_path, 60, "the scoring service")
        _wait_for_both_workers(url)
        # A bound on the client's side too: a connection never dropped fails the test, not hangs it.
        silent = [socket.create_connection(("127.0.0.1", port), timeout=15) for _ in range(2)]
        # Well inside gunicorn's timeout (30 s), after which the workers would be killed.
        scored = requests.post(f"{url}/v1/score", json=tx, headers={"Authorization": f"Bearer {token}"}, timeout=20)
        assert scored.status_code == 200, scored.text
        assert all(s.recv(1) == b"" for s in silent)  # each dropped by its worker (end of stream)
    finally:
        for s in silent:
            s.close()
        process.terminate()
        process.wait(timeout=30)
        log.close()
    text = log_path.read_text()
    assert "WORKER TIMEOUT" not in text and "Traceback" not in text, text[-3000:]
    assert text.count("closed a connection silent for longer than the idle timeout") >= 2, text[-3000:]
