"""The agent loop over HTTP: three banks train together, propose identical models, survive a restart."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from bank_node.agent.ceremony import fetch_share, publish_keys
from bank_node.agent.client import ConsortiumClient
from bank_node.agent.runner import BankAgent, RunOutcome
from bank_node.agent.training import TrainingSet, training_rows
from bank_node.features import MODEL_INPUTS
from bank_node.federated.logreg import LogRegModel
from tests.bank_node.agent.conftest import (
    BANK_IDS,
    FAST_RETRY,
    SETTINGS,
    TRAIN_DAYS,
    TRAIN_START,
    XGB_PARAMS,
    Bank,
)
from tests.bank_node.agent.fake_consortium import FakeConsortium

LOGREG_PARAMS = {"max_rounds": 4}


class Crash(BaseException):
    """The agent process dies (not an error the agent handles)."""


class CrashingClient(ConsortiumClient):
    """A client whose process dies right after its n-th contribution was stored."""

    def __init__(self, *, crash_after: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.crash_after = crash_after
        self.stored = 0

    def put_contribution(self, run_id: str, round_key: str, payload: bytes, *, signature: str,
                         wait_s: float = 0.0) -> Any:
        summed = super().put_contribution(run_id, round_key, payload, signature=signature, wait_s=wait_s)
        self.stored += 1
        if self.stored == self.crash_after:
            raise Crash(f"killed after contributing to {round_key}")
        return summed


@pytest.fixture(scope="module")
def bank_rows(bank_transactions: dict[str, pd.DataFrame]) -> dict[str, TrainingSet]:
    return {
        bank_id: training_rows(frame, train_start=TRAIN_START, train_days=TRAIN_DAYS)
        for bank_id, frame in bank_transactions.items()
    }


def agent_for(bank: Bank, rows: TrainingSet, client: ConsortiumClient | None = None) -> BankAgent:
    return BankAgent(
        client=client or bank.client, identity=bank.identity, state=bank.state,
        training_rows=lambda window: rows, settings=SETTINGS,
    )


def run_concurrently(jobs: dict[str, Callable[[], list[RunOutcome]]]) -> dict[str, list[RunOutcome]]:
    results: dict[str, list[RunOutcome]] = {}
    errors: dict[str, BaseException] = {}

    def work(name: str) -> None:
        try:
            results[name] = jobs[name]()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors[name] = exc

    threads = [threading.Thread(target=work, args=(name,)) for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results


def test_banks_propose_byte_identical_models_and_fetch_the_published_one(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_rows: dict[str, TrainingSet], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="bank_node.agent.runner")
    xgb_run = fake.open_run("xgboost", XGB_PARAMS)
    lr_run = fake.open_run("logreg", LOGREG_PARAMS)
    agents = {b.bank_id: agent_for(b, bank_rows[b.bank_id]) for b in keyed_banks}

    outcomes = run_concurrently({name: agent.run_once for name, agent in agents.items()})
    for agent in agents.values():
        agent.sync_models()

    for run_id in (xgb_run, lr_run):
        digests = {o.digest for name in BANK_IDS for o in outcomes[name] if o.run_id == run_id}
        assert len(digests) == 1 and all(o.status == "proposed" for o in outcomes["bank-1"])
        proposals = fake.runs[run_id].proposals
        assert set(proposals) == set(BANK_IDS)
        assert len(set(proposals.values())) == 1, "proposals differ between banks"
        assert hashlib.sha256(proposals["bank-1"]).hexdigest() == digests.pop()
        assert fake.runs[run_id].state == "completed"
        for bank in keyed_banks:
            record = bank.state.run_record(run_id) or {}
            assert record["status"] == "published" and record["matches_proposal"] is True
            # Where the rounds' time went, within the run's time.
            spent = record["seconds_in_rounds"]
            assert set(spent) == {"compute", "encrypt", "decrypt", "wait"} and min(spent.values()) >= 0
            assert spent["encrypt"] > 0 and spent["wait"] > 0 and sum(spent.values()) <= record["seconds"] + 0.01
            assert record["cpu_seconds"] > 0
            with open(record["model_file"], "rb") as handle:
                assert handle.read() == proposals["bank-1"]

    booster = xgb.Booster()
    booster.load_model(bytearray(fake.runs[xgb_run].proposals["bank-1"]))
    scores = booster.predict(xgb.DMatrix(bank_rows["bank-1"].X, feature_names=list(MODEL_INPUTS)))
    assert booster.num_boosted_rounds() == 3 and np.all((scores > 0) & (scores < 1))
    logreg = LogRegModel.from_json(fake.runs[lr_run].proposals["bank-2"].decode())
    assert logreg.feature_names == MODEL_INPUTS
    # Finished runs are not trained again.
    assert agents["bank-1"].run_once() == []
    # Progress at the default level: phase, rounds done of expected, tree of trees.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"run {xgb_run}: ")]
    assert any("trees, " in line and "tree 3 of 3" in line and "of at most 7 rounds" in line for line in lines), lines
    assert any("this node's own work (compute" in line and "waiting for the consortium" in line for line in lines)


def test_an_agent_restarted_mid_run_replays_and_still_agrees(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_rows: dict[str, TrainingSet], url: str
) -> None:
    run_id = fake.open_run("xgboost", XGB_PARAMS)
    first, *others = keyed_banks
    crashing = CrashingClient(crash_after=3, base_url=url, token=first.token, retry=FAST_RETRY)
    restarted: list[RunOutcome] = []

    def first_bank() -> list[RunOutcome]:
        with pytest.raises(Crash):
            agent_for(first, bank_rows[first.bank_id], client=crashing).run_once()
        assert "status" not in (first.state.run_record(run_id) or {})  # only its mask secret is kept
        time.sleep(0.1)  # the process is down for a moment; the others wait for its next round
        restarted.extend(agent_for(first, bank_rows[first.bank_id], client=first.new_client(url)).run_once())
        return restarted

    outcomes = run_concurrently(
        {"bank-1": first_bank, **{b.bank_id: agent_for(b, bank_rows[b.bank_id]).run_once for b in others}}
    )

    assert [o.status for o in restarted] == ["proposed"]
    record = first.state.run_record(run_id) or {}
    assert record["replayed_rounds"] == 3
    assert len({o.digest for name in BANK_IDS for o in outcomes[name]}) == 1
    assert fake.runs[run_id].state == "completed"
    assert fake.count("PUT", "/contributions/", 409) == 3


def test_a_failed_run_is_recorded_and_not_retried(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_rows: dict[str, TrainingSet]
) -> None:
    run_id = fake.open_run("xgboost", XGB_PARAMS)
    agent = agent_for(keyed_banks[0], bank_rows["bank-1"])
    result: dict[str, list[RunOutcome]] = {}
    thread = threading.Thread(target=lambda: result.setdefault("outcomes", agent.run_once()))
    thread.start()
    deadline = time.monotonic() + 10
    while fake.count("GET", "/aggregates/gbdt/bins", 202) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)

    fake.fail_round(run_id, "gbdt/bins")
    thread.join(10)

    [outcome] = result["outcomes"]
    assert outcome.status == "failed" and "fewer than the quorum of 3" in outcome.message
    assert (keyed_banks[0].state.run_record(run_id) or {})["status"] == "failed"
    assert agent.pending_runs() == []


def test_runs_of_other_banks_and_unknown_models_are_handled(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_rows: dict[str, TrainingSet]
) -> None:
    fake.open_run("xgboost", XGB_PARAMS, participants=["bank-2", "bank-3", "bank-4"])
    strange = fake.open_run("forest", {})
    agent = agent_for(keyed_banks[0], bank_rows["bank-1"])

    outcomes = agent.run_once()

    assert [(o.run_id, o.status) for o in outcomes] == [(strange, "failed")]
    assert "'forest' is not one this agent trains" in outcomes[0].message


def test_invalid_params_fail_the_run_readably(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_rows: dict[str, TrainingSet]
) -> None:
    run_id = fake.open_run("xgboost", {"max_depth": 0})
    [outcome] = agent_for(keyed_banks[0], bank_rows["bank-1"]).run_once()
    assert outcome.status == "failed" and "params.max_depth: max_depth must be from 1 to 10" in outcome.message
    # ... and the consortium heard why (the service refuses such params at the door; this
    # bank checks again because it trusts nothing the server sends).
    assert fake.runs[run_id].withdrawn == {"bank-1": outcome.message}


def test_under_ckks_the_proposals_are_byte_identical_too(
    fake: FakeConsortium, banks: list[Bank], bank_rows: dict[str, TrainingSet]
) -> None:
    first, *others = banks
    publish_keys(first.client, first.identity, first.state, scheme="ckks")
    for bank in others:
        fetch_share(bank.client, bank.identity, bank.state)
    run_id = fake.open_run("xgboost", {**XGB_PARAMS, "n_trees": 2})

    outcomes = run_concurrently({b.bank_id: agent_for(b, bank_rows[b.bank_id]).run_once for b in banks})

    assert {o.status for name in BANK_IDS for o in outcomes[name]} == {"proposed"}
    assert len(set(fake.runs[run_id].proposals.values())) == 1 and fake.runs[run_id].state == "completed"


def test_the_loop_waits_out_an_unavailable_consortium(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_rows: dict[str, TrainingSet]
) -> None:
    fake.fail_next("GET", "/v1/runs", 503, times=1000)
    agent = agent_for(keyed_banks[0], bank_rows["bank-1"])
    stop = threading.Event()
    thread = threading.Thread(target=agent.run_forever, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 10
    while fake.count("GET", "/v1/runs", 503) < 2 * FAST_RETRY.max_attempts:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.01)

    stop.set()
    thread.join(5)

    assert not thread.is_alive()


def test_a_model_that_cannot_be_fetched_now_is_fetched_on_a_later_poll(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_rows: dict[str, TrainingSet]
) -> None:
    run_id = fake.open_run("logreg", LOGREG_PARAMS)
    agents = {b.bank_id: agent_for(b, bank_rows[b.bank_id]) for b in keyed_banks}
    fake.fail_next("GET", "/v1/models/", 404, times=1000)
    outcomes = run_concurrently({name: agent.run_once for name, agent in agents.items()})
    # The runs' outcomes are kept although no model could be downloaded.
    assert all(o.status == "proposed" for name in BANK_IDS for o in outcomes[name])
    bank = keyed_banks[0]
    assert (bank.state.run_record(run_id) or {})["status"] == "proposed"
    fake.faults.clear()
    assert len(agents["bank-1"].sync_models()) == 1
    assert (bank.state.run_record(run_id) or {})["status"] == "published"


def test_every_bank_trains_on_the_runs_window_and_withdraws_when_it_holds_no_data(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_transactions: dict[str, pd.DataFrame]
) -> None:
    """The window travels with the run: a bank's own default period does not matter, and a bank
    with nothing in the window tells the consortium why instead of leaving it waiting."""
    from bank_node.agent.training import TransactionSource

    seen: list[object] = []
    sources = {}
    for bank in keyed_banks:
        path = bank.state.root / "transactions.parquet"
        bank_transactions[bank.bank_id].to_parquet(path)
        sources[bank.bank_id] = TransactionSource(path, train_start=date(2018, 4, 1), train_days=3)
    empty = {"as_of": "2030-01-08", "train_days": 7, "validation_days": 0, "label_delay_days": 0}
    run_id = fake.open_run("xgboost", XGB_PARAMS, window=empty)

    def rows(bank: Bank) -> Callable[[object], TrainingSet]:
        def read(window: object) -> TrainingSet:
            seen.append(window)
            return sources[bank.bank_id].rows(window)  # type: ignore[arg-type]
        return read

    first, *others = (BankAgent(client=b.client, identity=b.identity, state=b.state, training_rows=rows(b),
                                settings=SETTINGS) for b in keyed_banks)
    [outcome] = first.run_once()
    assert outcome.status == "failed" and "no transactions from 2030-01-01 for 7 days" in outcome.message
    # Three participants and a quorum of three: one bank out ends the run, with its reason.
    assert fake.runs[run_id].withdrawn == {"bank-1": outcome.message} and fake.runs[run_id].state == "failed"
    assert [agent.run_once() for agent in others] == [[], []]
    assert [getattr(w, "train_start", None) for w in seen] == [date(2030, 1, 1)]
