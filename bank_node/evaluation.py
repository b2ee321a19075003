"""The handbook's evaluation protocol: train/delay/test windows, known-compromised cards, metrics.

Metrics are AUC ROC, average precision, and card precision at k (CP@k): per test day, the cards
ranked by their highest score, the share of the top k that are compromised, averaged over the
days; a card found in one day's top k is left out on later days.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score


@dataclass(frozen=True)
class Windows:
    """Train, delay and test periods, in whole days.

    Attributes
    ----------
    train_start
        First training day (midnight).
    train_days, delay_days, test_days
        Lengths of the three periods; the test period starts after train and delay.
    """

    train_start: pd.Timestamp
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7

    def __post_init__(self) -> None:
        for name in ("train_days", "test_days"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.delay_days < 0:
            raise ValueError("delay_days must not be negative")

    @property
    def train_end(self) -> pd.Timestamp:
        """First instant after the training period."""
        return self.train_start + pd.Timedelta(days=self.train_days)

    @property
    def test_start(self) -> pd.Timestamp:
        """First instant of the test period."""
        return self.train_end + pd.Timedelta(days=self.delay_days)

    @property
    def test_end(self) -> pd.Timestamp:
        """First instant after the test period."""
        return self.test_start + pd.Timedelta(days=self.test_days)

    @property
    def last_day(self) -> pd.Timestamp:
        """Midnight of the test period's last day: train to test are ``[train_start, last_day]``."""
        return self.test_end - pd.Timedelta(days=1)


def day_index(timestamps: pd.Series, origin: pd.Timestamp) -> npt.NDArray[np.int64]:
    """Whole days since ``origin`` (midnight), for each timestamp."""
    days = (timestamps - origin) // pd.Timedelta(days=1)
    return np.asarray(days.to_numpy(), dtype=np.int64)


def in_train_period(frame: pd.DataFrame, windows: Windows) -> npt.NDArray[np.bool_]:
    """Rows in the training period."""
    ts = frame["timestamp"]
    return ((ts >= windows.train_start) & (ts < windows.train_end)).to_numpy()


def in_test_set(frame: pd.DataFrame, windows: Windows) -> npt.NDArray[np.bool_]:
    """Rows in the test period whose card was not yet known to be compromised.

    A card is known on test day D if it had a fraud in the training period or on any day before
    D - delay (the labels of the last ``delay`` days have not arrived yet).
    """
    ts = frame["timestamp"]
    days = day_index(ts, windows.train_start)
    fraud = frame["label"].to_numpy() == 1
    customers = frame["customer_id"].to_numpy()
    in_test = ((ts >= windows.test_start) & (ts < windows.test_end)).to_numpy()
    first_test_day = windows.train_days + windows.delay_days
    # First day on which each card had a fraud, from the training period on.
    observed = fraud & (days >= 0)
    first_fraud = pd.Series(days[observed]).groupby(customers[observed]).min()
    card_first = pd.Series(customers).map(first_fraud).to_numpy(dtype=np.float64, na_value=np.inf)
    # Known on day D if its first fraud lies in training, or on a day <= D - delay - 1.
    known_by = np.where(card_first < windows.train_days, -np.inf, card_first + windows.delay_days + 1)
    known = known_by <= days
    return in_test & ~known & (days >= first_test_day)


def card_precision_at_k(
    days: npt.ArrayLike, customers: npt.ArrayLike, labels: npt.ArrayLike, scores: npt.ArrayLike, k: int
) -> float:
    """The handbook's CP@k: daily top-k cards by max score, share compromised, averaged over days.

    Cards detected (compromised and in the top k) on one day are excluded from later days.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    frame = pd.DataFrame({"day": days, "card": customers, "label": labels, "score": scores})
    detected: set[int] = set()
    precisions = []
    for _, today in frame.groupby("day", sort=True):
        today = today[~today["card"].isin(detected)]
        cards = today.groupby("card").agg(score=("score", "max"), label=("label", "max"))
        # Stable order on ties: by score descending, then card id, so runs are reproducible.
        cards = cards.reset_index().sort_values(["score", "card"], ascending=[False, True], kind="mergesort")
        top = cards.head(k)
        hits = top.loc[top["label"] == 1, "card"]
        precisions.append(len(hits) / k)
        detected.update(hits.tolist())
    return float(np.mean(precisions)) if precisions else float("nan")


@dataclass(frozen=True)
class Metrics:
    """AUC ROC, average precision and card precision at k on one test set."""

    auc: float
    ap: float
    cp100: float

    def as_dict(self) -> dict[str, float]:
        """Plain floats for JSON."""
        return {"auc": self.auc, "ap": self.ap, "cp100": self.cp100}


def evaluate(test: pd.DataFrame, scores: npt.ArrayLike, *, origin: pd.Timestamp, k: int = 100) -> Metrics:
    """Score a test set (canonical columns with ``label``) given predicted fraud probabilities."""
    y = test["label"].to_numpy()
    s = np.asarray(scores, dtype=np.float64)
    both_classes = 0 < y.sum() < len(y)
    auc = float(roc_auc_score(y, s)) if both_classes else float("nan")
    ap = float(average_precision_score(y, s)) if both_classes else float("nan")
    cp = card_precision_at_k(day_index(test["timestamp"], origin), test["customer_id"].to_numpy(), y, s, k)
    return Metrics(auc=auc, ap=ap, cp100=cp)
