"""The demo's end: a bank's scoring service, a real process on 127.0.0.1, scores held-out
transactions with the federated model, and its answers are the model's own scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bank_node.features import compute_features, model_matrix
from bank_node.generator import generate_transactions
from fedfraud.cli import _simulation_config
from fedfraud.demo_scoring import score_through_the_api
from fedfraud.simulation import partition_customers, simulate
from schemas.transaction import to_canonical


def test_held_out_transactions_are_scored_through_the_api(tmp_path: Path) -> None:
    raw = generate_transactions(n_customers=500, n_terminals=800, days=75, seed=3)
    frame = to_canonical(raw, require_label=True)
    config = _simulation_config(n_banks=3, sizes="", models="xgboost", scheme="plain", seed=3,
                                train_start=pd.Timestamp("2018-05-20").date(), n_trees=5, max_depth=3,
                                consortium_features=False)
    result = simulate(frame, config)
    answers = score_through_the_api(frame, result.models["xgboost"], config, tmp_path, n_transactions=4)

    assert len(answers) == 4 and {a["model_version"] for a in answers} == {"1"}
    assert all(a["decision"] in ("alert", "pass") and len(a["reasons"]) == 3 for a in answers)
    # The service's scores are the model's on bank-1's batch features over the same history.
    owner = partition_customers(frame["customer_id"], config.shares, seed=config.seed)
    own = frame[owner == 0].copy()
    test_start = config.windows.test_start
    own.loc[own["timestamp"] >= test_start, "label"] = 0
    featured = compute_features(own, start=test_start, end=test_start).set_index("transaction_id")
    rows = featured.loc[[a["transaction_id"] for a in answers]]
    expected = result.models["xgboost"].predict_proba(model_matrix(rows.reset_index()))
    np.testing.assert_allclose([a["probability"] for a in answers], expected, rtol=1e-5)
