"""The handbook's protocol: the same train/test sets as the handbook, and CP@k as it defines it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bank_node.data import load_transactions
from bank_node.evaluation import Windows, card_precision_at_k, evaluate, in_test_set, in_train_period


@pytest.mark.slow
def test_split_reproduces_the_handbook_counts(handbook_dir: Path) -> None:
    frame = load_transactions(handbook_dir / "transactions.parquet", require_label=True).frame
    windows = Windows(train_start=pd.Timestamp("2018-07-25"))
    train, test = in_train_period(frame, windows), in_test_set(frame, windows)
    assert (int(train.sum()), int(frame["label"][train].sum())) == (67_240, 598)
    assert (int(test.sum()), int(frame["label"][test].sum())) == (58_264, 385)


def test_known_compromised_cards_leave_the_test_set_after_the_delay() -> None:
    start = pd.Timestamp("2020-01-01")
    windows = Windows(train_start=start, train_days=2, delay_days=2, test_days=3)
    rows = [  # (day, card, label)
        (0, 1, 1),  # card 1 defrauded in training: known throughout the test
        (4, 1, 0),
        (2, 2, 1),  # card 2 defrauded on day 2 (delay): known from day 2 + 2 + 1 = 5 on
        (4, 2, 1),
        (5, 2, 0),
        (4, 3, 0),  # card 3 never defrauded
        (6, 3, 0),
    ]
    frame = pd.DataFrame(
        {
            "timestamp": [start + pd.Timedelta(days=d, hours=12) for d, _, _ in rows],
            "customer_id": [c for _, c, _ in rows],
            "label": [y for _, _, y in rows],
        }
    )
    kept = in_test_set(frame, windows)
    assert kept.tolist() == [False, False, False, True, False, True, True]


def test_card_precision_counts_cards_once_and_removes_detected_ones() -> None:
    # Day 0: cards 1 (fraud) and 2; day 1: card 1 again (already detected) and card 3 (fraud).
    days = [0, 0, 0, 1, 1]
    cards = [1, 1, 2, 1, 3]
    labels = [1, 0, 0, 1, 1]
    scores = [0.9, 0.1, 0.5, 0.99, 0.2]
    # k = 1: day 0 top card is 1 (hit); day 1 card 1 is excluded, so card 3 is top (hit).
    assert card_precision_at_k(days, cards, labels, scores, 1) == 1.0
    # k = 2: day 0 -> {1, 2}: 1 hit of 2; day 1 -> {3}: 1 hit of 2.
    assert card_precision_at_k(days, cards, labels, scores, 2) == 0.5


def test_metrics_of_a_perfect_and_a_random_scorer() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    start = pd.Timestamp("2020-01-01")
    test = pd.DataFrame(
        {
            "timestamp": start + pd.to_timedelta(rng.integers(0, 7 * 86400, n), unit="s"),
            "customer_id": rng.integers(0, 300, n),
            "label": (rng.random(n) < 0.05).astype(int),
        }
    )
    perfect = evaluate(test, test["label"].to_numpy(float), origin=start)
    assert perfect.auc == 1.0 and perfect.ap == 1.0
    noise = evaluate(test, rng.random(n), origin=start)
    assert 0.4 < noise.auc < 0.6 and noise.ap < 0.15
