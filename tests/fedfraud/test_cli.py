"""The command line: generate, features and simulate end to end, and readable errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from fedfraud.cli import main


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tx.parquet"
    result = CliRunner().invoke(
        main, ["generate", str(path), "--days", "75", "--customers", "1500", "--terminals", "3000", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    return path


def test_generate_writes_the_handbook_columns(generated: Path) -> None:
    frame = pd.read_parquet(generated)
    assert {"TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"} <= set(frame)
    assert frame["TX_DATETIME"].min() >= pd.Timestamp("2018-04-01")
    assert 0 < frame["TX_FRAUD"].mean() < 0.05


def test_features_keeps_the_input_columns_and_the_window(generated: Path, tmp_path: Path) -> None:
    out = tmp_path / "features.parquet"
    result = CliRunner().invoke(main, ["features", str(generated), str(out), "--start", "2018-05-01",
                                       "--end", "2018-05-07"])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert frame["TX_DATETIME"].min() >= pd.Timestamp("2018-05-01")
    assert frame["TX_DATETIME"].max() < pd.Timestamp("2018-05-08")
    assert "TERMINAL_ID_RISK_30DAY_WINDOW" in frame and "TX_FRAUD" in frame


def test_simulate_end_to_end_writes_json_and_png(generated: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    result = CliRunner().invoke(main, [
        "simulate", "--data", str(generated), "--banks", "3", "--train-start", "2018-05-20", "--trees", "10",
        "--scheme", "ckks", "--json", str(out), "--report", str(tmp_path / "report"),
    ])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    banks = ["bank-1", "bank-2", "bank-3"]
    for setting in ("centralized", "federated"):
        for model in ("xgboost", "logreg"):
            metrics = doc[setting][model]
            assert 0.5 < metrics["auc"] <= 1.0 and 0 < metrics["ap"] <= 1 and 0 <= metrics["cp100"] <= 1
            assert sorted(metrics["per_bank"]) == banks
    assert sorted(doc["local"]["xgboost"]) == banks
    assert doc["timing"]["xgboost"]["per_tree_s"] > 0 and doc["timing"]["logreg"]["encrypt_s"] > 0
    assert all(v > 0 for v in doc["bytes"]["uploaded_per_bank"]["xgboost"].values())
    assert 30 < doc["bytes"]["per_value"] < 200  # CKKS: ~32 bytes a value plus ciphertext padding
    # Federated logistic regression is the pooled fit: same metrics as centralized.
    assert abs(doc["federated"]["logreg"]["auc"] - doc["centralized"]["logreg"]["auc"]) < 1e-4
    assert (tmp_path / "report" / "simulation.png").stat().st_size > 10_000


def test_simulate_with_consortium_terminal_features(generated: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    result = CliRunner().invoke(main, [
        "simulate", "--data", str(generated), "--banks", "4", "--train-start", "2018-05-20", "--trees", "20",
        "--scheme", "plain", "--consortium-features", "--terminal-threshold", "2", "--json", str(out),
        "--report", str(tmp_path / "report"),
    ])
    assert result.exit_code == 0, result.output
    assert "federated + consortium terminals" in result.output
    assert ": 0 count mismatches" in result.output
    doc = json.loads(out.read_text())
    section = doc["consortium_features"]
    stats = section["terminal_stats"]
    # 2018-05-20 + 7 train + 7 delay + 7 test days: 21 described days reach back 37 days, up to 7 days before.
    assert stats["days"] == 21 + 37 - 7
    assert stats["equal_to_full_data"] == {"count_mismatches": 0, "max_abs_risk_difference": 0.0}
    seen = stats["terminals_by_banks_seen"]  # terminals by how many banks saw them: 0, 1, ..., 4
    assert stats["threshold"] == 2 and seen[0] == 0 and seen[1] > 0
    assert 0.9 * stats["rows"] < stats["rows_covered"] < stats["rows"]
    assert all(v > 0 for v in stats["uploaded_per_bank_per_day_bytes"].values())
    for model in ("xgboost", "logreg"):
        for setting in ("federated", "centralized_full_data"):
            assert 0.5 < section[setting][model]["auc"] <= 1.0
        assert sorted(section["local"][model]) == ["bank-1", "bank-2", "bank-3", "bank-4"]
        # Consortium features carry what no single bank sees: better than the bank-local ones.
        assert section["federated"][model]["ap"] > doc["federated"][model]["ap"]
    # Nearly the full-data pooled fit (rows of terminals seen by one bank keep that bank's own values).
    assert abs(section["federated"]["logreg"]["ap"] - section["centralized_full_data"]["logreg"]["ap"]) < 0.02
    assert (tmp_path / "report" / "simulation.png").stat().st_size > 10_000


def test_simulate_with_differential_privacy_reports_the_spend(generated: Path, tmp_path: Path) -> None:
    from schemas.privacy import compose_epsilon, run_privacy

    out = tmp_path / "result.json"
    result = CliRunner().invoke(main, [
        "simulate", "--data", str(generated), "--banks", "3", "--train-start", "2018-05-20", "--trees", "5",
        "--scheme", "plain", "--dp-epsilon", "4", "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    privacy = json.loads(out.read_text())["privacy"]
    runs = {r["model"]: r for r in privacy["runs"]}
    xgboost, logreg = run_privacy("xgboost", {"n_trees": 5, "dp_epsilon": 4}), run_privacy("logreg", {"dp_epsilon": 4})
    assert xgboost is not None and logreg is not None
    assert runs["xgboost"]["releases"] == xgboost.releases == 16 and runs["logreg"]["releases"] == logreg.releases
    assert privacy["per_bank_epsilon"] == pytest.approx(
        compose_epsilon([(xgboost.multiplier, 16), (logreg.multiplier, logreg.releases)], 1e-5))
    assert 4 < privacy["per_bank_epsilon"] < 8  # two runs of 4, composed
    assert "Differential privacy of the federated trainings" in result.output and "not covered: nothing" in result.output
    refused = CliRunner().invoke(main, ["simulate", "--data", str(generated), "--dp-epsilon", "0"])
    assert refused.exit_code != 0 and "dp_epsilon must be in [0.01, 100]" in refused.output
    assert "Traceback" not in refused.output


def test_simulate_with_private_terminal_statistics_reports_their_spend(generated: Path, tmp_path: Path) -> None:
    from schemas.privacy import compose_epsilon, noise_multiplier

    out = tmp_path / "result.json"
    result = CliRunner().invoke(main, [
        "simulate", "--data", str(generated), "--banks", "3", "--train-start", "2018-05-20", "--trees", "5",
        "--models", "xgboost", "--scheme", "plain", "--consortium-features", "--terminal-threshold", "2",
        "--terminal-dp-epsilon", "2", "--json", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "noisy day counts at epsilon 2" in result.output
    doc = json.loads(out.read_text())
    privacy = doc["privacy"]
    (terminals,) = privacy["runs"]  # the model trained without DP: only the terminal statistics spent
    assert terminals["model"] == "terminal statistics" and terminals["releases"] == 1
    assert privacy["per_bank_epsilon"] == pytest.approx(compose_epsilon([(noise_multiplier(2, 1e-5, 1), 1)], 1e-5))
    assert "presence" in privacy["not_covered"]
    # Noisy counts are no longer the full-data ones, yet the features still carry the consortium's traffic.
    section = doc["consortium_features"]
    assert section["terminal_stats"]["equal_to_full_data"]["count_mismatches"] > 0
    assert section["federated"]["xgboost"]["auc"] > 0.5
    refused = CliRunner().invoke(main, ["simulate", "--data", str(generated), "--terminal-dp-epsilon", "2"])
    assert refused.exit_code != 0 and "needs --consortium-features" in refused.output
    refused = CliRunner().invoke(main, ["simulate", "--data", str(generated), "--consortium-features",
                                        "--terminal-dp-epsilon", "-1"])
    assert refused.exit_code != 0 and "must be a positive number" in refused.output
    assert "Traceback" not in refused.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["features", "missing.parquet", "out.parquet"], "no such file"),
        (["features", "data.txt", "out.parquet"], "name it *.parquet or *.csv"),
        (["generate", "x.parquet", "--days", "0"], "0 is not in the range"),
        (["features", "{data}", "o.parquet", "--start", "2018-13-01"], "is not a date"),
        (["features", "{data}", "o.parquet", "--columns", "amount=NOPE"], "mapped column 'NOPE'"),
        (["simulate", "--data", "{data}", "--banks", "2"], "at least min_banks=3"),
        (["simulate", "--data", "{data}", "--sizes", "0.5,0.5"], "shares for 5 banks"),
        (["simulate", "--data", "{data}", "--models", "forest"], "--models must be a subset"),
        (["simulate", "--data", "{data}", "--terminal-threshold", "0"], "0 is not in the range"),
    ],
)
def test_bad_input_gives_a_readable_error(generated: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, [a.replace("{data}", str(generated)) for a in args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("rename", [False, True])
def test_a_features_file_scores_with_a_model_by_its_own_names(generated: Path, tmp_path: Path, rename: bool) -> None:
    """One set of names: every model input is a column of the features file under the model's name,
    whatever the bank calls its amount column."""
    import numpy as np
    import xgboost as xgb

    from bank_node.data import load_transactions
    from bank_node.features import MODEL_INPUTS, compute_features, model_matrix

    source, args = generated, []
    if rename:
        source = tmp_path / "renamed.parquet"
        pd.read_parquet(generated).rename(columns={"TX_AMOUNT": "amt_eur"}).to_parquet(source)
        args = ["--columns", "amount=amt_eur"]
    out = tmp_path / "features.parquet"
    result = CliRunner().invoke(main, ["features", str(source), str(out), "--start", "2018-05-01", "--end", "2018-05-03",
                                       *args])
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    canonical = compute_features(load_transactions(generated).frame, start="2018-05-01", end="2018-05-03")
    X = model_matrix(canonical)
    booster = xgb.train({"max_depth": 2}, xgb.DMatrix(X, label=canonical["label"], feature_names=list(MODEL_INPUTS)), 3)
    from_file = booster.predict(xgb.DMatrix(frame[booster.feature_names]))
    np.testing.assert_allclose(from_file, booster.predict(xgb.DMatrix(X, feature_names=list(MODEL_INPUTS))))
