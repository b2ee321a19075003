"""Three nights of a consortium that runs by itself, with real processes and the handbook's data.

An aggregator, the scheduler process and three long-running bank agents (CKKS). The consortium's
processes run on the clock of each night of June 2018 (``clocked.py``); the agents on the real
one. Every night the banks' staff ingest the day that ended and the labels that became known,
the schedule fires at 02:00 in the consortium's time zone, the nodes pool one more day of
consortium terminal statistics, and the model is trained, evaluated and promoted. On the third
night the operator's change of parameters makes the candidate worse: the gate rejects it and
the current model stays.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bank_node.agent.state import StateDir
from bank_node.scoring import current_model_file
from bank_node.terminal_history import pooling_scope
from fedfraud.localnet import LocalConsortium, wait_for
from fedfraud.simulation import partition_customers
from schemas.run import RunWindow

pytestmark = pytest.mark.slow

BANKS = ("bank-1", "bank-2", "bank-3")
NIGHTS = (date(2018, 6, 10), date(2018, 6, 11), date(2018, 6, 12))
ZONE = "Europe/Brussels"
PARAMS = {"n_trees": 10, "max_depth": 3, "eta": 0.3, "n_bins": 64, "seed": 0, "consortium_features": True}
WORSE = {**PARAMS, "n_trees": 1, "max_depth": 1, "eta": 0.01, "n_bins": 2}
TOLERANCE = 0.02
CLOCKED = (sys.executable, str(Path(__file__).with_name("clocked.py")))


def as_of_window(night: date) -> RunWindow:
    return RunWindow(as_of=night, train_days=7, validation_days=7, label_delay_days=7)


@pytest.fixture(scope="module")
def bank_days(handbook_dir: Path) -> dict[str, pd.DataFrame]:
    """A tenth of the handbook's cards, split among three banks, over the weeks the nights reach."""
    raw = pd.read_parquet(handbook_dir / "transactions.parquet")
    raw = raw[(raw["CUSTOMER_ID"] % 10 == 0).to_numpy()]
    first = pd.Timestamp(NIGHTS[0]) - pd.Timedelta(days=60)
    raw = raw[((raw["TX_DATETIME"] >= first) & (raw["TX_DATETIME"] < pd.Timestamp(NIGHTS[-1]))).to_numpy()]
    owner = partition_customers(raw["CUSTOMER_ID"], (0.45, 0.33, 0.22), seed=0)
    return {bank: raw[owner == i].reset_index(drop=True) for i, bank in enumerate(BANKS)}


@pytest.fixture()
def nightly(tmp_path: Path) -> Iterator[LocalConsortium]:
    local = LocalConsortium(root=tmp_path / "consortium")
    local.env.update({"FEDFRAUD_TIME_ZONE": ZONE, "FEDFRAUD_PROMOTION_TOLERANCE": str(TOLERANCE),
                      "FEDFRAUD_SCHEDULE_RELOAD_S": "2"})
    local.initialise(BANKS)
    try:
        yield local
    finally:
        local.stop()


def _write(frame: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def staff_load(consortium: LocalConsortium, bank: str, frame: pd.DataFrame, folder: Path, night: date,
               *, first: bool) -> None:
    """What a bank's staff do before a night: ingest the day that ended (without outcomes, not known
    yet) and the outcomes confirmed since (fraud labels come a week after the transaction)."""
    stamps = frame["TX_DATETIME"]
    yesterday = pd.Timestamp(night - timedelta(days=1))
    day = (stamps >= (stamps.min() if first else yesterday)) & (stamps < pd.Timestamp(night))
    labelled_until = pd.Timestamp(night - timedelta(days=7))
    labels = (stamps >= (stamps.min() if first else labelled_until - pd.Timedelta(days=1))) & (stamps < labelled_until)
    state = str(consortium.state_dir(bank))
    tx = _write(frame[day.to_numpy()].drop(columns=["TX_FRAUD"]), folder / f"{bank}-{night}-transactions.parquet")
    consortium.cli("bank", "ingest", str(tx), "--state-dir", state)
    outcomes = _write(frame[labels.to_numpy()][["TRANSACTION_ID", "TX_FRAUD"]], folder / f"{bank}-{night}-labels.parquet")
    consortium.cli("bank", "labels", str(outcomes), "--state-dir", state)


def pooled_days(consortium: LocalConsortium, bank: str) -> list[int]:
    with sqlite3.connect(consortium.state_dir(bank) / "transactions.db") as db:
        return [row[0] for row in db.execute("SELECT day FROM consortium_pooled_days ORDER BY day")]


def run_the_night(consortium: LocalConsortium, night: date) -> dict[str, Any]:
    """Start the consortium's processes a few seconds before 02:00 of ``night``; return the run the
    schedule opened, once it is over."""
    moment = f"{night.isoformat()}T01:59:52+02:00"  # Brussels summer time
    consortium.start(launcher=(*CLOCKED, moment))
    scheduler = consortium.start_scheduler(launcher=(*CLOCKED, moment))
    try:
        def opened() -> dict[str, Any] | None:
            runs = consortium.api("GET", "/v1/runs").json()
            runs = runs.get("runs", runs) if isinstance(runs, dict) else runs
            tonight = [r for r in runs if (r.get("window") or {}).get("as_of") == night.isoformat()]
            return tonight[0] if tonight else None

        run = wait_for(opened, 120, f"the run of the night of {night}")

        def over() -> dict[str, Any] | None:
            view = consortium.run(run["run_id"])
            return view if view["state"] not in ("open",) else None

        finished = wait_for(over, 900, f"the end of run {run['run_id']}", interval=1.0)
        runs = consortium.api("GET", "/v1/runs").json()
        runs = runs.get("runs", runs) if isinstance(runs, dict) else runs
        assert sum((r.get("window") or {}).get("as_of") == night.isoformat() for r in runs) == 1
        return finished
    finally:
        scheduler.terminate()
        scheduler.wait(timeout=30)
        consortium.stop()


def test_three_nights_by_themselves(nightly: LocalConsortium, bank_days: dict[str, pd.DataFrame],
                                    tmp_path: Path) -> None:
    consortium = nightly
    consortium.start()
    consortium.set_up_banks(BANKS, scheme="ckks")
    consortium.cli("consortium", "schedule", "set", "xgboost", "--cron", "0 2 * * *", "--enable",
                   "--params", json.dumps(PARAMS), "--train-days", "7", "--validation-days", "7",
                   "--label-delay-days", "7")
    consortium.stop()
    agents = {bank: consortium.start_store_agent(bank) for bank in BANKS}
    try:
        results = []
        for n, night in enumerate(NIGHTS):
            for bank in BANKS:
                staff_load(consortium, bank, bank_days[bank], tmp_path / "files", night, first=n == 0)
            if n == 2:  # the operator's change makes tonight's candidate worse
                consortium.cli("consortium", "schedule", "set", "xgboost", "--params", json.dumps(WORSE))
            run = run_the_night(consortium, night)
            records = {bank: json.loads((consortium.state_dir(bank) / "runs.json").read_text())[run["run_id"]]
                       for bank in BANKS}
            results.append((run, records, {bank: pooled_days(consortium, bank) for bank in BANKS}))
            assert all(a.poll() is None for a in agents.values()), consortium.agent_logs()
    finally:
        for agent in agents.values():
            agent.terminate()
            agent.wait(timeout=30)

    consortium.start()
    try:
        models = {m["run_id"]: consortium.api("GET", f"/v1/models/{m['version']}").json()
                  for m in consortium.api("GET", "/v1/models").json()}
        current = consortium.api("GET", "/v1/models/current").json()
        # The agents followed the consortium's current model; the scoring service serves it.
        node = StateDir(consortium.state_dir("bank-1"))
        assert node.current_models()["xgboost"]["version"] == "2"
        assert current_model_file(node, "xgboost")[0] == "2"  # type: ignore[index]
        # The operator rolls back to version 1: at its next poll the agent follows, and so does scoring.
        rolled = consortium.api("PUT", "/v1/models/1/current", json={"reason": "v2 misfires on Mondays"})
        assert rolled.status_code == 200, rolled.text
        consortium.cli("bank", "agent", "--state-dir", str(consortium.state_dir("bank-1")), "--once")
        assert "misfires" in node.current_models()["xgboost"]["reason"]
        assert current_model_file(node, "xgboost")[0] == "1"  # type: ignore[index]
    finally:
        consortium.stop()

    first_scope = pooling_scope(as_of_window(NIGHTS[0]).train_start, as_of_window(NIGHTS[0]).labels_known_until,
                                NIGHTS[0])
    for n, (run, records, held) in enumerate(results):
        scope = pooling_scope(as_of_window(NIGHTS[n]).train_start, as_of_window(NIGHTS[n]).labels_known_until,
                              NIGHTS[n])
        # The terminal statistics grew by the one new day, and the day whose labels became known was
        # pooled again (the first night pooled the whole period).
        assert {r["terminal_days_pooled"] for r in records.values()} == {len(first_scope.days) if n == 0 else 2}
        assert all(days == list(scope.days) for days in held.values()), held
        model = models[run["run_id"]]
        assert model["lineage"]["window"]["as_of"] == NIGHTS[n].isoformat()
        assert json.loads(json.dumps(model["lineage"]["params"]))["consortium_features"] is True
        assessment = model["assessment"]
        assert assessment["candidate"]["rows"] > 1000 and assessment["candidate"]["frauds"] > 5
        if n < 2:
            assert run["state"] == "completed" and model["status"] == "promoted", (run, assessment)
            assert assessment["baseline_version"] == (None if n == 0 else 1)
        else:
            assert run["state"] == "rejected" and model["status"] == "rejected", (run, assessment)
            assert assessment["candidate"]["auc"] < assessment["baseline"]["auc"] - TOLERANCE
    assert [(c["family"], c["version"]) for c in current] == [("xgboost", 2)]
