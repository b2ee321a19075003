"""A bank's privacy budget: composed over its private runs, enforced by its agent before any
round, and kept across restarts."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from bank_node.agent.privacy_budget import SPENT_FILE, BudgetExceeded, PrivacyBudget
from bank_node.agent.runner import BankAgent, RunOutcome
from bank_node.agent.state import StateDir
from bank_node.agent.training import TrainingSet, training_rows
from schemas.privacy import compose_epsilon, run_privacy
from tests.bank_node.agent.conftest import SETTINGS, TRAIN_DAYS, TRAIN_START, XGB_PARAMS, Bank
from tests.bank_node.agent.fake_consortium import FakeConsortium

NOW = datetime(2026, 12, 3, 2, 0, tzinfo=UTC)


def _private(epsilon: float, n_trees: int = 3) -> dict[str, float]:
    return {**XGB_PARAMS, "n_trees": n_trees, "dp_epsilon": epsilon}


def test_the_budget_composes_runs_over_its_period_and_survives_a_restart(tmp_path: object) -> None:
    state = StateDir(tmp_path)  # type: ignore[arg-type]
    budget = PrivacyBudget(epsilon=8.0, period_days=30)
    first = run_privacy("xgboost", _private(2.0))
    assert first is not None
    # The run's training at epsilon 2 and its promotion gate at epsilon 2, composed.
    assert budget.check(state, "run-1", first, NOW) == pytest.approx(first.total_epsilon, rel=0.02)
    assert 2.0 < first.total_epsilon < 4.0
    budget.charge(state, "run-1", first, NOW)
    budget.charge(state, "run-1", first, NOW)  # a resumed run is charged once
    assert len(PrivacyBudget.charges(state)) == 1

    # A restart: a new process reads the same state directory.
    again = PrivacyBudget(epsilon=8.0, period_days=30)
    reopened = StateDir(tmp_path)  # type: ignore[arg-type]
    spent = again.spent(reopened, NOW + timedelta(days=1))
    assert spent == pytest.approx(compose_epsilon(first.mechanisms(), 1e-5))
    second = run_privacy("xgboost", _private(2.0))
    assert second is not None
    together = again.check(reopened, "run-2", second, NOW + timedelta(days=1))
    assert first.total_epsilon < together < 2 * first.total_epsilon  # Renyi composition: less than the sum
    again.charge(reopened, "run-2", second, NOW + timedelta(days=1))
    with pytest.raises(BudgetExceeded, match=r"over its budget of 8 at delta 1e-05"):
        again.check(reopened, "run-3", run_privacy("xgboost", _private(6.0)), NOW + timedelta(days=2))
    # Thirty days on, the first two runs have left the period.
    third = run_privacy("xgboost", _private(4.0))
    assert third is not None
    assert again.check(reopened, "run-3", third, NOW + timedelta(days=31, hours=1)) == pytest.approx(
        third.total_epsilon, rel=0.02)
    with pytest.raises(BudgetExceeded, match="without differential privacy"):
        again.check(reopened, "run-4", None, NOW)
    document = json.loads((tmp_path / SPENT_FILE).read_text())  # type: ignore[operator]
    assert [c["run_id"] for c in document["runs"]] == ["run-1", "run-2"]
    assert document["runs"][0]["accounting"].startswith("Renyi DP")


@pytest.fixture(scope="module")
def bank_rows(bank_transactions: dict[str, pd.DataFrame]) -> dict[str, TrainingSet]:
    return {bank_id: training_rows(frame, train_start=TRAIN_START, train_days=TRAIN_DAYS)
            for bank_id, frame in bank_transactions.items()}


def _agents(banks: list[Bank], rows: dict[str, TrainingSet], budget: PrivacyBudget) -> list[BankAgent]:
    settings = dataclasses.replace(SETTINGS, privacy_budget=budget)
    return [BankAgent(client=b.client, identity=b.identity, state=b.state,
                      training_rows=lambda window, r=rows[b.bank_id]: r, settings=settings) for b in banks]


def _together(agents: list[BankAgent]) -> list[list[RunOutcome]]:
    results: list[list[RunOutcome]] = [[] for _ in agents]
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, agents[i].run_once()))
               for i in range(len(agents))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_an_agent_refuses_a_run_that_would_exceed_its_budget_even_after_a_restart(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_rows: dict[str, TrainingSet]
) -> None:
    budget = PrivacyBudget(epsilon=2.5, period_days=30)
    private = fake.open_run("xgboost", _private(2.0))  # no window, so no gate: epsilon 2 in all
    outcomes = _together(_agents(keyed_banks, bank_rows, budget))
    assert all(o.status == "proposed" for result in outcomes for o in result), outcomes
    assert fake.runs[private].state == "completed"
    for bank in keyed_banks:
        [charge] = PrivacyBudget.charges(bank.state)
        assert charge["run_id"] == private and charge["epsilon"] == 2.0

    # Restarted agents (new objects on the same state): a second epsilon-2 run would compose to
    # about 2.9, more than 2.5, so the first bank refuses it before any round and says why.
    greedy = fake.open_run("xgboost", _private(2.0))
    [refused] = _agents(keyed_banks[:1], bank_rows, budget)[0].run_once()
    assert refused.status == "failed" and "over its budget of 2.5" in refused.message
    assert fake.runs[greedy].withdrawn == {"bank-1": refused.message} and fake.runs[greedy].state == "failed"
    assert len(PrivacyBudget.charges(keyed_banks[0].state)) == 1  # nothing charged for a refused run

    # A run without differential privacy is refused by a bank that keeps a budget.
    plain = fake.open_run("xgboost", XGB_PARAMS)
    [refused] = _agents(keyed_banks[1:2], bank_rows, budget)[0].run_once()
    assert refused.status == "failed" and "without differential privacy" in refused.message
    assert fake.runs[plain].state == "failed"


def test_a_run_started_over_after_a_dropout_is_charged_again_or_left(tmp_path: object) -> None:
    state = StateDir(tmp_path)  # type: ignore[arg-type]
    setting = run_privacy("xgboost", _private(2.0))
    assert setting is not None
    twice, thrice = (compose_epsilon(setting.mechanisms() * k, 1e-5) for k in (2, 3))
    budget = PrivacyBudget(epsilon=(twice + thrice) / 2, period_days=30)  # room for two releases, not three
    budget.charge(state, "run-1", setting)
    charge = budget.restart_charger(state, "run-1", setting)
    charge(1)  # the sums are released again, with fresh noise: charged again, in full
    assert [c["run_id"] for c in PrivacyBudget.charges(state)] == ["run-1", "run-1#restart-1"]
    assert budget.spent(state) == pytest.approx(twice)
    # A third release would exceed the budget: the bank leaves instead, and nothing more is charged.
    with pytest.raises(BudgetExceeded, match="starting the run over \\(epoch 2\\)"):
        charge(2)
    assert len(PrivacyBudget.charges(state)) == 2


def test_an_operator_cannot_spend_a_banks_budget_through_the_gate_alone(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_rows: dict[str, TrainingSet]
) -> None:
    """The operator alone sets a run's params: a modest training epsilon with a huge gate epsilon
    (a near-exact gate) is charged in full and refused by a bank with a budget, before any round."""
    budget = PrivacyBudget(epsilon=5.0, period_days=30)
    window = {"as_of": "2030-01-15", "train_days": 7, "validation_days": 7, "label_delay_days": 0}
    run_id = fake.open_run("xgboost", {**_private(1.0), "gate_dp_epsilon": 50.0}, window=window)
    [refused] = _agents(keyed_banks[:1], bank_rows, budget)[0].run_once()
    assert refused.status == "failed" and "over its budget of 5" in refused.message
    assert fake.runs[run_id].withdrawn == {"bank-1": refused.message}
    assert PrivacyBudget.charges(keyed_banks[0].state) == []
    assert fake.runs[run_id].rounds is None  # nothing was sent
