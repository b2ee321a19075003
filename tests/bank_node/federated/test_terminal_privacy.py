"""The private variant of the consortium terminal statistics: noisy day counts per terminal."""

from __future__ import annotations

import secrets

import numpy as np
import pandas as pd
import pytest

import crypto
from bank_node.features import NS_PER_DAY, FeatureConfig, compute_features
from bank_node.federated.lockstep import LockstepResult, run_lockstep
from bank_node.federated.terminal_stats import (
    ConsortiumHistory,
    DayCountPrivacy,
    TerminalStatsConfig,
    events_by_day,
    history_days,
    private_consortium_history,
    terminal_tags,
    with_consortium_terminal_features,
)
from bank_node.generator import generate_transactions
from consortium.secure_sum import SecureSum
from fedfraud.simulation import partition_customers
from schemas.privacy import compose_epsilon
from schemas.transaction import to_canonical
from tests.bank_node.federated.test_terminal_stats import RecordingSum

FIRST, LAST = "2018-05-20", "2018-05-31"
N_BANKS = 3


@pytest.fixture(scope="module")
def banks() -> list[pd.DataFrame]:
    raw = generate_transactions(n_customers=600, n_terminals=200, days=61, seed=11, start_date="2018-04-01")
    tx = to_canonical(raw, require_label=True)
    owner = partition_customers(tx["customer_id"], [1 / N_BANKS] * N_BANKS, seed=3)
    return [tx[owner == i] for i in range(N_BANKS)]


def run_private(banks: list[pd.DataFrame], key: bytes, epsilon: float, *, seed: int = 0,
                config: TerminalStatsConfig = TerminalStatsConfig(),
                round_sizes: dict[str, int] | None = None) -> LockstepResult[ConsortiumHistory]:
    secret = crypto.generate("plain")
    public = crypto.load_context(secret.public_context(), require_public=True)
    days = history_days(FIRST, LAST)
    rng = np.random.default_rng(seed)
    algorithms = {
        f"bank-{i}": private_consortium_history(events_by_day(own, key, days), secret=key,
                                                privacy=DayCountPrivacy(epsilon), config=config, rng=rng)
        for i, own in enumerate(banks)
    }
    aggregator = SecureSum(context=public) if round_sizes is None else RecordingSum(public, round_sizes)
    return run_lockstep(algorithms, contexts=dict.fromkeys(algorithms, secret), aggregator=aggregator)


def exact_day_counts(banks: list[pd.DataFrame], key: bytes, terminals: np.ndarray, days: list[int]) -> np.ndarray:
    """Pooled transactions and frauds per (terminal, day), straight from the transactions."""
    pooled = pd.concat(banks)
    day = pooled["timestamp"].to_numpy(dtype="datetime64[D]").astype(np.int64)
    frame = pd.DataFrame({"tag": terminal_tags(pooled["terminal_id"], key), "day": day,
                          "fraud": pooled["label"].to_numpy(dtype=np.int64)})
    grouped = frame.groupby(["tag", "day"])["fraud"].agg(["size", "sum"])
    index = pd.MultiIndex.from_product([terminals, days], names=["tag", "day"])
    return grouped.reindex(index, fill_value=0).to_numpy(dtype=np.float64).reshape(len(terminals), len(days), 2)


def dense(history: ConsortiumHistory, terminals: np.ndarray, days: list[int]) -> np.ndarray:
    out = np.zeros((len(terminals), len(days), 2))
    t = np.searchsorted(terminals, history.tag)
    d = history.time_ns // NS_PER_DAY - days[0]
    out[t, d, 0] = history.count
    out[t, d, 1] = history.frauds
    return out


def eligible(history: ConsortiumHistory) -> np.ndarray:
    return history.presence_tags[history.presence_banks >= history.threshold]


def day_resolution_features(banks: list[pd.DataFrame], rows: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """What the private variant approximates, computed on pooled data: the terminal windows over
    the whole days ``D - delay - w`` to ``D - delay - 1`` of a transaction of day ``D``."""
    pooled = pd.concat(banks)
    per_day = (pooled.assign(day=pooled["timestamp"].dt.normalize())
               .groupby(["terminal_id", "day"])["label"].agg(["size", "sum"]))
    out = {}
    for w in config.windows_days:
        n_tx, n_fraud = [], []
        for terminal, time in zip(rows["terminal_id"], rows["timestamp"].dt.normalize()):
            first = time - pd.Timedelta(days=config.delay_days + w)
            last = time - pd.Timedelta(days=config.delay_days + 1)
            window = per_day.loc[terminal] if terminal in per_day.index.get_level_values(0) else per_day.iloc[:0]
            window = window[(window.index >= first) & (window.index <= last)]
            n_tx.append(window["size"].sum())
            n_fraud.append(window["sum"].sum())
        n_tx_a, n_fraud_a = np.asarray(n_tx, dtype=float), np.asarray(n_fraud, dtype=float)
        out[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = n_tx_a
        out[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = np.divide(n_fraud_a, n_tx_a, out=np.zeros_like(n_tx_a),
                                                           where=n_tx_a > 0)
    return pd.DataFrame(out, index=rows.index)


def test_with_negligible_noise_the_windows_are_the_pooled_whole_day_windows(banks: list[pd.DataFrame]) -> None:
    key = secrets.token_bytes(32)
    # epsilon 1000: the summed noise is a few hundredths, so the rounded day counts are exact.
    history = run_private(banks, key, 1000.0).results["bank-1"]
    local = compute_features(banks[1], start=FIRST, end=LAST)
    shared, covered = with_consortium_terminal_features(local, history, secret=key)
    assert covered.mean() > 0.5
    sample = shared[covered].sample(300, random_state=0)
    want = day_resolution_features(banks, sample, FeatureConfig())
    for column in want:
        np.testing.assert_allclose(sample[column].to_numpy(), want[column].to_numpy(), rtol=0, atol=1e-12,
                                   err_msg=column)
    # Rows of terminals under the threshold keep the bank's own values.
    assert shared.loc[~covered, "TERMINAL_ID_NB_TX_7DAY_WINDOW"].equals(local.loc[~covered, "TERMINAL_ID_NB_TX_7DAY_WINDOW"])


def test_the_noise_has_the_configured_scale_and_a_bank_keeps_its_own_counts_exact(banks: list[pd.DataFrame]) -> None:
    key = secrets.token_bytes(32)
    privacy = DayCountPrivacy(2.0)
    # One release of that noise is (2, 1e-5)-DP for a transaction (sensitivity sqrt 2), by the accountant.
    assert compose_epsilon([(privacy.sigma / np.sqrt(2.0), 1)], 1e-5) == pytest.approx(2.0, rel=1e-3)
    run = run_private(banks, key, privacy.epsilon, seed=7)
    days = history_days(FIRST, LAST)
    terminals = eligible(run.results["bank-0"])
    exact = exact_day_counts(banks, key, terminals, days)
    for name in run.results:
        # Each bank removes its own noise: what is left is the other two banks' noise, rounded.
        residual = dense(run.results[name], terminals, days) - exact
        expected = np.sqrt((N_BANKS - 1) * privacy.sigma**2 + 1 / 12)
        assert residual.size > 5_000
        assert abs(residual.mean()) < 4 * expected / np.sqrt(residual.size)
        assert residual.std() == pytest.approx(expected, rel=0.04)
    # Banks hold different noise realizations: none can read another's exact history.
    assert not np.array_equal(run.results["bank-0"].count, run.results["bank-1"].count)


def test_the_aggregator_sees_only_dense_day_vectors_of_eligible_terminals(banks: list[pd.DataFrame]) -> None:
    key = secrets.token_bytes(32)
    sizes: dict[str, int] = {}
    config = TerminalStatsConfig(chunk_values=250)
    run = run_private(banks, key, 4.0, config=config, round_sizes=sizes)
    history = run.results["bank-0"]
    n_values = 2 * len(eligible(history))
    days = history_days(FIRST, LAST)
    count_rounds = {k: v for k, v in sizes.items() if "/counts/" in k}
    assert {k.split("/")[2] for k in count_rounds} == {str(np.datetime64(d, "D")) for d in days}
    # Every day is the same dense vector, in bounded chunks: its size says nothing about the day's traffic.
    per_day: dict[str, int] = {}
    for k, v in count_rounds.items():
        values = v - 1  # every sum carries one more value: how many banks it holds
        assert values <= 250
        per_day[k.split("/")[2]] = per_day.get(k.split("/")[2], 0) + values
    assert set(per_day.values()) == {n_values}
    # No event table is summed: the time of day never leaves a bank.
    assert not [k for k in sizes if "/a0/" in k and "presence" not in k]


def test_a_nonsensical_privacy_setting_is_refused() -> None:
    for epsilon, delta in ((0.0, 1e-5), (-1.0, 1e-5), (float("inf"), 1e-5), (1.0, 0.0), (1.0, 1.0)):
        with pytest.raises(ValueError, match="epsilon|delta"):
            DayCountPrivacy(epsilon, delta)
