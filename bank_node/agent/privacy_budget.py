"""A bank's differential-privacy budget across nightly runs, kept in its state directory.

The bank sets how much epsilon (at a delta) its transactions may spend over a rolling period,
e.g. 8 over 30 days. Before a run's first round the agent composes the private runs it took
part in during the period with the new one (Renyi DP accounting, :mod:`schemas.privacy`): if the
total would exceed the budget, or the run has no differential privacy at all, the agent does not
take part and tells the consortium why. A run is charged before its first contribution leaves the
bank, once (a run resumed after a restart is not charged again), and the charges are written to
``privacy-spent.json`` atomically, so a restart forgets nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bank_node.agent.state import StateDir
from schemas.privacy import RunPrivacy, compose_epsilon

__all__ = ["BudgetExceeded", "PrivacyBudget", "SPENT_FILE"]

log = logging.getLogger(__name__)

SPENT_FILE = "privacy-spent.json"


class BudgetExceeded(ValueError):
    """The run would spend more than the bank's budget, or has no differential privacy."""


@dataclass(frozen=True)
class PrivacyBudget:
    """Epsilon at ``delta`` that the bank's transactions may spend over ``period_days``."""

    epsilon: float
    delta: float = 1e-5
    period_days: int = 30

    def __post_init__(self) -> None:
        if not self.epsilon > 0 or not 0 < self.delta < 1 or self.period_days < 1:
            raise ValueError("a privacy budget needs epsilon > 0, 0 < delta < 1 and a period of at least 1 day")

    # ------------------------------------------------------------------ the spend file

    @staticmethod
    def charges(state: StateDir) -> list[dict[str, Any]]:
        """Every private run this bank took part in: run id, when, and its setting."""
        raw = state.read_secret(SPENT_FILE)
        if raw is None:
            return []
        document = json.loads(raw)
        if not isinstance(document, dict) or not isinstance(document.get("runs"), list):
            raise ValueError(f"{state.path(SPENT_FILE)} is not a privacy spend file")
        return list(document["runs"])

    def _recent(self, state: StateDir, now: datetime) -> list[dict[str, Any]]:
        since = now - timedelta(days=self.period_days)
        return [c for c in self.charges(state) if datetime.fromisoformat(c["at"]) > since]

    def spent(self, state: StateDir, now: datetime | None = None, *, extra: RunPrivacy | None = None,
              excluding: str | None = None) -> float:
        """Epsilon (at this budget's delta) of the period's private runs, with ``extra`` added."""
        now = now or datetime.now(UTC)
        runs = [m for c in self._recent(state, now) if c["run_id"] != excluding for m in RunPrivacy.mechanisms_of(c)]
        if extra is not None:
            runs.extend(extra.mechanisms())
        return compose_epsilon(runs, self.delta)

    # ------------------------------------------------------------------ before a run

    def check(self, state: StateDir, run_id: str, privacy: RunPrivacy | None, now: datetime | None = None) -> float:
        """The period's spend with this run; raise if it would exceed the budget.

        Raises
        ------
        BudgetExceeded
            The run has no differential privacy, or it would take the spend over the budget.
        """
        if privacy is None:
            raise BudgetExceeded(
                f"run {run_id} trains without differential privacy: this bank keeps a privacy budget "
                f"(epsilon {self.epsilon:g} over {self.period_days} days) and takes part only in private runs")
        if any(c["run_id"] == run_id for c in self.charges(state)):
            return self.spent(state, now)  # charged already (a run resumed): nothing more to spend
        before = self.spent(state, now)
        after = self.spent(state, now, extra=privacy)
        if after > self.epsilon:
            raise BudgetExceeded(
                f"run {run_id} (epsilon {privacy.total_epsilon:.3g}, delta {privacy.delta:g}) would take this bank's "
                f"privacy spend over the last {self.period_days} days from {before:.3g} to {after:.3g}, over its "
                f"budget of {self.epsilon:g} at delta {self.delta:g}")
        return after

    def charge(self, state: StateDir, run_id: str, privacy: RunPrivacy, now: datetime | None = None) -> None:
        """Record the run's spend (once per run), before its first contribution leaves."""
        charges = self.charges(state)
        if any(c["run_id"] == run_id for c in charges):
            return
        now = now or datetime.now(UTC)
        charges.append({"run_id": run_id, "at": now.isoformat(), **privacy.to_json()})
        state.write_secret(SPENT_FILE, json.dumps({"runs": charges}, indent=2, sort_keys=True).encode())
        log.info("run %s: privacy spent epsilon %.3g at delta %g (this bank's last %d days: %.3g of %g)", run_id,
                 privacy.total_epsilon, privacy.delta, self.period_days, self.spent(state, now), self.epsilon)

    def restart_charger(self, state: StateDir, run_id: str, privacy: RunPrivacy) -> Callable[[int], None]:
        """What to call when the run's algorithm starts over without a bank that dropped out (a
        :class:`~bank_node.federated.rounds.BankRunner`'s ``on_restart``): the sums are released
        again with fresh noise, so the run is charged again, in full (an upper bound: the epoch
        that failed released only part of them), or, past the budget, the bank leaves the run.

        Raises (from the returned callable)
        ------
        BudgetExceeded
            Starting over would exceed the budget.
        """
        restarts = 0

        def charge(epoch: int) -> None:
            nonlocal restarts
            restarts += 1
            charge_id = f"{run_id}#restart-{restarts}"
            try:
                self.check(state, charge_id, privacy)
            except BudgetExceeded as exc:
                raise BudgetExceeded(f"starting the run over (epoch {epoch}) would spend its privacy again: "
                                     f"{exc}") from None
            self.charge(state, charge_id, privacy)

        return charge
