"""Consortium terminal features: exact pooled windows for terminals above the threshold, nothing else."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import crypto
from bank_node.data import load_transactions
from bank_node.features import FEATURE_COLUMNS, compute_features
from bank_node.federated.iblt import TableDecodeError
from bank_node.federated.lockstep import LockstepResult, run_lockstep
from bank_node.federated.terminal_stats import (
    ConsortiumHistory,
    DayEvents,
    TerminalStatsConfig,
    consortium_history,
    events_by_day,
    estimate_distinct,
    history_days,
    presence_bitmap,
    sketch_slots,
    terminal_tags,
    with_consortium_terminal_features,
)
from bank_node.generator import generate_transactions
from consortium.secure_sum import SecureSum
from fedfraud.simulation import SimulationConfig, partition_customers
from schemas.transaction import to_canonical

TERMINAL_COLUMNS = [c for c in FEATURE_COLUMNS if c.startswith("TERMINAL_ID_")]
FIRST, LAST = "2018-05-20", "2018-05-31"


@pytest.fixture(scope="module")
def generated() -> pd.DataFrame:
    raw = generate_transactions(n_customers=500, n_terminals=300, days=61, seed=5, start_date="2018-04-01")
    return to_canonical(raw, require_label=True)


def split_banks(tx: pd.DataFrame, n_banks: int, seed: int = 0) -> list[pd.DataFrame]:
    bank = partition_customers(tx["customer_id"], [1 / n_banks] * n_banks, seed=seed)
    return [tx[bank == i] for i in range(n_banks)]


def run_protocol(
    banks: list[pd.DataFrame],
    key: bytes,
    *,
    scheme: str = "plain",
    config: TerminalStatsConfig = TerminalStatsConfig(),
    noise: Mapping[int, object] | None = None,
    days: list[int] | None = None,
    round_sizes: dict[str, int] | None = None,
) -> LockstepResult[ConsortiumHistory]:
    days = history_days(FIRST, LAST) if days is None else days
    secret = crypto.generate(scheme)
    public = crypto.load_context(secret.public_context(), require_public=True)
    names = [f"bank-{i}" for i in range(len(banks))]
    algorithms = {
        name: consortium_history(
            events_by_day(own, key, days), secret=key, config=config,
            noise=None if noise is None else noise.get(i),  # type: ignore[arg-type]
        )
        for i, (name, own) in enumerate(zip(names, banks))
    }
    aggregator = SecureSum(context=public) if round_sizes is None else RecordingSum(public, round_sizes)
    return run_lockstep(algorithms, contexts=dict.fromkeys(names, secret), aggregator=aggregator)


class RecordingSum(SecureSum):
    """A secure sum that records how many values each round carries."""

    def __init__(self, public: crypto.HEScheme, sizes: dict[str, int]) -> None:
        super().__init__(context=public)
        self.sizes = sizes

    def open(self, key: str, **kwargs: Any) -> Any:
        self.sizes[key] = kwargs["n_values"]
        return super().open(key, **kwargs)


def banks_per_terminal(banks: list[pd.DataFrame], days: list[int]) -> pd.Series:
    seen = []
    for i, own in enumerate(banks):
        day = own["timestamp"].to_numpy(dtype="datetime64[D]").astype(np.int64)
        seen.append(pd.Series(own["terminal_id"].to_numpy()[np.isin(day, days)]).drop_duplicates().to_frame().assign(bank=i))
    return pd.concat(seen).groupby(0)["bank"].nunique()


@pytest.mark.parametrize("scheme", ["plain", "ckks"])
def test_consortium_windows_equal_pooled_features_above_threshold(generated: pd.DataFrame, scheme: str) -> None:
    key = secrets.token_bytes(32)
    banks = split_banks(generated, 4)
    run = run_protocol(banks, key, scheme=scheme)
    histories = list(run.results.values())
    # Every bank decodes the very same history.
    assert all(np.array_equal(h.tag, histories[0].tag) and np.array_equal(h.count, histories[0].count) for h in histories)

    pooled = compute_features(generated, start=FIRST, end=LAST).set_index("transaction_id")
    seen = banks_per_terminal(banks, history_days(FIRST, LAST))
    compared = 0
    for own in banks:
        local = compute_features(own, start=FIRST, end=LAST)
        shared, covered = with_consortium_terminal_features(local, histories[0], secret=key)
        expected_covered = (seen.reindex(local["terminal_id"]).fillna(0).to_numpy() >= 3)
        assert np.array_equal(covered, expected_covered)
        truth = pooled.loc[shared["transaction_id"]]
        for column in TERMINAL_COLUMNS:
            got, want = shared[column].to_numpy(), truth[column].to_numpy()
            if "NB_TX" in column:
                assert np.array_equal(got[covered], want[covered]), column
            else:
                np.testing.assert_allclose(got[covered], want[covered], rtol=0, atol=1e-12, err_msg=column)
            # Rows of terminals under the threshold keep the bank's own values.
            assert np.array_equal(got[~covered], local[column].to_numpy()[~covered]), column
        # The bank's own features really were local: on covered rows the consortium adds traffic.
        assert (shared.loc[covered, "TERMINAL_ID_NB_TX_30DAY_WINDOW"] >= local.loc[covered, "TERMINAL_ID_NB_TX_30DAY_WINDOW"]).all()
        assert (shared.loc[covered, "TERMINAL_ID_NB_TX_30DAY_WINDOW"] > local.loc[covered, "TERMINAL_ID_NB_TX_30DAY_WINDOW"]).any()
        compared += int(covered.sum())
    assert compared > 0.5 * sum(len(compute_features(b, start=FIRST, end=LAST)) for b in banks)


def test_terminals_seen_by_too_few_banks_are_withheld(generated: pd.DataFrame) -> None:
    key = secrets.token_bytes(32)
    banks = split_banks(generated, 4)
    days = history_days(FIRST, LAST)
    # Terminal 7 is used by bank 0 and bank 1 only: the others' transactions there are dropped.
    lonely = 7
    banks = [b if i < 2 else b[b["terminal_id"] != lonely] for i, b in enumerate(banks)]
    config = TerminalStatsConfig(threshold=3)
    history = run_protocol(banks, key, config=config).results["bank-0"]
    tag = terminal_tags([lonely], key)
    assert history.banks_seen(tag)[0] == 2
    assert not history.eligible(tag)[0]
    assert not np.isin(tag, history.tag).any()  # its events are not kept
    seen = banks_per_terminal(banks, days)
    assert np.array_equal(history.banks_seen(terminal_tags(seen.index, key)), seen.to_numpy())
    # With a threshold of 2 it is shared.
    relaxed = run_protocol(banks, key, config=TerminalStatsConfig(threshold=2)).results["bank-0"]
    assert np.isin(tag, relaxed.tag).any()


@dataclass(frozen=True)
class OneDay:
    """Three banks' one day of history under one key, with the default settings' run."""

    key: bytes
    banks: list[pd.DataFrame]
    days: list[int]
    run: LockstepResult[ConsortiumHistory]

    def again(self, config: TerminalStatsConfig) -> LockstepResult[ConsortiumHistory]:
        return run_protocol(self.banks, self.key, days=self.days, config=config)


@pytest.fixture(scope="module")
def one_day(generated: pd.DataFrame) -> OneDay:
    key = secrets.token_bytes(32)
    banks = split_banks(generated, 3)
    days = history_days(FIRST, FIRST)
    return OneDay(key, banks, days, run_protocol(banks, key, days=days))


def sorted_events(history: ConsortiumHistory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((history.time_ns, history.tag))
    return history.tag[order], history.time_ns[order], history.count[order]


def test_a_table_too_small_is_retried_larger_in_step(one_day: OneDay) -> None:
    squeezed = one_day.again(TerminalStatsConfig(load=1.01))
    assert squeezed.costs.rounds > one_day.run.costs.rounds
    for got, want in zip(sorted_events(squeezed.results["bank-0"]), sorted_events(one_day.run.results["bank-0"])):
        assert np.array_equal(got, want)


def test_a_table_that_never_decodes_fails_the_run_on_every_bank(one_day: OneDay) -> None:
    with pytest.raises(TableDecodeError, match="did not decode after 1 sizes"):
        one_day.again(TerminalStatsConfig(load=1.01, max_attempts=1))


def test_tables_are_sent_in_bounded_chunks(one_day: OneDay) -> None:
    chunked = one_day.again(TerminalStatsConfig(chunk_values=500))
    assert chunked.costs.rounds > one_day.run.costs.rounds
    assert chunked.results["bank-0"].count.sum() == one_day.run.results["bank-0"].count.sum()


def test_cost_follows_the_traffic_not_the_number_of_terminals(one_day: OneDay) -> None:
    # The same transactions, on terminal ids spread a thousand times sparser.
    dense: dict[str, int] = {}
    sparse: dict[str, int] = {}
    run_protocol(one_day.banks, one_day.key, days=one_day.days, round_sizes=dense)
    spread = [b.assign(terminal_id=b["terminal_id"] * 1_000 + 7) for b in one_day.banks]
    run_protocol(spread, one_day.key, days=one_day.days, round_sizes=sparse)
    # Every day's table has the same size: it follows the events, not the terminal ids.
    first_tries = [k for k in dense if k.endswith("/a0/c0") and "presence" not in k]
    assert len(first_tries) == len(one_day.days)
    assert all(sparse[k] == dense[k] for k in first_tries)


def test_noise_is_applied_before_encryption(generated: pd.DataFrame, one_day: OneDay) -> None:
    key, banks, days = one_day.key, one_day.banks, one_day.days
    terminal = int(generated["terminal_id"].mode()[0])
    fake_tag = terminal_tags([terminal], key)[0]

    def one_dummy_fraud(day: int, events: DayEvents) -> DayEvents:
        return DayEvents(
            tag=np.append(events.tag, fake_tag), second=np.append(events.second, 3_600), fraud=np.append(events.fraud, 1)
        )

    plain = run_protocol(banks, key, days=days, config=TerminalStatsConfig(threshold=1)).results["bank-0"]
    noisy = run_protocol(banks, key, days=days, config=TerminalStatsConfig(threshold=1),
                         noise={0: one_dummy_fraud}).results["bank-1"]
    assert noisy.count.sum() == plain.count.sum() + len(days)
    assert noisy.frauds.sum() == plain.frauds.sum() + len(days)


def test_terminal_tags_are_keyed() -> None:
    ids = np.arange(1_000)
    one, other = terminal_tags(ids, b"k" * 32), terminal_tags(ids, b"j" * 32)
    assert len(np.unique(one)) == 1_000 and not np.array_equal(one, other)
    assert one.max() < 1 << 48 and one.min() >= 0
    assert np.array_equal(terminal_tags(ids[::-1], b"k" * 32), one[::-1])
    with pytest.raises(ValueError, match="16 bytes"):
        terminal_tags(ids, b"short")


def test_rows_whose_windows_reach_missing_days_are_refused(one_day: OneDay) -> None:
    local = compute_features(one_day.banks[0], start=FIRST, end=LAST)
    with pytest.raises(ValueError, match="lacks 11 day"):
        with_consortium_terminal_features(local, one_day.run.results["bank-0"], secret=one_day.key)


@pytest.mark.slow
def test_handbook_consortium_features_equal_the_reference_file(handbook_dir: Path) -> None:
    """Five banks, the handbook's 1.6M transactions: the full-data features of the reference file."""
    tx = load_transactions(handbook_dir / "transactions.parquet", require_label=True).frame
    reference = pd.read_parquet(handbook_dir / "features_reference_2018-07-25_2018-08-14.parquet")
    reference = reference.set_index("TRANSACTION_ID")
    bank = partition_customers(tx["customer_id"], SimulationConfig(n_banks=5).shares, seed=0)
    banks = [tx[bank == i] for i in range(5)]
    key = secrets.token_bytes(32)
    first, last = "2018-07-25", "2018-08-14"
    days = history_days(first, last)
    secret = crypto.generate("plain")
    public = crypto.load_context(secret.public_context(), require_public=True)
    algorithms = {f"bank-{i}": consortium_history(events_by_day(own, key, days), secret=key) for i, own in enumerate(banks)}
    history = run_lockstep(algorithms, contexts=dict.fromkeys(algorithms, secret),
                           aggregator=SecureSum(context=public)).results["bank-0"]
    rows = covered_rows = 0
    for own in banks:
        shared, covered = with_consortium_terminal_features(compute_features(own, start=first, end=last), history, secret=key)
        truth = reference.loc[shared["transaction_id"]]
        for column in TERMINAL_COLUMNS:
            got, want = shared[column].to_numpy()[covered], truth[column].to_numpy()[covered]
            if "NB_TX" in column:
                assert np.array_equal(got, want), column
            else:
                assert np.max(np.abs(got - want)) <= 1e-12, column
        rows += len(shared)
        covered_rows += int(covered.sum())
    assert rows == len(reference)
    assert covered_rows / rows > 0.999


@pytest.mark.parametrize("n_distinct", [0, 50, 10_000, 200_000])
def test_distinct_terminals_are_estimated_from_summed_bitmaps_a_little_high(n_distinct: int) -> None:
    rng = np.random.default_rng(n_distinct)
    tags = terminal_tags(np.arange(n_distinct), b"k" * 32)
    banks = [tags[rng.random(n_distinct) < 0.7] for _ in range(5)]  # most terminals seen by several banks
    slots = sketch_slots(sum(len(b) for b in banks))
    summed = sum(presence_bitmap(own, slots) for own in banks)
    estimate = estimate_distinct(summed)
    true = len(np.unique(np.concatenate(banks)))
    assert true <= estimate <= 1.08 * true + 16
