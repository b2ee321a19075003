"""A handbook week scored through the API, in time order, equals ``fedfraud features`` and the
model's own ``Booster.predict`` on the same history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from click.testing import CliRunner

from bank_node.features import MODEL_INPUTS, compute_features, model_matrix
from bank_node.service.app import create_app
from fedfraud.cli import main as fedfraud_cli
from schemas.transaction import to_canonical
from tests.bank_node.test_scoring_service import as_json, scoring_node

pytestmark = pytest.mark.slow

WEEK = pd.Timestamp("2018-08-01")


def test_a_handbook_week_scored_through_the_api_equals_the_batch_features(handbook_dir: Path, tmp_path: Path) -> None:
    raw = pd.read_parquet(handbook_dir / "transactions.parquet")
    raw = raw[(raw["TX_DATETIME"] >= "2018-06-15") & (raw["TX_DATETIME"] < WEEK + pd.Timedelta(days=7))]
    raw = raw[raw["CUSTOMER_ID"] % 8 == 0]  # one bank's cards
    data = to_canonical(raw, None, require_label=True).sort_values(["timestamp", "transaction_id"])
    history, week = data[data["timestamp"] < WEEK], data[data["timestamp"] >= WEEK]

    # A model over the handbook's inputs (100 trees: any wrong input moves some score).
    train = compute_features(history, start="2018-07-15")
    booster = xgb.train({"max_depth": 6, "objective": "binary:logistic", "nthread": 2},
                        xgb.DMatrix(model_matrix(train), label=train["label"], feature_names=list(MODEL_INPUTS)), 100)
    root = tmp_path / "node"
    token = scoring_node(root, history, bytes(booster.save_raw("json")))
    client = create_app(root).test_client()
    headers = {"Authorization": f"Bearer {token}"}

    # In time order: the first 300 one at a time, the rest in requests of 250.
    answers = []
    sent = as_json(week)
    for tx in sent[:300]:
        response = client.post("/v1/score", json=tx, headers=headers)
        assert response.status_code == 200, response.get_json()
        answers.append(response.get_json())
    for start in range(300, len(sent), 250):
        response = client.post("/v1/score", json={"transactions": sent[start : start + 250]}, headers=headers)
        assert response.status_code == 200, response.get_json()
        answers += response.get_json()["results"]
    assert len(answers) == len(week) > 3000

    # `fedfraud features` on the same history: the week's labels were not known when it was scored.
    same = data.copy()
    same.loc[same["timestamp"] >= WEEK, "label"] = 0
    source, features = tmp_path / "same.parquet", tmp_path / "features.parquet"
    same.to_parquet(source)
    done = CliRunner().invoke(fedfraud_cli, ["features", str(source), str(features), "--start", "2018-08-01"])
    assert done.exit_code == 0, done.output
    batch = pd.read_parquet(features).set_index("transaction_id").loc[week["transaction_id"]].reset_index()
    expected = booster.predict(xgb.DMatrix(batch[list(MODEL_INPUTS)].to_numpy(), feature_names=list(MODEL_INPUTS)))
    np.testing.assert_allclose([a["probability"] for a in answers], expected, rtol=1e-6, atol=1e-7)
    by_id = batch.set_index("transaction_id")
    for answer in answers:
        for reason in answer["reasons"]:
            assert reason["value"] == pytest.approx(by_id.at[answer["transaction_id"], reason["feature"]], rel=1e-12)
