"""Federated training over HTTP between real processes, including crashes of either side.

One aggregator (``fedfraud consortium serve``) and three bank agents (``fedfraud bank agent``),
each bank holding only its own cards' transactions from the handbook data. The published
models must be the ones the in-process simulator trains on the same split and seed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

import crypto
from bank_node.data import load_transactions
from bank_node.features import MODEL_INPUTS
from bank_node.federated.feature_scales import scales_for
from bank_node.federated.gbdt import federated_gbdt
from bank_node.federated.lockstep import run_lockstep
from bank_node.federated.logreg import LogRegModel, federated_logreg
from bank_node.federated.params import GBDTParams
from bank_node.federated.xgb_export import from_xgboost_json
from consortium.secure_sum import SecureSum
from fedfraud.localnet import LocalConsortium, wait_for
from fedfraud.simulation import SimulationConfig, partition_customers, prepare_banks

BANKS = ("bank-1", "bank-2", "bank-3")  # as enrolled by the consortium fixture (see bank_ids)

pytestmark = pytest.mark.slow

TRAIN_START = "2018-07-25"
XGB_PARAMS = {"n_trees": 12, "max_depth": 3, "eta": 0.3, "n_bins": 64, "seed": 0}
SCHEME = "ckks"  # masked sums are exact: HTTP and in-process runs agree to the last bit under CKKS too


@pytest.fixture(scope="module")
def bank_files(
    handbook_dir: Path, tmp_path_factory: pytest.TempPathFactory, bank_ids: tuple[str, ...]
) -> dict[str, Path]:
    """Each bank's own transactions (its cards only), for the training week and its history."""
    assert bank_ids == BANKS
    raw = pd.read_parquet(handbook_dir / "transactions.parquet")
    config = SimulationConfig(n_banks=len(BANKS))
    # The same cards per bank as the simulator: partition all cards, then keep the weeks needed.
    owner = partition_customers(raw["CUSTOMER_ID"], config.shares, seed=config.seed)
    start = pd.Timestamp(TRAIN_START)
    needed = ((raw["TX_DATETIME"] >= start - pd.Timedelta(days=38)) & (raw["TX_DATETIME"] < start + pd.Timedelta(days=7)))
    raw, owner = raw[needed.to_numpy()], owner[needed.to_numpy()]
    folder = tmp_path_factory.mktemp("banks")
    files = {}
    for i, bank in enumerate(BANKS):
        files[bank] = folder / f"{bank}.parquet"
        raw[owner == i].to_parquet(files[bank], index=False)
    return files


@pytest.fixture(scope="module")
def reference(handbook_dir: Path) -> dict[str, Any]:
    """The in-process simulator's models on the same split, seed and scheme."""
    frame = load_transactions(handbook_dir / "transactions.parquet", require_label=True).frame
    banks = prepare_banks(frame, SimulationConfig(n_banks=len(BANKS), train_start=TRAIN_START))
    secret = crypto.generate(SCHEME)
    aggregator = lambda: SecureSum(context=crypto.load_context(secret.public_context()))  # noqa: E731
    contexts = {b.name: secret for b in banks}
    params = GBDTParams(**XGB_PARAMS)
    xgb = run_lockstep(
        {b.name: federated_gbdt(b.X_train, b.y_train, params=params, scales=scales_for(MODEL_INPUTS),
                                party_index=i) for i, b in enumerate(banks)},
        contexts=contexts, aggregator=aggregator(),
    ).results["bank-1"]
    logreg = run_lockstep(
        {b.name: federated_logreg(b.X_train, b.y_train, feature_names=MODEL_INPUTS) for b in banks},
        contexts=contexts, aggregator=aggregator(),
    ).results["bank-1"]
    X = np.vstack([b.X_train for b in banks])
    return {"xgboost": xgb, "logreg": logreg, "X": X}


def set_up(consortium: LocalConsortium) -> None:
    consortium.set_up_banks(BANKS, scheme=SCHEME)


def start_agents(consortium: LocalConsortium, files: dict[str, Path],
                 train_start: str = TRAIN_START) -> dict[str, subprocess.Popen[bytes]]:
    return {b: consortium.start_agent(b, files[b], train_start=train_start) for b in BANKS}


def finish(consortium: LocalConsortium, agents: dict[str, subprocess.Popen[bytes]]) -> None:
    for agent in agents.values():
        try:
            code = agent.wait(timeout=600)
        except subprocess.TimeoutExpired:
            agent.kill()
            raise
        assert code == 0, f"an agent failed:\n{consortium.agent_logs()}"


def assert_same_gbdt(published: bytes, reference: Any, X: np.ndarray) -> None:
    model = from_xgboost_json(json.loads(published))
    assert len(model.trees) == len(reference.trees)
    for ours, theirs in zip(model.trees, reference.trees, strict=True):
        np.testing.assert_array_equal(ours.feature, theirs.feature)
        np.testing.assert_array_equal(ours.threshold, theirs.threshold)
        np.testing.assert_allclose(ours.value, theirs.value, atol=1e-6)
    np.testing.assert_allclose(model.predict_proba(X), reference.predict_proba(X), atol=1e-6)


def test_http_training_publishes_the_simulators_models(
    consortium: LocalConsortium, bank_files: dict[str, Path], reference: dict[str, Any]
) -> None:
    set_up(consortium)
    xgb_run = consortium.open_run("xgboost", XGB_PARAMS, train_start=TRAIN_START)
    lr_run = consortium.open_run("logreg", {}, train_start=TRAIN_START)
    # The agents' command lines name another period: the run's window wins on every bank.
    finish(consortium, start_agents(consortium, bank_files, train_start="2018-07-01"))
    assert_same_gbdt(consortium.published_model(xgb_run), reference["xgboost"], reference["X"])
    published = LogRegModel.from_json(consortium.published_model(lr_run).decode())
    expected: LogRegModel = reference["logreg"]
    np.testing.assert_allclose(published.coef, expected.coef, atol=1e-6)
    assert abs(published.intercept - expected.intercept) < 1e-6
    for run_id in (xgb_run, lr_run):
        assert consortium.run(run_id)["state"] == "completed"
    check_the_ledger_with_the_banks_receipts(consortium)


def test_the_ledger_key_rotated_mid_run_is_followed_by_every_bank(
    consortium: LocalConsortium, bank_files: dict[str, Path]
) -> None:
    """The operator rotates the ledger's key with `fedfraud consortium rotate-ledger-key` while a
    private run trains: the running service signs on with the new key, every bank's agent follows the
    rotation from the key it pinned (its next receipts are signed by the new key), the run
    completes, and the exported log with each bank's receipts verifies offline under the key the
    bank pinned first."""
    set_up(consortium)
    first_key = consortium.api("GET", "/v1/ledger/key").json()["public_key"]
    # Private: the receipt of each bank's spend, recorded before the rotation, comes back with
    # every later contribution of the epoch under the old key's checkpoint.
    run_id = consortium.open_run("xgboost", {**XGB_PARAMS, "dp_epsilon": 8.0}, train_start=TRAIN_START)
    agents = start_agents(consortium, bank_files)
    wait_for(lambda: consortium.released_rounds(run_id) >= 2, 300, "two released rounds")
    output = consortium.cli("consortium", "rotate-ledger-key")
    assert f"{first_key} -> " in output, output
    new_key = output.strip().rsplit(" -> ", 1)[1]
    finish(consortium, agents)
    assert consortium.run(run_id)["state"] == "completed"
    key = consortium.api("GET", "/v1/ledger/key").json()
    assert key["public_key"] == new_key and len(key["rotations"]) == 1
    rotated_at = key["rotations"][0]["index"]
    for bank in BANKS:
        state = consortium.state_dir(bank)
        record = json.loads((state / "ledger.json").read_text())
        assert record["public_key"] == new_key
        assert record["rotations"] == [{"index": rotated_at, "public_key": new_key, "previous_key": first_key}]
        after = [p for p in (state / "receipts").glob("*.json") if int(p.stem) > rotated_at]
        assert after, f"{bank} made no contribution after the rotation: the run ended before it"
        # Rewrite the pinned key as the bank first had it: the offline check follows the chain from it.
        (state / "ledger.json").write_text(json.dumps({**record, "public_key": first_key}))
    check_the_ledger_with_the_banks_receipts(consortium)


def check_the_ledger_with_the_banks_receipts(consortium: LocalConsortium) -> None:
    """Every bank kept a receipt per contribution (and per privacy spend of a private run); the
    exported ledger, checked offline under the key each bank pinned, still proves all of them."""
    export = consortium.root / "ledger.jsonl"
    response = consortium.api("GET", "/v1/ledger/export")
    assert response.status_code == 200
    export.write_bytes(response.content)
    entries = [json.loads(line) for line in export.read_text().splitlines()[1:]]
    for bank in BANKS:
        state = consortium.state_dir(bank)
        pinned = json.loads((state / "ledger.json").read_text())["public_key"]
        receipts = sorted((state / "receipts").glob("*.json"))
        mine = [e for e in entries if json.loads(e["entry"])["event"] in ("contribution.accepted", "privacy.spent")
                and json.loads(e["entry"])["bank_id"] == bank]
        assert len(receipts) == len(mine) > 0
        output = consortium.cli("ledger", "verify", str(export), "--key", pinned, "--receipts", str(state / "receipts"))
        assert "verified: all" in output and f"receipts: {len(mine)} of {len(mine)} still proven" in output, output


def test_aggregator_killed_mid_run_recovers_with_the_same_model(
    consortium: LocalConsortium, bank_files: dict[str, Path], reference: dict[str, Any]
) -> None:
    set_up(consortium)
    run_id = consortium.open_run("xgboost", XGB_PARAMS, train_start=TRAIN_START)
    agents = start_agents(consortium, bank_files)
    wait_for(lambda: consortium.released_rounds(run_id) >= 8, 300, "a few released rounds")
    consortium.kill()
    time.sleep(1.0)
    consortium.start()
    finish(consortium, agents)
    assert_same_gbdt(consortium.published_model(run_id), reference["xgboost"], reference["X"])


def test_bank_agent_killed_mid_run_resumes_with_the_same_model(
    consortium: LocalConsortium, bank_files: dict[str, Path], reference: dict[str, Any]
) -> None:
    set_up(consortium)
    run_id = consortium.open_run("xgboost", XGB_PARAMS, train_start=TRAIN_START)
    agents = start_agents(consortium, bank_files)
    wait_for(lambda: consortium.released_rounds(run_id) >= 8, 300, "a few released rounds")
    agents["bank-2"].send_signal(signal.SIGKILL)
    agents["bank-2"].wait(timeout=30)
    agents["bank-2"] = consortium.start_agent("bank-2", bank_files["bank-2"], train_start=TRAIN_START)
    finish(consortium, agents)
    assert_same_gbdt(consortium.published_model(run_id), reference["xgboost"], reference["X"])


def test_two_banks_alone_never_get_a_sum(consortium: LocalConsortium, bank_files: dict[str, Path]) -> None:
    set_up(consortium)
    run_id = consortium.open_run("logreg", {}, round_timeout_s=3, train_start=TRAIN_START)
    # Both banks take part at the same time; bank-3 never comes.
    agents = [consortium.start_agent(bank, bank_files[bank], train_start=TRAIN_START) for bank in BANKS[:2]]
    for agent in agents:
        agent.wait(timeout=300)
    # A round that fails fails alone: the run publishes nothing and no sum was ever released.
    run = wait_for(lambda: (r := consortium.run(run_id))["rounds"] and all(x["state"] == "failed" for x in r["rounds"]) and r,
                   60, "the rounds to fail")
    assert run["state"] != "completed" and run["model_version"] is None
    assert all(r.get("state") != "released" for r in run["rounds"])
    failed = [r for r in run["rounds"] if r.get("state") == "failed"]
    assert failed and all(r["dropped"] == ["bank-3"] for r in failed), run["rounds"]


def test_a_worse_candidate_is_rejected_and_the_current_model_stays(
    consortium: LocalConsortium, bank_files: dict[str, Path]
) -> None:
    """The promotion gate over HTTP: the second run's model, made worse on purpose (one stump), is
    evaluated by the banks on the validation week through an encrypted secure sum, found worse
    than the current model, and kept for the record only."""
    set_up(consortium)
    window = {"as_of": "2018-08-01", "train_days": 7, "validation_days": 7, "label_delay_days": 0}
    first = consortium.open_run("xgboost", XGB_PARAMS, window=window)
    finish(consortium, start_agents(consortium, bank_files))
    assert consortium.run(first)["state"] == "completed"
    # The first model has nothing to beat, but its pooled metrics are on record.
    first_model = consortium.api("GET", "/v1/models/1").json()
    assert first_model["status"] == "promoted" and first_model["assessment"]["baseline"] is None
    assert first_model["assessment"]["candidate"]["auc"] > 0.7
    worse = consortium.open_run("xgboost", {"n_trees": 1, "max_depth": 1, "eta": 0.01, "n_bins": 4}, window=window)
    assert consortium.run(worse)["baseline_version"] == 1
    finish(consortium, start_agents(consortium, bank_files))
    run = consortium.run(worse)
    assert run["state"] == "rejected", run
    model = consortium.api("GET", f"/v1/models/{run['model_version']}").json()
    assert model["status"] == "rejected" and model["current"] is False
    candidate, baseline = model["assessment"]["candidate"], model["assessment"]["baseline"]
    assert candidate["auc"] < baseline["auc"] - 0.005 and candidate["rows"] == baseline["rows"] > 1000
    assert [(c["family"], c["version"]) for c in consortium.api("GET", "/v1/models/current").json()] == [("xgboost", 1)]
    assert "keep the current model" in consortium.agent_logs()


def test_a_bank_featuring_and_training_on_dask_takes_part_in_every_phase_of_a_nightly_run(
    consortium: LocalConsortium, bank_files: dict[str, Path], tmp_path: Path
) -> None:
    """bank-2 holds its transactions as a folder of shuffled Parquet files and runs its agent with
    ``--dask`` (a local cluster of two workers): it pools terminal statistics, trains with
    consortium terminal features and scores the validation week on Dask. The same night run
    again with bank-2 on its pandas file gives the same model file and the same pooled metrics
    (the banks' files agree whatever one bank contributed, since all are made from the same sums:
    the pandas run is the check). A third night's worse candidate is rejected by a gate that
    scored the baseline on Dask."""
    set_up(consortium)
    folder = tmp_path / "bank-2-parquet"
    folder.mkdir()
    own = pd.read_parquet(bank_files["bank-2"]).sample(frac=1.0, random_state=3).reset_index(drop=True)
    for i, rows in enumerate(np.array_split(np.arange(len(own)), 4)):
        own.iloc[rows].to_parquet(folder / f"part-{i}.parquet", index=False)
    window = {"as_of": "2018-08-01", "train_days": 7, "validation_days": 7, "label_delay_days": 0}

    def night(params: dict[str, Any], *, on_dask: bool) -> dict[str, Any]:
        run_id = consortium.open_run("xgboost", dict(params, consortium_features=True), window=window)
        agents = {b: consortium.start_agent(b, bank_files[b], train_start=TRAIN_START) for b in ("bank-1", "bank-3")}
        agents["bank-2"] = (consortium.start_agent("bank-2", folder, train_start=TRAIN_START,
                                                   options=("--dask", "--dask-workers", "2")) if on_dask
                            else consortium.start_agent("bank-2", bank_files["bank-2"], train_start=TRAIN_START))
        finish(consortium, agents)
        run = consortium.run(run_id)
        return {"run": run, "model": consortium.api("GET", f"/v1/models/{run['model_version']}").json()}

    first = night(XGB_PARAMS, on_dask=True)
    assert first["run"]["state"] == "completed", first["run"]
    logs = (consortium.root / "bank-2-agent.log").read_text()
    assert "featuring and training on 2 local Dask workers" in logs and "training rows loaded on Dask" in logs
    assert "consortium terminal features:" in logs
    candidate = first["model"]["assessment"]["candidate"]
    assert candidate["auc"] > 0.7 and candidate["rows"] > 1000

    on_pandas = night(XGB_PARAMS, on_dask=False)
    assert on_pandas["run"]["state"] == "completed", on_pandas["run"]
    assert on_pandas["model"]["digest"] == first["model"]["digest"]
    gate = on_pandas["model"]["assessment"]
    assert gate["candidate"] == gate["baseline"] == candidate  # scored on pandas, as bank-2 scored on Dask

    worse = night({"n_trees": 1, "max_depth": 1, "eta": 0.01, "n_bins": 4}, on_dask=True)
    assert worse["run"]["state"] == "rejected", worse["run"]
    gate = worse["model"]["assessment"]
    assert gate["baseline"] == candidate and gate["candidate"]["auc"] < candidate["auc"] - 0.005


def test_a_private_runs_spend_is_recorded_per_bank_and_each_bank_checked_its_own(
    consortium: LocalConsortium, bank_files: dict[str, Path]
) -> None:
    """A differentially private run between real processes: every bank's agent checked, at each
    contribution, the ledger entry recording its spend against the setting its noise was drawn
    for (it stops otherwise), and keeps its receipt beside those of its contributions."""
    from schemas.ledger import parse_entry
    from schemas.privacy import run_privacy

    set_up(consortium)
    params = {"dp_epsilon": 4.0}
    run_id = consortium.open_run("logreg", params, train_start=TRAIN_START)
    finish(consortium, start_agents(consortium, bank_files))
    assert consortium.run(run_id)["state"] == "completed"
    setting = run_privacy("logreg", params, gate=False)  # no validation days: no promotion gate
    assert setting is not None
    for bank in BANKS:
        entries = [parse_entry(json.loads(p.read_text())["entry"])
                   for p in (consortium.state_dir(bank) / "receipts").glob("*.json")]
        [spent] = [e for e in entries if e["event"] == "privacy.spent"]
        assert spent["bank_id"] == bank and spent["run_id"] == run_id
        assert {k: v for k, v in spent["details"].items() if k != "round_key"} == setting.to_json()
        assert sum(e["event"] == "contribution.accepted" for e in entries) > 1


@pytest.mark.parametrize(("mode", "reason"), [
    ("replay", "never showed this bank the ledger entry recording its privacy spend"),
    ("no-receipt", "without the receipt of the ledger entry recording its privacy spend"),
])
def test_an_operator_hiding_a_banks_privacy_spend_gets_no_model_from_it(
    consortium: LocalConsortium, bank_files: dict[str, Path], mode: str, reason: str
) -> None:
    """The operator answers one bank's contributions to a private run (all stored by the real
    aggregator) either as replays without the receipt of its spend, or as stored without it: the
    bank sees no ledger entry recording what it spent. Its agent stops saying so, and proposes
    no model: the run publishes nothing."""
    from bank_node.agent.state import AgentConfig, StateDir
    from tests.e2e.operator_proxy import operator_proxy

    set_up(consortium)
    victim = StateDir(consortium.state_dir("bank-1"))
    with operator_proxy(consortium.url, mode) as (proxy_url, proxy):  # type: ignore[arg-type]
        victim.save_config(AgentConfig(url=proxy_url, bank_id="bank-1"))
        run_id = consortium.open_run("logreg", {"dp_epsilon": 4.0}, train_start=TRAIN_START)
        agents = start_agents(consortium, bank_files)
        try:
            code = agents["bank-1"].wait(timeout=600)
            log = (consortium.root / "bank-1-agent.log").read_text()
            assert code != 0 and reason in log, log[-3000:]
            assert "Traceback" not in log
            assert proxy.rewritten >= 1  # the aggregator stored what the bank sent
            assert consortium.run(run_id)["state"] != "completed"
            assert all(str(m.get("run_id")) != run_id for m in consortium.api("GET", "/v1/models").json())
        finally:
            consortium.stop(*(agent for agent in agents.values() if agent.poll() is None))


def test_an_agent_started_while_the_consortium_is_down_waits_for_it(
    consortium: LocalConsortium, bank_files: dict[str, Path], tmp_path: Path
) -> None:
    """A bank's agent is a service: started while the consortium is down (maintenance, a restart),
    it says so and waits instead of exiting, and goes on once the consortium is back."""
    from fedfraud.localnet import FEDFRAUD

    set_up(consortium)
    consortium.stop()
    log_path = tmp_path / "waiting-agent.log"
    with log_path.open("ab") as log:
        agent = subprocess.Popen(
            [*FEDFRAUD, "bank", "--retry-attempts", "2", "agent", "--state-dir", str(consortium.state_dir("bank-1")),
             "--data", str(bank_files["bank-1"]), "--train-start", TRAIN_START, "--poll-interval", "0.5"],
            env=consortium.env, stdout=log, stderr=log)
    try:
        wait_for(lambda: "the consortium is not reachable now" in log_path.read_text(), 120, "the agent's wait")
        time.sleep(6)  # past one pause: still waiting, not gone
        assert agent.poll() is None, log_path.read_text()
        consortium.start()
        wait_for(lambda: "polling" in log_path.read_text(), 120, "the agent's first poll", interval=0.5)
        assert agent.poll() is None, log_path.read_text()
    finally:
        consortium.stop(agent)


def test_metrics_show_the_runs_progress_and_no_log_line_holds_a_secret(
    consortium: LocalConsortium, bank_files: dict[str, Path]
) -> None:
    """Real processes, agents logging JSON lines: /metrics scraped while the run trains shows its
    rounds being released; every agent request is found, by its id, in the aggregator's log; and
    no log line of any process holds a token, a key, or a transaction."""
    import base64
    import threading

    from prometheus_client.parser import text_string_to_metric_families

    from bank_node.agent.state import StateDir
    from bank_node.terminal_history import terminal_key

    set_up(consortium)
    monitor = consortium.cli("consortium", "create-token", "--role", "monitoring").strip().splitlines()[-1]
    consortium.agent_options = ("-v", "--log-format", "json")

    def released() -> tuple[float, float]:
        text = requests.get(f"{consortium.url}/metrics", headers={"Authorization": f"Bearer {monitor}"},
                            timeout=10).text
        rounds = completed = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "fedfraud_round_seconds_count" and sample.labels.get("outcome") == "released":
                    rounds = sample.value
                if sample.name == "fedfraud_runs" and sample.labels.get("state") == "completed":
                    completed = sample.value
        return rounds, completed

    run_id = consortium.open_run("xgboost", {**XGB_PARAMS, "n_trees": 3}, train_start=TRAIN_START)
    seen: list[tuple[float, float]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.append(released())
            done.wait(0.2)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        finish(consortium, start_agents(consortium, bank_files))
    finally:
        done.set()
        watcher.join()
    final = released()
    state = consortium.run(run_id)
    assert state["state"] == "completed"
    # The rounds released, as the scrapes saw them: growing while the run trained, all at the end.
    counts = [rounds for rounds, _ in seen]
    assert counts == sorted(counts) and len(set(counts)) >= 3
    assert final == (sum(1 for r in state["rounds"] if r["state"] == "released"), 1.0)

    logs = {path.name: path.read_text() for path in consortium.root.glob("*.log")}
    aggregator = [json.loads(line) for line in logs["aggregator.log"].splitlines() if line.startswith("{")]
    answered = {line["request_id"] for line in aggregator if line.get("message") == "request"}
    sent = set()
    for name, text in logs.items():
        if name.endswith("-agent.log"):
            lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
            sent |= {line["request_id"] for line in lines if line.get("message") == "consortium request"}
    assert len(sent) > 50 and sent <= answered

    secrets = [consortium.operator_token, monitor, *consortium.bank_tokens.values()]
    for bank in BANKS:
        state_dir = StateDir(consortium.state_dir(bank))
        context = state_dir.load_secret_context()
        assert context is not None
        keys = state_dir.path(StateDir.KEYS).read_bytes()
        material = [keys[:32], keys[32:64], terminal_key(context), *(context[i:i + 32] for i in range(0, len(context), 4096))]
        secrets += [m.hex() for m in material] + [base64.b64encode(m).decode()[:40] for m in material]
    ledger_key = next(consortium.root.rglob("ledger-signing.key")).read_bytes()
    secrets += [ledger_key.hex()[:64], base64.b64encode(ledger_key).decode()[:40]]
    rows = pd.concat(pd.read_parquet(f) for f in bank_files.values()).sample(300, random_state=0)
    stamps = [str(t) for t in rows["TX_DATETIME"]] + [t.isoformat() for t in rows["TX_DATETIME"]]
    for name, text in logs.items():
        for secret in secrets:
            assert secret not in text, f"{name} holds secret material"
        for stamp in stamps:
            assert stamp not in text, f"{name} holds a transaction's timestamp {stamp}"
