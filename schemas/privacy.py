"""What a differentially private run spends: the one definition banks and consortium share.

A run with ``dp_epsilon`` in its params releases each secure sum of its training with Gaussian
noise that every bank adds to its own contribution (``bank_node/federated/privacy.py``). The noise
of one release is ``multiplier * sensitivity``, where the sensitivity is the most one transaction
can change that bank's contribution (its rows are clipped so that it is bounded), and the
multiplier is the smallest for which the run's releases, composed, are (epsilon, delta)-DP for
add/remove-one-transaction neighbours. Composition, within a run and across a bank's runs, is
Renyi DP accounting by the maintained ``dp-accounting`` library (its ``RdpAccountant``).

Each bank adds the whole noise itself: its guarantee holds against every other party together
(the other banks decrypt the sums and know their own noise), not only against the aggregator.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ACCOUNTING",
    "DEFAULT_DELTA",
    "RunPrivacy",
    "compose_epsilon",
    "has_gate",
    "noise_multiplier",
    "releases",
    "run_privacy",
]

ACCOUNTING: Final = ("Renyi DP of the Gaussian mechanism, composed by dp-accounting's RdpAccountant; "
                     "neighbouring datasets differ by one transaction (add or remove)")
DEFAULT_DELTA: Final = 1e-5
#: Params that set a run's privacy (both families), with the others' names untouched.
PRIVACY_PARAMS: Final = ("dp_epsilon", "dp_delta", "dp_clip", "gate_dp_epsilon")


def releases(model: str, params: Mapping[str, Any]) -> int:
    """How many noisy sums a run of ``model`` releases at most (its training's secure sums).

    XGBoost: the bins' counts, then one histogram sum per tree level. Logistic regression: the
    counts, the Hessian's bound, then one gradient sum per round (under DP the features are scaled
    by their declared ranges, so no mean or variance is summed).
    """
    if model == "xgboost":
        return 1 + int(params.get("n_trees", 100)) * int(params.get("max_depth", 3))
    if model == "logreg":
        return 2 + int(params.get("max_rounds", 30))
    raise ValueError(f"unknown model family {model!r}")


@functools.lru_cache(maxsize=256)
def noise_multiplier(epsilon: float, delta: float, n_releases: int) -> float:
    """The Gaussian noise multiplier (noise standard deviation over L2 sensitivity) that makes
    ``n_releases`` releases (epsilon, delta)-DP together."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    if not (epsilon > 0 and 0 < delta < 1 and n_releases >= 1):
        raise ValueError(f"epsilon {epsilon} > 0, 0 < delta {delta} < 1 and releases {n_releases} >= 1 are needed")
    multiplier = dp_accounting.calibrate_dp_mechanism(
        RdpAccountant,
        lambda z: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), n_releases),
        epsilon, delta,
    )
    return float(multiplier)


@dataclass(frozen=True)
class RunPrivacy:
    """A private run's setting and what follows from it.

    Attributes
    ----------
    epsilon, delta
        The run's (epsilon, delta) for its training's sums together (:attr:`total_epsilon`
        composes them with the terminal statistics' and the gate's releases).
    clip
        Bound on one transaction's gradient (its Hessian is bounded by a quarter of it).
    releases
        Noisy sums the run releases at most.
    multiplier
        Noise standard deviation over sensitivity, the same for every release.
    """

    epsilon: float
    delta: float
    clip: float
    releases: int
    multiplier: float
    terminal_epsilon: float | None = None
    terminal_multiplier: float | None = None
    gate_epsilon: float | None = None
    gate_multiplier: float | None = None

    def mechanisms(self) -> list[tuple[float, int]]:
        """What a transaction takes part in, as (noise multiplier, releases): the training's
        sums, one day's noisy terminal counts when the run pools them (a transaction is in one
        day; charging every run with it bounds days pooled again), and the promotion gate's noisy
        score histograms. A transaction of the validation days is not in the training's sums of
        the same run; charging both to every transaction is the bound that holds across nights,
        when today's validation days are tomorrow's training days."""
        out = [(self.multiplier, self.releases)]
        if self.terminal_multiplier is not None:
            out.append((self.terminal_multiplier, 1))
        if self.gate_multiplier is not None:
            out.append((self.gate_multiplier, 1))
        return out

    @property
    def total_epsilon(self) -> float:
        """The run's epsilon at its delta: training, terminal statistics and gate together."""
        if self.terminal_multiplier is None and self.gate_multiplier is None:
            return self.epsilon
        return compose_epsilon(self.mechanisms(), self.delta)

    def to_json(self) -> dict[str, Any]:
        """As the ledger and the agents' budget files record it."""
        out = {"epsilon": self.epsilon, "delta": self.delta, "clip": self.clip, "releases": self.releases,
               "noise_multiplier": self.multiplier, "accounting": ACCOUNTING}
        if self.terminal_multiplier is not None:
            out.update(terminal_epsilon=self.terminal_epsilon, terminal_noise_multiplier=self.terminal_multiplier)
        if self.gate_multiplier is not None:
            out.update(gate_epsilon=self.gate_epsilon, gate_noise_multiplier=self.gate_multiplier)
        if len(self.mechanisms()) > 1:
            out.update(total_epsilon=self.total_epsilon)
        return out

    @staticmethod
    def mechanisms_of(recorded: Mapping[str, Any]) -> list[tuple[float, int]]:
        """:meth:`mechanisms` of a setting as :meth:`to_json` recorded it."""
        out = [(float(recorded["noise_multiplier"]), int(recorded["releases"]))]
        for name in ("terminal_noise_multiplier", "gate_noise_multiplier"):
            if recorded.get(name) is not None:
                out.append((float(recorded[name]), 1))
        return out


#: Validation days of a window that does not say (``schemas.run.RunWindow``'s default).
DEFAULT_VALIDATION_DAYS: Final = 7


def has_gate(window: Mapping[str, Any] | None) -> bool:
    """Whether a run of this window (as the run records it) releases a promotion gate: only a run
    with validation days evaluates its candidate. A window that leaves them out has the default,
    as the agents load it (and run the gate): reading it as none would leave the gate's release
    out of the run's privacy spend."""
    if window is None:
        return False
    days = window.get("validation_days", DEFAULT_VALIDATION_DAYS)
    return isinstance(days, int) and not isinstance(days, bool) and days > 0


def run_privacy(model: str, params: Mapping[str, Any], *, gate: bool = True) -> RunPrivacy | None:
    """The run's privacy setting, or None for a run without differential privacy. ``gate``:
    whether the run releases the promotion gate's histograms (:func:`has_gate` of its window); a
    run without one is not charged for it."""
    epsilon = params.get("dp_epsilon")
    if epsilon is None:
        return None
    delta = float(params.get("dp_delta", DEFAULT_DELTA))
    n = releases(model, params)
    terminal = params.get("terminal_dp_epsilon")
    gate_epsilon = float(params.get("gate_dp_epsilon", epsilon)) if gate else None
    return RunPrivacy(epsilon=float(epsilon), delta=delta, clip=float(params.get("dp_clip", 1.0)), releases=n,
                      multiplier=noise_multiplier(float(epsilon), delta, n),
                      terminal_epsilon=None if terminal is None else float(terminal),
                      terminal_multiplier=None if terminal is None else noise_multiplier(float(terminal), delta, 1),
                      gate_epsilon=gate_epsilon,
                      gate_multiplier=None if gate_epsilon is None else noise_multiplier(gate_epsilon, delta, 1))


def compose_epsilon(runs: Iterable[tuple[float, int]], delta: float) -> float:
    """The epsilon at ``delta`` of several runs together, each given as (noise multiplier,
    releases); ``inf`` if a multiplier is 0 (a run without noise)."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    accountant = RdpAccountant()
    any_run = False
    for multiplier, n_releases in runs:
        if multiplier <= 0:
            return math.inf
        accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(multiplier), n_releases))
        any_run = True
    return float(accountant.get_epsilon(delta)) if any_run else 0.0
