"""The agent's Prometheus metrics, served on the bank's loopback: what it polled, sent and decided."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from bank_node.agent.metrics import AgentMetrics
from bank_node.agent.runner import BankAgent
from bank_node.agent.training import TrainingSet
from fedfraud.localnet import free_port
from tests.bank_node.agent.conftest import SETTINGS, XGB_PARAMS, Bank
from tests.bank_node.agent.fake_consortium import FakeConsortium
from tests.bank_node.agent.test_runner import bank_rows, run_concurrently  # noqa: F401 - a fixture

__all__ = ["bank_rows"]


def test_the_agents_metrics_count_its_polls_runs_and_uploads(
    fake: FakeConsortium, keyed_banks: list[Bank], bank_rows: dict[str, TrainingSet]  # noqa: F811
) -> None:
    run_id = fake.open_run("xgboost", XGB_PARAMS)
    metrics = {b.bank_id: AgentMetrics() for b in keyed_banks}
    agents = {b.bank_id: BankAgent(client=b.client, identity=b.identity, state=b.state,
                                   training_rows=lambda window, rows=bank_rows[b.bank_id]: rows, settings=SETTINGS,
                                   metrics=metrics[b.bank_id]) for b in keyed_banks}
    outcomes = run_concurrently({name: agent.run_once for name, agent in agents.items()})
    assert {o[0].status for o in outcomes.values()} == {"proposed"}

    port = free_port()
    metrics["bank-1"].serve(port)
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("fedfraud_agent_runs_total", (("outcome", "proposed"),))] == 1
    assert samples[("fedfraud_agent_polls_total", (("outcome", "answered"),))] >= 2
    assert samples[("fedfraud_agent_last_poll_timestamp_seconds", ())] > 0
    # One contribution a round of the run, each an encrypted vector of some size.
    rounds = fake.runs[run_id].to_json()["rounds"]
    assert samples[("fedfraud_agent_contributions_total", ())] == len(rounds) > 3
    assert samples[("fedfraud_agent_uploaded_bytes_total", ())] > 1_000 * len(rounds)


def test_the_privacy_spend_is_read_at_each_scrape() -> None:
    metrics = AgentMetrics()
    assert metrics.registry.get_sample_value("fedfraud_agent_privacy_spent_epsilon") is None  # no budget: no gauge
    spent = [0.5]
    metrics.spend_from(lambda: spent[0])
    assert metrics.registry.get_sample_value("fedfraud_agent_privacy_spent_epsilon") == 0.5
    spent[0] = 2.25
    assert metrics.registry.get_sample_value("fedfraud_agent_privacy_spent_epsilon") == 2.25
