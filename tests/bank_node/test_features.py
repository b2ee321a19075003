"""Tests of bank_node.features: window boundaries, errors, and the handbook's reference file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bank_node.features import (
    FEATURE_COLUMNS,
    MODEL_INPUTS,
    model_matrix,
    FeatureConfig,
    compute_features,
    customer_window_features,
    TerminalWindows,
    terminal_window_features,
)
from bank_node.generator import HANDBOOK_TO_CANONICAL, generate_transactions

CUSTOMER_FEATURES = [c for c in FEATURE_COLUMNS if c.startswith("CUSTOMER_ID_")]
DAY = pd.Timedelta(days=1)
SECOND = pd.Timedelta(seconds=1)
T0 = pd.Timestamp("2018-04-20 10:00:00")  # a Friday


def _frame(rows: list[tuple[int, pd.Timestamp, int, int, float, int]]) -> pd.DataFrame:
    """Transactions from (transaction_id, timestamp, customer_id, terminal_id, amount, label) rows."""
    columns = ["transaction_id", "timestamp", "customer_id", "terminal_id", "amount", "label"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({"timestamp": "datetime64[ns]"})


def _row(features: pd.DataFrame, transaction_id: int) -> pd.Series:
    return features.set_index("transaction_id").loc[transaction_id]


# --------------------------------------------------------------------------- customer windows


def test_customer_window_excludes_a_transaction_exactly_one_window_back() -> None:
    tx = _frame([(1, T0, 7, 100, 10.0, 0), (2, T0 + DAY, 7, 101, 30.0, 0)])
    second = _row(compute_features(tx), 2)
    assert second["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1
    assert second["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 30.0
    assert second["CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 2
    assert second["CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"] == 20.0


def test_customer_window_includes_a_transaction_just_inside_the_window() -> None:
    tx = _frame([(1, T0, 7, 100, 10.0, 0), (2, T0 + DAY - SECOND, 7, 101, 30.0, 0)])
    second = _row(compute_features(tx), 2)
    assert second["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2
    assert second["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 20.0


def test_customer_window_counts_the_transaction_itself_and_only_its_own_card() -> None:
    tx = _frame([(1, T0, 7, 100, 10.0, 0), (2, T0 + SECOND, 8, 100, 50.0, 0)])
    out = compute_features(tx)
    assert out["CUSTOMER_ID_NB_TX_30DAY_WINDOW"].tolist() == [1, 1]
    assert out["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"].tolist() == [10.0, 50.0]


def test_same_instant_transactions_of_a_card_see_each_other_in_id_order() -> None:
    # Given in reverse id order: the result must not depend on input order.
    tx = _frame([(5, T0, 7, 100, 30.0, 0), (3, T0, 7, 101, 10.0, 0)])
    out = compute_features(tx)
    assert out["transaction_id"].tolist() == [3, 5]
    assert out["CUSTOMER_ID_NB_TX_1DAY_WINDOW"].tolist() == [1, 2]
    assert out["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"].tolist() == [10.0, 20.0]


# --------------------------------------------------------------------------- terminal windows


@pytest.mark.parametrize(
    ("since_fraud", "nb_1d", "nb_7d"),
    [
        (7 * DAY - SECOND, 0, 0),  # the fraud is still inside the 7-day label delay
        (7 * DAY, 1, 1),  # window (t - 8d, t - 7d] closed on the right: included
        (8 * DAY - SECOND, 1, 1),
        (8 * DAY, 0, 1),  # open on the left: 1-day window no longer holds it
        (14 * DAY, 0, 0),  # 7-day window (t - 14d, t - 7d] excludes it too
    ],
)
def test_terminal_window_is_delayed_and_half_open(since_fraud: pd.Timedelta, nb_1d: int, nb_7d: int) -> None:
    tx = _frame([(1, T0, 7, 100, 10.0, 1), (2, T0 + since_fraud, 8, 100, 20.0, 0)])
    query = _row(compute_features(tx), 2)
    assert query["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == nb_1d
    assert query["TERMINAL_ID_RISK_1DAY_WINDOW"] == nb_1d  # the only transaction is a fraud
    assert query["TERMINAL_ID_NB_TX_7DAY_WINDOW"] == nb_7d
    assert query["TERMINAL_ID_RISK_7DAY_WINDOW"] == nb_7d


def test_empty_terminal_window_has_zero_risk() -> None:
    tx = _frame([(1, T0, 7, 100, 10.0, 1), (2, T0 + SECOND, 8, 200, 20.0, 1)])
    out = compute_features(tx)
    terminal = [c for c in FEATURE_COLUMNS if c.startswith("TERMINAL_ID_")]
    assert (out[terminal].to_numpy() == 0).all()
    assert not out[terminal].isna().any().any()


def test_terminal_risk_is_fraud_share_of_the_window() -> None:
    rows = [(i, T0 + i * SECOND, 10 + i, 100, 10.0, int(i < 2)) for i in range(8)]
    rows.append((99, T0 + 7 * DAY + 10 * SECOND, 1, 100, 10.0, 0))
    query = _row(compute_features(_frame(rows)), 99)
    assert query["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 8
    assert query["TERMINAL_ID_RISK_1DAY_WINDOW"] == pytest.approx(2 / 8)


def test_terminal_features_accept_aggregated_and_foreign_history() -> None:
    """Per-day aggregates stamped at a time give the same windows as the transactions they sum."""
    history_time = np.array([T0.value, T0.value, (T0 + 2 * DAY).value], dtype=np.int64)
    query_time = np.full(3, (T0 + 9 * DAY).value, dtype=np.int64)
    single = terminal_window_features(
        np.array([100, 100, 100]), query_time, np.array([100, 100, 100]), history_time, np.array([1, 0, 1])
    )
    aggregated = terminal_window_features(
        np.array([100, 100, 555]),  # terminal 555 has no history at all
        query_time,
        np.array([100, 100]),
        history_time[[0, 2]],
        history_frauds=np.array([1, 1]),
        history_counts=np.array([2, 1]),
    )
    for name, values in single.items():
        assert values[0] == aggregated[name][0]
        assert aggregated[name][2] == 0
    assert single["TERMINAL_ID_NB_TX_7DAY_WINDOW"][0] == 3
    assert single["TERMINAL_ID_RISK_7DAY_WINDOW"][0] == pytest.approx(2 / 3)


def test_a_single_query_gets_the_windows_many_queries_get() -> None:
    """The scoring service asks the pooled history about one transaction at a time, a path of
    its own (scalar searches): it must count what the many-query path counts, on exact window
    boundaries, terminals absent from the history and times before or after all of it."""
    rng = np.random.default_rng(8)
    terminal = rng.integers(0, 40, 3000) * 7
    time = T0.value + rng.integers(0, 60, 3000) * DAY.value // 4
    windows = TerminalWindows(terminal, time, rng.integers(0, 2, 3000), rng.integers(1, 4, 3000))
    query_terminal = np.concatenate([terminal[:200], [3, -5, 10**9, 0, 273, 10]])
    query_time = np.concatenate([time[:200] + 7 * DAY.value, [T0.value, T0.value, T0.value, 0, 2**62, T0.value + 40 * DAY.value]])
    many = windows.features(query_terminal, query_time)
    for i in range(len(query_terminal)):
        one = windows.features(query_terminal[i : i + 1], query_time[i : i + 1])
        for name, values in many.items():
            assert one[name][0] == values[i], (name, i)
    assert many["TERMINAL_ID_NB_TX_30DAY_WINDOW"][:200].min() > 0


# --------------------------------------------------------------------------- calendar flags


@pytest.mark.parametrize(
    ("timestamp", "weekend", "night"),
    [
        ("2018-04-06 23:59:59", 0, 0),  # Friday
        ("2018-04-07 00:00:00", 1, 1),  # Saturday midnight
        ("2018-04-08 06:59:59", 1, 1),  # Sunday, hour 6 is night
        ("2018-04-08 07:00:00", 1, 0),
        ("2018-04-09 00:00:00", 0, 1),  # Monday
        ("2018-04-09 12:00:00", 0, 0),
    ],
)
def test_weekend_and_night_flags(timestamp: str, weekend: int, night: int) -> None:
    out = compute_features(_frame([(1, pd.Timestamp(timestamp), 7, 100, 10.0, 0)]))
    assert out.loc[0, "TX_DURING_WEEKEND"] == weekend
    assert out.loc[0, "TX_DURING_NIGHT"] == night


# --------------------------------------------------------------------------- frame contract


def test_date_range_keeps_whole_end_day_and_uses_earlier_history() -> None:
    tx = _frame(
        [
            (1, pd.Timestamp("2018-04-09 23:00:00"), 7, 100, 10.0, 0),  # history only
            (2, pd.Timestamp("2018-04-10 00:00:00"), 7, 100, 20.0, 0),
            (3, pd.Timestamp("2018-04-11 23:59:59"), 7, 100, 30.0, 0),
            (4, pd.Timestamp("2018-04-12 00:00:00"), 7, 100, 40.0, 0),  # after the end day
        ]
    )
    tx["branch"] = ["a", "b", "c", "d"]
    out = compute_features(tx, start="2018-04-10", end="2018-04-11")
    assert out["transaction_id"].tolist() == [2, 3]
    assert out["branch"].tolist() == ["b", "c"]
    assert out.loc[0, "CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2
    assert list(out.columns) == [*tx.columns, *FEATURE_COLUMNS]
    assert isinstance(out.index, pd.RangeIndex)


def test_date_range_equals_the_same_days_of_a_full_computation() -> None:
    """Trimming history to the lookback (30 + 7 days) before ``start`` changes no feature."""
    raw = generate_transactions(n_customers=200, n_terminals=300, days=60, seed=5)
    tx = raw.rename(columns=HANDBOOK_TO_CANONICAL)
    full = compute_features(tx)
    days = full["timestamp"].dt.normalize()
    expected = full[days.between("2018-05-15", "2018-05-20")].reset_index(drop=True)
    pd.testing.assert_frame_equal(compute_features(tx, start="2018-05-15", end="2018-05-20"), expected)


def test_empty_input_gives_empty_output_with_feature_columns() -> None:
    out = compute_features(_frame([(1, T0, 7, 100, 10.0, 0)]).iloc[:0])
    assert out.empty
    assert set(FEATURE_COLUMNS) <= set(out.columns)


def test_output_is_ordered_by_timestamp_then_transaction_id() -> None:
    tx = _frame(
        [
            (9, T0 + DAY, 1, 100, 1.0, 0),
            (4, T0, 2, 100, 1.0, 0),
            (2, T0, 3, 101, 1.0, 0),
            (7, T0 - DAY, 4, 102, 1.0, 0),
        ]
    )
    assert compute_features(tx)["transaction_id"].tolist() == [7, 2, 4, 9]


def test_exports_fourteen_features_and_fifteen_model_inputs() -> None:
    assert len(FEATURE_COLUMNS) == 14
    assert MODEL_INPUTS == ("TX_AMOUNT", *FEATURE_COLUMNS)  # the handbook's names, in every file
    out = compute_features(_frame([(1, T0, 7, 100, 10.0, 0)]))
    matrix = model_matrix(out)
    assert matrix.shape == (1, 15) and matrix[0, 0] == 10.0
    np.testing.assert_array_equal(matrix[:, 1:], out[list(FEATURE_COLUMNS)].to_numpy(dtype=float))
    assert out[list(FEATURE_COLUMNS[:2])].dtypes.eq("int64").all()
    assert out[list(FEATURE_COLUMNS[2:])].dtypes.eq("float64").all()


@pytest.mark.parametrize("column", ["transaction_id", "timestamp", "customer_id", "terminal_id", "amount"])
def test_missing_required_column_is_named(column: str) -> None:
    tx = _frame([(1, T0, 7, 100, 10.0, 0)]).drop(columns=column)
    with pytest.raises(ValueError, match=f"missing required column.*'{column}'"):
        compute_features(tx)


def test_missing_label_is_reported_as_needed_for_terminal_risk() -> None:
    tx = _frame([(1, T0, 7, 100, 10.0, 0)]).drop(columns="label")
    with pytest.raises(ValueError, match="'label'.*terminal risk"):
        compute_features(tx)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda tx: tx.assign(timestamp=tx["timestamp"].dt.tz_localize("UTC")), "naive datetime64"),
        (lambda tx: tx.assign(timestamp=tx["timestamp"].astype(str)), "naive datetime64"),
        (lambda tx: tx.assign(label=[0, 2]), "only 0 and 1"),
        (lambda tx: tx.assign(amount=[1.0, np.nan]), "'amount' has missing values"),
        (lambda tx: tx.assign(transaction_id=[1, 1]), "duplicate"),
        (lambda tx: tx.assign(customer_id=[1.5, 2.0]), "'customer_id' must be integer"),
    ],
)
def test_invalid_values_are_rejected(change: Callable[[pd.DataFrame], pd.DataFrame], message: str) -> None:
    tx = _frame([(1, T0, 7, 100, 10.0, 0), (2, T0 + SECOND, 7, 100, 10.0, 0)])
    with pytest.raises(ValueError, match=message):
        compute_features(change(tx))


def test_start_after_end_is_rejected() -> None:
    with pytest.raises(ValueError, match="after end"):
        compute_features(_frame([(1, T0, 7, 100, 10.0, 0)]), start="2018-05-02", end="2018-05-01")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"windows_days": ()},
        {"windows_days": (1, 0)},
        {"windows_days": (7, 7)},
        {"delay_days": -1},
        {"night_hour_max": 24},
    ],
)
def test_feature_config_rejects_bad_constants(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="FeatureConfig"):
        FeatureConfig(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- against brute force


def _brute_force(tx: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """Windows by pairwise comparison, straight from the definitions."""
    tx = tx.sort_values(["timestamp", "transaction_id"]).reset_index(drop=True)
    t = tx["timestamp"].to_numpy().astype(np.int64)
    before = t[None, :] - t[:, None]  # [i, j] = t_j - t_i
    earlier_row = np.arange(len(tx))[None, :] <= np.arange(len(tx))[:, None]
    same_card = tx["customer_id"].to_numpy()[None, :] == tx["customer_id"].to_numpy()[:, None]
    same_terminal = tx["terminal_id"].to_numpy()[None, :] == tx["terminal_id"].to_numpy()[:, None]
    amount = tx["amount"].to_numpy()
    label = tx["label"].to_numpy()
    day = DAY.value
    out = {}
    for w in config.windows_days:
        card = same_card & earlier_row & (before > -w * day) & (before <= 0)
        out[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] = card.sum(axis=1)
        out[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"] = (card * amount).sum(axis=1) / card.sum(axis=1)
        delay = config.delay_days * day
        term = same_terminal & (before > -delay - w * day) & (before <= -delay)
        out[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = term.sum(axis=1)
        frauds = (term * label).sum(axis=1)
        n_tx = term.sum(axis=1)
        out[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = np.where(n_tx > 0, frauds / np.maximum(n_tx, 1), 0)
    return pd.DataFrame(out).assign(transaction_id=tx["transaction_id"])


def test_matches_brute_force_on_random_transactions_with_many_exact_boundaries() -> None:
    rng = np.random.default_rng(3)
    n = 600
    # Whole hours over 60 days: many transactions land exactly on window edges and share instants.
    hours = rng.integers(0, 60 * 24, n)
    tx = pd.DataFrame(
        {
            "transaction_id": rng.permutation(n) + 1_000,
            "timestamp": pd.Timestamp("2018-04-01") + pd.to_timedelta(hours, unit="h"),
            "customer_id": rng.integers(0, 12, n),
            "terminal_id": rng.integers(0, 9, n),
            "amount": rng.uniform(1, 100, n).round(2),
            "label": (rng.random(n) < 0.2).astype(int),
        }
    ).astype({"timestamp": "datetime64[ns]"})
    config = FeatureConfig(windows_days=(1, 3, 7), delay_days=2)
    got = compute_features(tx, config=config)
    expected = _brute_force(tx, config)
    assert got["transaction_id"].tolist() == expected["transaction_id"].tolist()
    for name in expected.columns.drop("transaction_id"):
        np.testing.assert_allclose(got[name], expected[name], atol=1e-9, err_msg=name)


def test_window_functions_do_not_depend_on_row_order_apart_from_ties() -> None:
    rng = np.random.default_rng(4)
    time = np.unique(rng.integers(0, 20 * 86_400, 300)) * 10**9  # distinct instants: no ties
    n = len(time)
    card = rng.integers(0, 5, n)
    amount = rng.uniform(1, 50, n)
    shuffle = rng.permutation(n)
    in_order = customer_window_features(card, time, amount)
    shuffled = customer_window_features(card[shuffle], time[shuffle], amount[shuffle])
    for name, values in in_order.items():
        np.testing.assert_allclose(shuffled[name], values[shuffle], err_msg=name)


# --------------------------------------------------------------------------- handbook reference


@pytest.mark.slow
def test_reproduces_the_handbook_reference_features(handbook_dir: Path) -> None:
    """``handbook_dir`` (tests/conftest.py) is ``../shared/data/fraud-detection-handbook-simulated``."""
    reference_path = handbook_dir / "features_reference_2018-07-25_2018-08-14.parquet"
    if not reference_path.is_file():
        pytest.skip(f"handbook reference features not found at {reference_path}")
    raw = pd.read_parquet(handbook_dir / "transactions.parquet")
    reference = pd.read_parquet(reference_path).set_index("TRANSACTION_ID")

    got = compute_features(raw.rename(columns=HANDBOOK_TO_CANONICAL), start="2018-07-25", end="2018-08-14")
    got = got.set_index("transaction_id")
    assert len(got) == len(reference) == 201_295
    assert set(got.index) == set(reference.index)
    got = got.loc[reference.index]

    # Rows whose card has another transaction in the same second: the handbook's order
    # of such ties is not reproducible from the data, so their card windows may differ.
    tied = raw.duplicated(["CUSTOMER_ID", "TX_DATETIME"], keep=False)
    tied_ids = set(raw.loc[tied, "TRANSACTION_ID"])
    report = []
    differing: set[int] = set()
    for name in FEATURE_COLUMNS:
        diff = np.abs(got[name].to_numpy(dtype=float) - reference[name].to_numpy(dtype=float))
        bad = set(reference.index[diff > 1e-6])
        report.append(f"{name}: max |diff| {diff.max():.3g}, {len(bad)} rows > 1e-6")
        if name in CUSTOMER_FEATURES:
            untied = sorted(bad - tied_ids)
            assert not untied, f"{name} differs on rows without a same-second tie: {untied[:10]}"
            differing |= bad
        else:
            assert not bad, f"{name} differs on {len(bad)} rows, e.g. {sorted(bad)[:10]}"
    print("\n".join(report))
    print(f"rows compared: {len(reference)}; rows differing (same-second card ties): {sorted(differing)}")
    assert differing == {1240489, 1240490}
