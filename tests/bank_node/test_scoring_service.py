"""The risk team's scoring service: scores equal the model's on the batch features, reasons,
recording, roles, clear errors, and a model swap that leaves no request half-served."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from bank_node.agent.state import StateDir
from bank_node.features import MODEL_INPUTS, compute_features, model_matrix
from bank_node.generator import generate_transactions
from bank_node.service.app import create_app
from bank_node.service.auth import issue_token
from bank_node.store import TransactionStore
from schemas.transaction import to_canonical
from tests.bank_node.test_scoring import _published

START = pd.Timestamp("2018-05-16")


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    raw = generate_transactions(n_customers=300, n_terminals=400, days=50, seed=21, start_date="2018-04-01")
    return to_canonical(raw, None, require_label=True).sort_values(["timestamp", "transaction_id"])


@pytest.fixture(scope="module")
def model_files(data: pd.DataFrame) -> dict[str, bytes]:
    from bank_node.agent.training import training_rows
    from fedfraud.simulation import partition_customers

    owner = partition_customers(data["customer_id"], (0.5, 0.3, 0.2), seed=0)
    rows = {f"bank-{i + 1}": training_rows(data[owner == i], train_start=pd.Timestamp("2018-05-06").date(),
                                           train_days=7) for i in range(3)}
    return {"small": _published("xgboost", {"n_trees": 4, "max_depth": 2, "n_bins": 32}, rows),
            "large": _published("xgboost", {"n_trees": 12, "max_depth": 3, "n_bins": 32}, rows)}


def keep_model(state: StateDir, version: str, body: bytes, *, promoted: bool = True) -> None:
    """What the agent does with a verified, published model."""
    path = state.save_model(version, "xgboost", body)
    state.update_run(f"run-{version}", {"status": "published", "model": "xgboost", "version": version,
                                        "model_file": str(path), "promoted": promoted, "matches_proposal": True,
                                        "digest": hashlib.sha256(body).hexdigest(),
                                        "signed_by": ["bank-1", "bank-2", "bank-3"]})


def scoring_node(root: Path, history: pd.DataFrame, model: bytes) -> str:
    """A bank node ready to score: ``history`` in its store, ``model`` kept as version 1 (as its
    agent keeps a promoted model); returns a scorer token."""
    state = StateDir(root)
    state.ensure()
    store = TransactionStore.in_state_dir(root)
    store.ingest(history, name="history", sha256=hashlib.sha256(root.name.encode()).hexdigest(), retention_days=None)
    token = issue_token(store.engine, "scorer")
    store.close()
    keep_model(state, "1", model)
    return token


class Node:
    def __init__(self, root: Path, data: pd.DataFrame) -> None:
        self.state = StateDir(root)
        self.state.ensure()
        store = TransactionStore.in_state_dir(root)
        store.ingest(data[data["timestamp"] < START], name="history", sha256="2" * 64, retention_days=None)
        self.scorer = issue_token(store.engine, "scorer")
        self.admin = issue_token(store.engine, "admin")
        store.close()
        self.app = create_app(root, config={"MAX_BATCH": 300, "EXACT_REASONS_MAX": 50})
        self.client = self.app.test_client()

    def post(self, path: str, body: Any, token: str | None = None) -> Any:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return self.client.post(path, json=body, headers=headers)


def as_json(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{"transaction_id": int(r.transaction_id), "timestamp": r.timestamp.isoformat(),
             "customer_id": int(r.customer_id), "terminal_id": int(r.terminal_id), "amount": float(r.amount)}
            for r in frame.itertuples()]


@pytest.fixture
def node(tmp_path: Path, data: pd.DataFrame, model_files: dict[str, bytes]) -> Node:
    made = Node(tmp_path / "node", data)
    keep_model(made.state, "1", model_files["small"])
    made.app.extensions["fedfraud_scoring"].refresh()
    return made


def test_scores_are_the_models_on_the_batch_features_and_scored_transactions_are_recorded(
    node: Node, data: pd.DataFrame, model_files: dict[str, bytes]
) -> None:
    week = data[(data["timestamp"] >= START) & (data["timestamp"] < START + pd.Timedelta(days=2))]
    answers = []
    for tx in as_json(week.iloc[:40]):  # one at a time, as authorisations arrive
        response = node.post("/v1/score", tx, node.scorer)
        assert response.status_code == 200, response.get_json()
        answers.append(response.get_json())
    batch = node.post("/v1/score", {"transactions": as_json(week.iloc[40:240])}, node.scorer)
    assert batch.status_code == 200, batch.get_json()
    answers += batch.get_json()["results"]

    same_history = data[data["timestamp"] < START + pd.Timedelta(days=2)].copy()
    same_history.loc[same_history["timestamp"] >= START, "label"] = 0
    features = compute_features(same_history, start=START, end=START).set_index("transaction_id")
    features = features.loc[week["transaction_id"].iloc[:240]].reset_index()
    booster = xgb.Booster()
    booster.load_model(bytearray(model_files["small"]))
    expected = booster.predict(xgb.DMatrix(model_matrix(features), feature_names=list(MODEL_INPUTS)))
    np.testing.assert_allclose([a["probability"] for a in answers], expected, rtol=1e-6)
    assert {a["model_version"] for a in answers} == {"1"}
    assert all(a["decision"] == ("alert" if a["probability"] >= 0.5 else "pass") for a in answers)
    assert all(len(a["reasons"]) == 3 and a["reasons"][0]["feature"] in MODEL_INPUTS for a in answers)
    assert answers[0]["reasons_exact"] is True
    # Recorded: the same transaction again is refused, and nothing of that request is recorded.
    again = node.post("/v1/score", {"transactions": as_json(week.iloc[239:241])}, node.scorer)
    assert again.status_code == 409 and "seen before" in again.get_json()["message"]
    fresh = node.post("/v1/score", as_json(week.iloc[[240]])[0], node.scorer)
    assert fresh.status_code == 200


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"transactions": []}, 422, "transactions"),
    ({"transaction_id": 1, "timestamp": "1212-05-16T10:00:00", "customer_id": 1, "terminal_id": 2, "amount": 3.0},
     422, "transactions.0.timestamp"),
    ({"transaction_id": 1, "timestamp": "2999-05-16T10:00:00", "customer_id": 1, "terminal_id": 2, "amount": 3.0},
     422, "transactions.0.timestamp"),
    ({"transaction_id": 1, "timestamp": "2018-05-16T10:00:00", "customer_id": 1, "terminal_id": 2}, 422,
     "transactions.0.amount"),
    ({"transaction_id": "x1", "timestamp": "2018-05-16T10:00:00", "customer_id": 1, "terminal_id": 2,
      "amount": 3.0}, 422, "transactions.0.transaction_id"),
    ({"transaction_id": 1, "timestamp": "yesterday", "customer_id": 1, "terminal_id": 2, "amount": 3.0}, 422,
     "transactions.0.timestamp"),
    ({"transaction_id": 1, "timestamp": "2018-05-16T10:00:00", "customer_id": 1, "terminal_id": 2, "amount": 3.0,
      "pan": "4111111111111111"}, 422, "transactions.0.pan"),
])
def test_bad_input_is_named(node: Node, body: Any, status: int, field: str) -> None:
    response = node.post("/v1/score", body, node.scorer)
    assert response.status_code == status
    assert field in response.get_json()["errors"], response.get_json()


def test_limits_tokens_and_roles(node: Node, data: pd.DataFrame) -> None:
    many = as_json(data[data["timestamp"] >= START].iloc[:301])
    over = node.post("/v1/score", {"transactions": many}, node.scorer)
    assert over.status_code == 413 and "at most 300" in over.get_json()["message"]
    assert node.post("/v1/score", many[0]).status_code == 401
    assert node.post("/v1/score", many[0], "not-a-token").status_code == 401
    assert node.client.post("/v1/score", data="x", headers={"Authorization": f"Bearer {node.scorer}"}).status_code == 415
    labels = {"labels": [{"transaction_id": many[0]["transaction_id"], "label": 1}]}
    assert node.post("/v1/labels", labels, node.scorer).status_code == 403
    node.post("/v1/score", many[0], node.scorer)
    recorded = node.post("/v1/labels", labels, node.admin)
    assert recorded.status_code == 200 and recorded.get_json()["updated"] == 1
    unknown = node.post("/v1/labels", {"labels": [{"transaction_id": 10**15, "label": 1}]}, node.admin)
    assert unknown.status_code == 422 and "does not hold" in unknown.get_json()["message"]


def test_a_promoted_model_replaces_the_old_one_and_a_broken_one_does_not(
    node: Node, data: pd.DataFrame, model_files: dict[str, bytes]
) -> None:
    scoring = node.app.extensions["fedfraud_scoring"]
    holder = scoring.holder
    txs = as_json(data[data["timestamp"] >= START].iloc[:3])
    first = node.post("/v1/score", txs[0], node.scorer).get_json()
    keep_model(node.state, "2", model_files["large"])
    assert scoring.refresh()
    second = node.post("/v1/score", txs[1], node.scorer).get_json()
    assert (first["model_version"], second["model_version"]) == ("1", "2")
    assert node.client.get("/v1/model", headers={"Authorization": f"Bearer {node.scorer}"}).get_json()["run_id"] == "run-2"

    keep_model(node.state, "3", b'{"learner": "not a model"}')
    assert not scoring.refresh()
    assert "model 3 not loaded, model 2 stays in use" in holder.last_error
    auth = {"Authorization": f"Bearer {node.scorer}"}
    assert "model 3 not loaded" in node.client.get("/v1/model", headers=auth).get_json()["last_load_error"]
    assert "fedfraud_model_load_failing 1.0" in node.client.get("/metrics").get_data(as_text=True)
    # A file changed on disk after the agent verified it is not served either.
    keep_model(node.state, "4", model_files["small"])
    tampered = Path(node.state.runs()["run-4"]["model_file"])
    tampered.write_bytes(model_files["large"])
    assert not holder.refresh() and "is not the verified model's" in holder.last_error
    third = node.post("/v1/score", txs[2], node.scorer).get_json()
    assert third["model_version"] == "2"
    ready = node.client.get("/v1/ready")
    assert ready.status_code == 200 and ready.get_json()["model_version"] == "2"


@pytest.mark.parametrize("broken", [
    b'{"learner": "not a model"}',
    # A features setting that is not text: json.loads raises a TypeError, not a ValueError.
    json.dumps({"learner": {"attributes": {"fedfraud_features": 5}}}).encode(),
])
def test_a_worker_started_after_a_broken_model_arrived_serves_the_newest_that_loads(
    tmp_path: Path, data: pd.DataFrame, model_files: dict[str, bytes], broken: bytes
) -> None:
    """A worker restarted (or added) after a model that fails to load was promoted must serve
    what the workers started before it serve, not nothing: half the requests would fail."""
    made = Node(tmp_path / "node", data)
    keep_model(made.state, "1", model_files["small"])
    keep_model(made.state, "2", model_files["large"])
    keep_model(made.state, "3", broken)
    restarted = create_app(tmp_path / "node")
    node = restarted.extensions["fedfraud_scoring"]
    assert node.holder.serving is not None and node.holder.serving.model.version == "2"
    assert "model 3 not loaded, model 2 in use" in node.holder.last_error
    client = restarted.test_client()
    tx = as_json(data[data["timestamp"] >= START].iloc[:1])[0]
    scored = client.post("/v1/score", json=tx, headers={"Authorization": f"Bearer {made.scorer}"})
    assert scored.status_code == 200 and scored.get_json()["model_version"] == "2"
    assert client.get("/v1/ready").status_code == 200
    assert "fedfraud_model_load_failing 1.0" in client.get("/metrics").get_data(as_text=True)
    assert not node.refresh() and node.holder.serving.model.version == "2"  # still trying 3, still on 2


def test_without_a_model_the_node_is_not_ready_and_says_why(tmp_path: Path, data: pd.DataFrame) -> None:
    bare = Node(tmp_path / "bare", data)
    assert bare.client.get("/v1/health").status_code == 200
    ready = bare.client.get("/v1/ready")
    assert ready.status_code == 503 and "no model loaded" in ready.get_json()["problems"][0]
    tx = as_json(data[data["timestamp"] >= START].iloc[:1])[0]
    refused = bare.post("/v1/score", tx, bare.scorer)
    assert refused.status_code == 503 and "no model" in refused.get_json()["message"]
    spec = bare.client.get("/openapi.json").get_json()
    assert {"/v1/score", "/v1/labels", "/v1/model", "/v1/health", "/v1/ready"} <= set(spec["paths"])
    assert "ScoreRequest" in spec["components"]["schemas"]


def test_readiness_asked_without_a_token_says_a_model_failed_but_not_where_it_is(
    tmp_path: Path, data: pd.DataFrame, model_files: dict[str, bytes]
) -> None:
    made = Node(tmp_path / "node", data)
    keep_model(made.state, "1", model_files["small"])
    Path(made.state.runs()["run-1"]["model_file"]).unlink()  # a restore that lost the models folder
    restarted = create_app(tmp_path / "node")
    client = restarted.test_client()
    ready = client.get("/v1/ready")
    assert ready.status_code == 503 and "failed to load" in ready.get_json()["problems"][0]
    assert str(tmp_path) not in ready.get_data(as_text=True)
    model = client.get("/v1/model", headers={"Authorization": f"Bearer {made.scorer}"})
    assert model.status_code == 503 and "model 1 not loaded" in model.get_json()["message"]
    assert "No such file" in model.get_json()["message"]


def test_metrics_show_latency_decisions_and_the_model_in_use(node: Node, data: pd.DataFrame) -> None:
    txs = as_json(data[data["timestamp"] >= START].iloc[:5])
    answers = [node.post("/v1/score", tx, node.scorer).get_json() for tx in txs]
    alerts = sum(a["decision"] == "alert" for a in answers)
    text = node.client.get("/metrics").get_data(as_text=True)
    assert 'flask_http_request_duration_seconds_count{endpoint="scoring.Score",method="POST",status="200"} 5.0' in text
    assert f'fedfraud_scores_total{{decision="pass"}} {float(5 - alerts)}' in text
    assert "fedfraud_model_version 1.0" in text and "fedfraud_model_load_failing 0.0" in text


def test_a_revoked_token_is_refused_and_listing_shows_no_token(node: Node) -> None:
    from click.testing import CliRunner

    from bank_node.agent.cli import bank_cli
    from bank_node.service import auth

    auth_header = {"Authorization": f"Bearer {node.scorer}"}
    assert node.client.get("/v1/model", headers=auth_header).status_code == 200
    runner, where = CliRunner(), ["--state-dir", str(node.state.root)]
    listed = runner.invoke(bank_cli, ["tokens", *where])
    scorer_id = hashlib.sha256(node.scorer.encode()).hexdigest()[:12]
    assert listed.exit_code == 0 and f"{scorer_id}  scorer" in listed.output and "admin" in listed.output
    assert node.scorer not in listed.output and node.admin not in listed.output
    assert "0 tokens have the id" in runner.invoke(bank_cli, ["revoke-token", "00000000", *where]).output
    assert "at least 8 hex digits" in runner.invoke(bank_cli, ["revoke-token", "scorer", *where]).output
    revoked = runner.invoke(bank_cli, ["revoke-token", scorer_id, *where])
    assert revoked.exit_code == 0 and f"revoked the scorer token {scorer_id}" in revoked.output
    # Another process still holding the role in memory asks the database again once it expires.
    digest = hashlib.sha256(node.scorer.encode()).hexdigest()
    auth._known[digest] = (auth.Role.SCORER, 0.0)
    refused = node.client.get("/v1/model", headers=auth_header)
    assert refused.status_code == 401 and refused.get_json()["message"] == "unknown token"
    admin = {"Authorization": f"Bearer {node.admin}"}
    assert node.client.get("/v1/model", headers=admin).status_code == 200  # the other token still works


def test_tokens_are_stored_hashed(node: Node) -> None:
    from sqlalchemy import select

    from bank_node.service.auth import service_tokens

    engine = node.app.extensions["fedfraud_scoring"].engine
    with engine.connect() as connection:
        stored = [row[0] for row in connection.execute(select(service_tokens.c.token_sha256))]
    assert len(stored) == 2 and node.scorer not in stored and node.admin not in stored
    import hashlib
    assert hashlib.sha256(node.scorer.encode()).hexdigest() in stored


def consortium_node(root: Path, data: pd.DataFrame, model: bytes, settings: dict[str, Any]) -> tuple[Any, Any, str]:
    """A node holding ``model`` with consortium feature ``settings`` recorded, an HE secret context,
    and its pooled history store: (the service's node, pooled history, HE key id)."""
    import crypto
    from bank_node.agent.ceremony import load_secret_scheme
    from bank_node.agent.training import FEATURES_ATTRIBUTE
    from bank_node.terminal_history import PooledHistory

    made = Node(root, data)
    made.state.save_secret_context(crypto.generate("plain").secret_context())
    document = json.loads(model)
    document["learner"]["attributes"][FEATURES_ATTRIBUTE] = json.dumps(settings)
    keep_model(made.state, "1", json.dumps(document).encode())
    extension = made.app.extensions["fedfraud_scoring"]
    return extension, PooledHistory(extension.engine), load_secret_scheme(made.state).key_id


def test_a_new_nights_pooled_history_is_taken_up_with_the_same_model(
    tmp_path: Path, data: pd.DataFrame, model_files: dict[str, bytes]
) -> None:
    """The pooled period slides by a day each night (as many days held as before): the service
    must still see the change, or it would miss the newest day's consortium events."""
    from tests.bank_node.test_terminal_history import history

    node, pooled, key_id = consortium_node(tmp_path / "node", data, model_files["small"],
                                             {"terminal_features": "consortium", "terminal_threshold": 3})
    holder = node.holder
    pooled.save(key_id, history([100, 101], per_day=5, presence={1: 3}), banks=["b1", "b2", "b3"], run_id="r1",
                labels_until=100)
    assert holder.refresh() and holder.serving is not None and holder.serving.consortium is not None
    assert holder.serving.consortium.history.days == (100, 101)
    assert not holder.refresh()  # nothing changed: nothing reloaded
    pooled.save(key_id, history([102], per_day=5, presence={1: 3}), banks=["b1", "b2", "b3"], run_id="r2",
                labels_until=101, keep_from=101)
    assert holder.refresh()
    assert holder.serving.consortium.history.days == (101, 102)


def test_a_worker_makes_its_terminals_tags_when_it_takes_up_a_model_and_a_new_night_keeps_them(
    tmp_path: Path, data: pd.DataFrame, model_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminal's consortium tag is a keyed hash: made when the worker takes up a model, for the
    terminals of the recent transactions it holds, not by the first request at each; a new night's
    history keeps the tags made under the same key, and a new key starts afresh. They are the
    keyed tags."""
    import bank_node.online
    import crypto
    from bank_node.agent.ceremony import load_secret_scheme
    from bank_node.federated.terminal_stats import terminal_tags
    from tests.bank_node.test_terminal_history import history

    node, pooled, key_id = consortium_node(tmp_path / "node", data, model_files["small"],
                                             {"terminal_features": "consortium", "terminal_threshold": 3})
    holder = node.holder
    pooled.save(key_id, history([100, 101], per_day=5, presence={1: 3}), banks=["b1", "b2", "b3"], run_id="r1",
                labels_until=100)
    assert node.refresh()
    first = holder.serving.consortium
    held = np.array(sorted(node.online.recent.terminal_ids()), dtype=np.int64)
    assert len(held) == data.loc[data["timestamp"] < START, "terminal_id"].nunique()  # every terminal held
    assert [first._tags.get(t) for t in held.tolist()] == terminal_tags(held, first.key).tolist()

    made: list[np.ndarray] = []
    monkeypatch.setattr(bank_node.online, "terminal_tags",
                        lambda ids, key: made.append(ids) or terminal_tags(ids, key))
    pooled.save(key_id, history([102], per_day=5, presence={1: 3}), banks=["b1", "b2", "b3"], run_id="r2",
                labels_until=101, keep_from=101)
    assert node.refresh()
    second = holder.serving.consortium
    assert second is not first and second.history.days == (101, 102)
    assert second.tags(held).tolist() == terminal_tags(held, first.key).tolist()
    assert made == []  # no tag made again: not at the swap, not at a request
    unseen = np.array([held.max() + 1], dtype=np.int64)
    assert second.tags(unseen).tolist() == terminal_tags(unseen, first.key).tolist() and len(made) == 1

    # The ceremony run again: a new secret context, so a new terminal key; no tag of the old key
    # may be carried over (each would point at another terminal's pooled history, or at none).
    node.state.save_secret_context(crypto.generate("plain").secret_context())
    new_id = load_secret_scheme(node.state).key_id
    pooled.save(new_id, history([102, 103], per_day=5, presence={1: 3}), banks=["b1", "b2", "b3"], run_id="r3",
                labels_until=102)
    assert node.refresh()
    third = holder.serving.consortium
    assert third.key != first.key
    assert [third._tags.get(t) for t in held.tolist()] == terminal_tags(held, third.key).tolist()
    assert third.tags(held).tolist() != terminal_tags(held, first.key).tolist()


def test_a_model_trained_on_noisy_day_counts_is_served_from_that_history_only(
    tmp_path: Path, data: pd.DataFrame, model_files: dict[str, bytes]
) -> None:
    from bank_node.agent.training import FeatureSettings
    from tests.bank_node.test_terminal_history import history

    node, pooled, key_id = consortium_node(
        tmp_path / "node", data, model_files["small"],
        {"terminal_features": "consortium", "terminal_threshold": 3, "terminal_dp_epsilon": 2})
    holder = node.holder
    # Exact events of the same key do not serve it: its features were built from noisy day counts.
    pooled.save(key_id, history([100, 101], per_day=5, presence={1: 3}), banks=["b1", "b2", "b3"], run_id="r1",
                labels_until=100)
    holder.refresh()
    assert holder.serving is None or holder.serving.consortium is None
    noisy_id = FeatureSettings(True, 3, terminal_epsilon=2.0).history_id(key_id)
    pooled.save(noisy_id, history([101, 102], per_day=5, presence={1: 3}), banks=["b1", "b2", "b3"], run_id="r2",
                labels_until=101)
    assert holder.refresh() and holder.serving is not None and holder.serving.consortium is not None
    assert holder.serving.consortium.history.days == (101, 102)


def test_answers_encoded_by_orjson_read_as_flasks_own_encoder_wrote_them(tmp_path: Path) -> None:
    """The scoring service encodes with orjson for speed; what it writes parses to what Flask's own
    encoder writes, keys in the same order, dates as Flask gives them."""
    from datetime import datetime

    from flask import Flask
    from flask.json.provider import DefaultJSONProvider

    from bank_node.service.app import _FastJSON

    app = Flask("probe")
    document = {"b": 1, "a": [0.1, 2.5e-300, None, True], "when": datetime(2018, 9, 14, 20, 18, 1),
                "nested": {"z": "é", "y": {"x": 1e9}}}
    ours, flasks = _FastJSON(app).dumps(document), DefaultJSONProvider(app).dumps(document)
    assert json.loads(ours) == json.loads(flasks)
    assert list(json.loads(ours)) == list(json.loads(flasks))
    with app.app_context():
        body = _FastJSON(app).response(document).get_data()
        # jsonify's forms: one argument as is, several as a list, keywords as an object, none as null.
        for args, kwargs in (((), {}), ((1, "x", document), {}), ((), {"z": 1, "a": document}), (([],), {})):
            assert (json.loads(_FastJSON(app).response(*args, **kwargs).get_data())
                    == json.loads(DefaultJSONProvider(app).response(*args, **kwargs).get_data()))
        with pytest.raises(TypeError):
            _FastJSON(app).response(1, a=2)
    assert body.endswith(b"\n") and json.loads(body) == json.loads(flasks)


def _raw(node: Node, path: str, body: bytes, token: str) -> Any:
    return node.client.post(path, data=body, content_type="application/json",
                            headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize(("path", "body", "status", "field"), [
    # A lone surrogate (in a key the schema would name): refused before, not a 500 in the answer.
    ("/v1/score", b'{"\\ud800": 1}', 400, None),
    ("/v1/labels", b'{"labels": [{"transaction_id": 1, "label": 1, "\\udfff": 2}]}', 400, None),
    # An integer too long for the standard library to read (over 4,300 digits).
    ("/v1/score", b'{"transaction_id": ' + b"9" * 5000 + b"}", 400, None),
    ("/v1/labels", b'{"labels": [{"transaction_id": ' + b"7" * 5000 + b', "label": 1}]}', 400, None),
    # Ids outside 0 .. 2**63 - 1, as for scoring.
    ("/v1/labels", b'{"labels": [{"transaction_id": 18446744073709551616, "label": 1}]}', 422,
     "labels.0.transaction_id"),
    ("/v1/labels", b'{"labels": [{"transaction_id": 9223372036854775808, "label": 1}]}', 422,
     "labels.0.transaction_id"),
    ("/v1/labels", b'{"labels": [{"transaction_id": -1, "label": 1}]}', 422, "labels.0.transaction_id"),
    # An amount is a JSON number: not a numeric string, not a boolean.
    ("/v1/score", b'{"transaction_id": 1, "timestamp": "2018-05-16T10:00:00", "customer_id": 1, "terminal_id": 2, '
                  b'"amount": "12.5"}', 422, "transactions.0.amount"),
    ("/v1/score", b'{"transaction_id": 1, "timestamp": "2018-05-16T10:00:00", "customer_id": 1, "terminal_id": 2, '
                  b'"amount": true}', 422, "transactions.0.amount"),
    # Long before the newest transaction held (from 2018-05-15): history, not a transaction to
    # score (each would be featured by reading the store back to its day).
    ("/v1/score", b'{"transaction_id": 1, "timestamp": "1970-01-02T00:00:00", "customer_id": 1, "terminal_id": 2, '
                  b'"amount": 3.0}', 422, "transactions.0.timestamp"),
    ("/v1/score", b'{"transactions": [{"transaction_id": 1, "timestamp": "2018-05-16T10:00:00", "customer_id": 1, '
                  b'"terminal_id": 2, "amount": 3.0}, {"transaction_id": 2, "timestamp": "2018-04-10T10:00:00", '
                  b'"customer_id": 1, "terminal_id": 2, "amount": 3.0}]}', 422, "transactions.1.timestamp"),
    # The same transaction twice in one labels request: which label is meant is unknown.
    ("/v1/labels", b'{"labels": [{"transaction_id": 1, "label": 1}, {"transaction_id": 1, "label": 0}]}', 422,
     "labels.transaction_id"),
])
def test_hostile_bodies_get_a_4xx_naming_the_problem_and_record_nothing(
    node: Node, path: str, body: bytes, status: int, field: str | None
) -> None:
    before = node.app.extensions["fedfraud_scoring"].store.version()
    token = node.admin if path == "/v1/labels" else node.scorer
    response = _raw(node, path, body, token)
    assert response.status_code == status, response.get_data(as_text=True)
    answer = response.get_json()
    assert answer["message"]
    if field is not None:
        assert field in answer["errors"], answer
    assert node.app.extensions["fedfraud_scoring"].store.version() == before


def test_a_label_sent_again_after_a_correction_is_applied_again(node: Node, data: pd.DataFrame) -> None:
    """Labels are set to what each request says: a body identical to an earlier one is not a
    replay to skip when a correction came in between."""
    tx = as_json(data[data["timestamp"] >= START].iloc[:1])[0]
    assert node.post("/v1/score", tx, node.scorer).status_code == 200
    fraud = {"labels": [{"transaction_id": tx["transaction_id"], "label": 1}]}
    genuine = {"labels": [{"transaction_id": tx["transaction_id"], "label": 0}]}
    answers = [node.post("/v1/labels", body, node.admin).get_json() for body in (fraud, genuine, fraud, fraud)]
    assert [a["updated"] for a in answers] == [1, 1, 1, 0]
    assert answers[-1]["unchanged"] == 1
    store = node.app.extensions["fedfraud_scoring"].store
    held = store.between(START.to_pydatetime(), (START + pd.Timedelta(days=1)).to_pydatetime())
    assert held.set_index("transaction_id").loc[tx["transaction_id"], "label"] == 1


def test_a_body_sent_in_chunks_is_bounded_as_one_with_a_length(node: Node) -> None:
    """No Content-Length (chunked transfer): the body is still refused past the limit while it is
    read, not buffered whole first."""
    limit = int(node.app.config["MAX_BODY_BYTES"])
    served = 0

    def chunks() -> Any:
        nonlocal served
        yield b'{"transactions": ['
        while served < 16 * limit:  # far more than the service may read
            served += 65536
            yield b" " * 65536
        yield b"]}"

    from werkzeug.test import EnvironBuilder, run_wsgi_app

    environ = EnvironBuilder(path="/v1/score", method="POST", content_type="application/json",
                             headers={"Authorization": f"Bearer {node.scorer}"}).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    # What gunicorn hands over for a chunked body: no length, a stream that ends where the body does.
    environ.update({"wsgi.input": _Stream(chunks()), "wsgi.input_terminated": True,
                    "HTTP_TRANSFER_ENCODING": "chunked"})
    body, status, _ = run_wsgi_app(node.app, environ, buffered=True)
    assert status.startswith("413"), status
    assert "at most" in json.loads(b"".join(body))["message"]
    assert served < limit + 4 * 65536


class _Stream:
    """A request body read from a generator, as a server hands over a chunked body."""

    def __init__(self, parts: Any) -> None:
        self.parts, self.buffer = parts, b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self.buffer) < size:
            try:
                self.buffer += next(self.parts)
            except StopIteration:
                break
        if size < 0:
            size = len(self.buffer)
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)
