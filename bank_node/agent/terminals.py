"""Consortium terminal features in a run: what the agent pools before training, and keeps.

A run whose params ask for ``consortium_features`` starts with the terminal statistics
(:func:`~bank_node.federated.terminal_stats.nightly_pooling`) over the days its window's
features reach. The node's pooled history (:mod:`bank_node.terminal_history`) already holds
most of them, so only the days some bank lacks are summed: one new day a night. The training
and validation rows then get the consortium's terminal features before any model round.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

import pandas as pd

from bank_node.agent.resources import RunInfo
from bank_node.agent.training import FeatureSettings
from bank_node.federated.rounds import Algorithm, BankRunner
from bank_node.federated.terminal_stats import (
    ConsortiumHistory,
    DayCountPrivacy,
    DayEvents,
    NightlyPooling,
    TerminalStatsConfig,
    events_by_day,
    nightly_pooling,
)
from bank_node.terminal_history import PooledHistory, PoolingScope, pooling_scope, terminal_key
from schemas.privacy import run_privacy
from schemas.run import RunWindow

__all__ = ["TerminalPlan", "plan_terminals", "pool_terminals"]

log = logging.getLogger(__name__)

Transactions = Callable[[date, date], pd.DataFrame]
"""The bank's labelled transactions from a day to before another."""


@dataclass(frozen=True)
class TerminalPlan:
    """What this bank brings to a run's terminal statistics, checked before the first round."""

    settings: FeatureSettings
    key: bytes
    key_id: str
    scope: PoolingScope
    events: dict[int, DayEvents]
    privacy: DayCountPrivacy | None = None


def plan_terminals(run: RunInfo, window: RunWindow | None, *, settings: FeatureSettings, secret_context: bytes,
                   key_id: str, transactions: Transactions | None, history: PooledHistory | None) -> TerminalPlan:
    """This bank's events of the days the run's features reach, and which of them it lacks.

    Raises
    ------
    ValueError
        The run carries no window, or this node keeps no transactions or pooled history.
    """
    if window is None:
        raise ValueError("a run with consortium features must carry a window (every bank pools the same days)")
    if transactions is None or history is None:
        raise ValueError("this agent keeps no pooled terminal history (it was started without a store for it)")
    scope = pooling_scope(window.train_start, window.labels_known_until, window.as_of)
    key = terminal_key(secret_context)
    first = date(1970, 1, 1) + timedelta(days=scope.first)
    frame = transactions(first, date(1970, 1, 1) + timedelta(days=scope.days[-1] + 1))
    events = events_by_day(frame, key, scope.days)
    setting = run_privacy(run.model, run.params)
    privacy = None
    if setting is not None and setting.terminal_epsilon is not None:
        privacy = DayCountPrivacy(setting.terminal_epsilon, setting.delta)
    log.info("run %s: consortium terminal features over %d days from %s (%s)", run.run_id, len(scope.days), first,
             "exact events" if privacy is None else f"noisy day counts, epsilon {privacy.epsilon:g} a day")
    return TerminalPlan(settings=settings, key=key, key_id=settings.history_id(key_id), scope=scope, events=events,
                        privacy=privacy)


def pool_terminals(runner: BankRunner, run: RunInfo, plan: TerminalPlan,
                   history: PooledHistory) -> tuple[ConsortiumHistory, int]:
    """Pool the days some bank lacks, keep them, and return the history of the run's whole
    period and how many days were pooled now."""
    participants = sorted(run.participants)

    def pooling_of_this_epoch() -> Algorithm[NightlyPooling]:
        # Stale against the banks of this epoch: after a restart without a bank, a day held with
        # its events is pooled again without them, so the history never mixes the two.
        stale = history.stale_days(plan.key_id, plan.scope.days, runner.epoch_participants,
                                   labels_until=plan.scope.labels_until)
        log.info("run %s: %d of %d days of terminal statistics to pool", run.run_id, len(stale), len(plan.scope.days))
        return nightly_pooling(plan.events, stale=stale, party_index=run.party_index(runner.bank),
                               n_participants=len(participants), secret=plan.key,
                               config=TerminalStatsConfig(threshold=plan.settings.threshold), privacy=plan.privacy)

    pooling = runner.run(pooling_of_this_epoch)
    banks = [participants[i] for i in sorted(pooling.contributors)]
    history.save(plan.key_id, pooling.history, banks=banks, run_id=run.run_id, labels_until=plan.scope.labels_until,
                 keep_from=plan.scope.first)
    return history.load(plan.key_id, plan.scope.days, threshold=plan.settings.threshold), len(pooling.history.days)
