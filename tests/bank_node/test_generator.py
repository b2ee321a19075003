"""Tests of bank_node.generator: determinism, layout, and the three fraud scenarios."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bank_node.features import compute_features
from bank_node.generator import (
    COLUMNS,
    HANDBOOK_TO_CANONICAL,
    GeneratorConfig,
    SimulatedData,
    generate_transactions,
    simulate,
)

# Big enough for every scenario and a stable fraud share, small enough to take ~0.1 s.
MODERATE = {"n_customers": 1_000, "n_terminals": 2_000, "days": 60}
SMALL = {"n_customers": 50, "n_terminals": 100, "days": 10}


def _during_events(tx: pd.DataFrame, events: pd.DataFrame, key: str, *, days: int) -> pd.DataFrame:
    """Transactions of ``key`` members on days ``[start_day, start_day + days)`` of one of their events."""
    joined = tx.merge(events, on=key)
    since = joined["TX_TIME_DAYS"] - joined["start_day"]
    return joined[(since >= 0) & (since < days)].drop_duplicates("TRANSACTION_ID")


@pytest.fixture(scope="module")
def simulation() -> SimulatedData:
    return simulate(**MODERATE, seed=7)


def test_same_seed_gives_identical_frame_and_other_seed_differs() -> None:
    first = generate_transactions(**SMALL, seed=1)
    pd.testing.assert_frame_equal(first, generate_transactions(**SMALL, seed=1))
    assert not first.equals(generate_transactions(**SMALL, seed=2))


def test_handbook_columns_dtypes_and_order(simulation: SimulatedData) -> None:
    tx = simulation.transactions
    assert tuple(tx.columns) == COLUMNS
    assert tx["TX_DATETIME"].dtype == "datetime64[ns]"
    assert tx["TX_AMOUNT"].dtype == "float64"
    ints = [c for c in COLUMNS if c not in ("TX_DATETIME", "TX_AMOUNT")]
    assert (tx[ints].dtypes == "int64").all()
    assert tx["TRANSACTION_ID"].tolist() == list(range(len(tx)))
    assert tx["TX_DATETIME"].is_monotonic_increasing
    assert isinstance(tx.index, pd.RangeIndex)


def test_time_columns_agree_with_start_date(simulation: SimulatedData) -> None:
    tx = simulation.transactions
    since_start = (tx["TX_DATETIME"] - pd.Timestamp("2018-04-01")).dt.total_seconds()
    assert (since_start == tx["TX_TIME_SECONDS"]).all()
    assert (tx["TX_TIME_SECONDS"] // 86_400 == tx["TX_TIME_DAYS"]).all()
    assert tx["TX_TIME_DAYS"].between(0, MODERATE["days"] - 1).all()
    other = generate_transactions(**SMALL, seed=1, start_date="2020-02-28")
    assert other["TX_DATETIME"].min() >= pd.Timestamp("2020-02-28")


def test_amounts_are_positive_cents(simulation: SimulatedData) -> None:
    amount = simulation.transactions["TX_AMOUNT"]
    assert (amount > 0).all()
    assert np.allclose(amount, amount.round(2))


def test_customers_only_use_terminals_within_radius(simulation: SimulatedData) -> None:
    tx = simulation.transactions
    home = simulation.customers.set_index("CUSTOMER_ID").loc[tx["CUSTOMER_ID"], ["x", "y"]].to_numpy()
    where = simulation.terminals.set_index("TERMINAL_ID").loc[tx["TERMINAL_ID"], ["x", "y"]].to_numpy()
    assert np.hypot(*(home - where).T).max() < 5.0


def test_fraud_share_is_near_the_handbooks(simulation: SimulatedData) -> None:
    # The handbook's data has 0.84% fraud; 60 days leave the 28-day scenario ramping up.
    assert 0.003 < simulation.transactions["TX_FRAUD"].mean() < 0.015


def test_every_scenario_occurs_and_labels_agree(simulation: SimulatedData) -> None:
    tx = simulation.transactions
    assert set(tx["TX_FRAUD_SCENARIO"]) == {0, 1, 2, 3}
    assert ((tx["TX_FRAUD_SCENARIO"] > 0) == (tx["TX_FRAUD"] == 1)).all()


def test_amount_above_220_is_always_fraud(simulation: SimulatedData) -> None:
    tx = simulation.transactions
    large = tx["TX_AMOUNT"] > 220
    assert large.any()
    assert (tx.loc[large, "TX_FRAUD"] == 1).all()
    assert (tx.loc[tx["TX_FRAUD_SCENARIO"] == 1, "TX_AMOUNT"] > 220).all()


def test_compromised_terminal_is_all_fraud_for_28_days(simulation: SimulatedData) -> None:
    tx = simulation.transactions
    events = simulation.compromised_terminals
    assert len(events) > 0
    covered = _during_events(tx, events, "TERMINAL_ID", days=28)
    assert len(covered) > 0
    assert (covered["TX_FRAUD"] == 1).all()
    # And scenario 2 happens nowhere else.
    scenario_2 = set(tx.loc[tx["TX_FRAUD_SCENARIO"] == 2, "TRANSACTION_ID"])
    assert scenario_2 <= set(covered["TRANSACTION_ID"])


def test_compromised_customer_frauds_are_a_third_with_amounts_times_five(simulation: SimulatedData) -> None:
    tx = simulation.transactions
    events = simulation.compromised_customers
    exposed = _during_events(tx, events, "CUSTOMER_ID", days=14)
    share = (exposed["TX_FRAUD_SCENARIO"] == 3).mean()
    assert 0.25 < share < 0.42
    scenario_3 = tx[tx["TX_FRAUD_SCENARIO"] == 3]
    assert set(scenario_3["TRANSACTION_ID"]) <= set(exposed["TRANSACTION_ID"])
    mean_amount = simulation.customers.set_index("CUSTOMER_ID")["mean_amount"]
    ratio = scenario_3["TX_AMOUNT"].mean() / mean_amount.loc[scenario_3["CUSTOMER_ID"]].mean()
    assert 3.5 < ratio < 6.5


def test_features_on_generated_data_flag_compromised_terminals(simulation: SimulatedData) -> None:
    features = compute_features(simulation.transactions.rename(columns=HANDBOOK_TO_CANONICAL))
    by_scenario = features.groupby("TX_FRAUD_SCENARIO")
    risk = by_scenario["TERMINAL_ID_RISK_30DAY_WINDOW"].mean()
    assert risk[2] > 10 * risk[0]
    card_mean = by_scenario["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"].mean()
    assert card_mean[3] > 2 * card_mean[0]
    assert (features["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] >= 1).all()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n_customers", 0),
        ("n_terminals", -3),
        ("days", 2.5),
        ("days", True),
        ("seed", -1),
        ("radius", 0.0),
        ("radius", float("nan")),
        ("start_date", "not a date"),
        ("start_date", "2018-04-01 12:00"),
    ],
)
def test_invalid_arguments_are_rejected(name: str, value: object) -> None:
    arguments: dict[str, object] = {**SMALL, "seed": 0, name: value}
    with pytest.raises(ValueError, match=name):
        generate_transactions(**arguments)  # type: ignore[arg-type]


def test_customers_out_of_reach_make_no_transactions() -> None:
    tx = generate_transactions(n_customers=20, n_terminals=1, days=5, seed=0, radius=1e-6)
    assert tx.empty
    assert tuple(tx.columns) == COLUMNS


def test_config_changes_the_fraud_rules() -> None:
    no_fraud = GeneratorConfig(
        fraud_amount_threshold=1e9, terminal_compromise_rate=0.0, customer_compromise_rate=0.0
    )
    tx = generate_transactions(**SMALL, seed=0, config=no_fraud)
    assert len(tx) > 0
    assert tx["TX_FRAUD"].sum() == 0
