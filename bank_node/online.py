"""Features of transactions as they are scored, equal to the batch features over the same history.

A transaction being scored gets the handbook's features from what the node's store holds: its
card's transactions of the last 30 days, and its terminal's transactions of the windows
``(t - 37 d, t - 7 d]``, with the labels known so far (unknown counts as genuine, as in training).
The rows are computed by :func:`bank_node.features.compute_features` itself, over just the rows
their windows reach, so online and batch features cannot drift apart: the scoring service's
features of a transaction equal ``fedfraud features`` over the store's history at that moment.

Where the model was trained on consortium terminal features, the terminal columns of terminals
above the threshold are replaced from the pooled consortium history, as in training
(:func:`bank_node.federated.terminal_stats.with_consortium_terminal_features`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

from bank_node.features import (
    CUSTOMER_ID,
    LABEL,
    TERMINAL_ID,
    TIMESTAMP,
    TRANSACTION_ID,
    FeatureConfig,
    compute_features,
)
from bank_node.federated.terminal_stats import ConsortiumHistory, with_consortium_terminal_features
from bank_node.store import TransactionStore

__all__ = ["ConsortiumTerminals", "OnlineFeatures"]


@dataclass(frozen=True)
class ConsortiumTerminals:
    """The pooled consortium history and the key its terminal tags are made with."""

    history: ConsortiumHistory
    key: bytes


class OnlineFeatures:
    """The features of new transactions from the node's store.

    Parameters
    ----------
    store
        The node's transaction store.
    config
        Feature constants (the training's).
    """

    def __init__(self, store: TransactionStore, config: FeatureConfig = FeatureConfig()) -> None:
        self.store = store
        self.config = config

    def compute(self, new: pd.DataFrame, *, consortium: ConsortiumTerminals | None = None) -> pd.DataFrame:
        """The featured rows of ``new`` (canonical columns, not stored yet), in the order given.

        Raises
        ------
        ValueError
            ``new`` repeats a transaction id, or the consortium history lacks days the rows'
            windows reach.
        """
        if new[TRANSACTION_ID].duplicated().any():
            raise ValueError("a transaction id appears twice among the transactions to score")
        stamps = pd.to_datetime(new[TIMESTAMP])
        first, last = stamps.min().to_pydatetime(), stamps.max().to_pydatetime()
        card_days = max(self.config.windows_days)
        history = self.store.related(
            new[CUSTOMER_ID], first - timedelta(days=card_days + 1),
            new[TERMINAL_ID], first - timedelta(days=self.config.lookback_days + 1),
            until=last + timedelta(microseconds=1),
        )
        history = history[~history[TRANSACTION_ID].isin(new[TRANSACTION_ID])]
        history[LABEL] = history[LABEL].fillna(0).astype(np.int64)
        scored = new.copy()
        scored[LABEL] = 0  # not known yet; only an earlier row's label enters a window, never its own
        frame = pd.concat([history, scored[history.columns]], ignore_index=True)
        day = pd.Timestamp(first).normalize()
        featured = compute_features(frame, start=day, end=pd.Timestamp(last).normalize(), config=self.config)
        featured = featured[featured[TRANSACTION_ID].isin(new[TRANSACTION_ID])]
        if consortium is not None:
            featured, _ = with_consortium_terminal_features(featured, consortium.history, secret=consortium.key,
                                                            config=self.config)
        order = pd.Index(featured[TRANSACTION_ID]).get_indexer(new[TRANSACTION_ID])
        return featured.iloc[order].reset_index(drop=True)

