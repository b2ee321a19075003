"""The grammar of round keys on the wire, shared by the banks that build them and the aggregator
that reads them: ``[e{epoch}[-x{i}.{j}...]/]{algorithm key}/n{length}``.

- ``n{length}`` (last segment): the vector length every bank sends. The first contributor cannot
  fix another length for the others: a payload of another length is refused for this key.
- ``e{epoch}-x{i}.{j}`` (first segment, after a restart): the epoch, and the banks left out of it
  as indices into the run's sorted participants. The aggregator expects exactly the others, so a
  restarted round is released as soon as they are all in, not at its deadline.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["RoundKeyError", "WireKey", "algorithm_key", "parse_round_key", "round_label", "training_progress"]

_LENGTH: Final = re.compile(r"(?:^|/)n([1-9][0-9]{0,9})$")
_EPOCH: Final = re.compile(r"^e([1-9][0-9]{0,3})(?:-x((?:0|[1-9][0-9]{0,3})(?:\.(?:0|[1-9][0-9]{0,3}))*))?/")


class RoundKeyError(ValueError):
    """A round key that names an impossible epoch or excluded bank."""


@dataclass(frozen=True)
class WireKey:
    """What a round key declares.

    Attributes
    ----------
    n_values
        The length it names, or None (a key without a length segment).
    epoch
        0 before any restart.
    excluded
        Indices, into the run's sorted participants, of the banks left out of this epoch.
    """

    n_values: int | None
    epoch: int
    excluded: frozenset[int]

    def expected(self, participants: Sequence[str]) -> frozenset[str]:
        """The banks this round expects among the run's ``participants``.

        Raises
        ------
        RoundKeyError
            An excluded index beyond the participants.
        """
        ordered = sorted(participants)
        beyond = [i for i in self.excluded if i >= len(ordered)]
        if beyond:
            raise RoundKeyError(f"the round key leaves out participant #{beyond[0]}, but the run has {len(ordered)}")
        return frozenset(bank for i, bank in enumerate(ordered) if i not in self.excluded)


def parse_round_key(round_key: str) -> WireKey:
    """Read what ``round_key`` declares (see the module docstring)."""
    length = _LENGTH.search(round_key)
    epoch = _EPOCH.match(round_key)
    excluded: frozenset[int] = frozenset()
    if epoch is not None and epoch.group(2):
        excluded = frozenset(int(i) for i in epoch.group(2).split("."))
    return WireKey(
        n_values=None if length is None else int(length.group(1)),
        epoch=0 if epoch is None else int(epoch.group(1)),
        excluded=excluded,
    )


def round_label(key: str, *, epoch: int, n_values: int, participants: Collection[str],
                run_participants: Sequence[str]) -> str:
    """The wire key of the algorithm's round ``key`` (see the module docstring).

    Parameters
    ----------
    key
        The algorithm's key, the same on every bank.
    epoch
        0, then one more per restart without the banks that dropped out.
    n_values
        Length of the vector every bank sends.
    participants
        The banks of this epoch.
    run_participants
        The run's participants (the epoch's are a subset).
    """
    if epoch == 0:
        return f"{key}/n{n_values}"
    ordered = sorted(run_participants)
    left_out = [str(i) for i, bank in enumerate(ordered) if bank not in participants]
    prefix = f"e{epoch}-x{'.'.join(left_out)}" if left_out else f"e{epoch}"
    return f"{prefix}/{key}/n{n_values}"


def algorithm_key(round_key: str) -> str:
    """The algorithm's own key inside a wire key: without the epoch prefix and the length."""
    key = _EPOCH.sub("", round_key, count=1)
    return _LENGTH.sub("", key)


_TREE: Final = re.compile(r"(?:^|/)tree-(\d+)/level-(\d+)$")


def training_progress(model: str, params: dict[str, object], released_keys: Sequence[str]) -> dict[str, object]:
    """How far a run got, from the keys of its released rounds (the same reading for the
    consortium's run view and the agent's log).

    Returns
    -------
    dict
        ``phase`` (``"starting"``, ``"terminal statistics"``, ``"binning"``, ``"trees"``,
        ``"statistics"``, ``"newton"``, ``"evaluation"``), ``terminal_rounds`` when the run pools
        consortium terminal statistics,
        ``rounds_released``, ``rounds_expected`` (an upper bound: a tree may stop early), and for
        xgboost ``tree`` (1-based, the tree in progress or last grown) of ``n_trees``.
    """
    keys = [algorithm_key(k) for k in released_keys]
    latest_epoch = max((parse_round_key(k).epoch for k in released_keys), default=0)
    current = [algorithm_key(k) for k in released_keys if parse_round_key(k).epoch == latest_epoch]
    progress: dict[str, object] = {"rounds_released": len(keys), "epoch": latest_epoch}
    if model == "xgboost":
        n_trees = int(params.get("n_trees", 100))  # type: ignore[call-overload]
        depth = int(params.get("max_depth", 3))  # type: ignore[call-overload]
        trees = [int(m.group(1)) for m in (_TREE.search(k) for k in current) if m]
        progress.update(
            rounds_expected=1 + n_trees * depth, n_trees=n_trees,
            tree=(max(trees) + 1) if trees else 0,
            phase="trees" if trees else "binning",
        )
    elif model == "logreg":
        newton = [k for k in current if "/round-" in k]
        max_rounds = int(params.get("max_rounds", 30))  # type: ignore[call-overload]
        progress.update(rounds_expected=3 + max_rounds, newton_rounds=len(newton),
                        phase="newton" if newton else ("statistics" if current else "starting"))
    terminal_rounds = sum(1 for k in current if k.startswith("terminals/"))
    if terminal_rounds:
        progress["terminal_rounds"] = terminal_rounds
        if "rounds_expected" in progress:  # the model's rounds come after the pooling's
            progress["rounds_expected"] = int(progress["rounds_expected"]) + terminal_rounds  # type: ignore[call-overload]
        if len(current) == terminal_rounds:
            progress["phase"] = "terminal statistics"
    if any(k.startswith("eval/") for k in current):
        progress["phase"] = "evaluation"
    if not keys:
        progress["phase"] = "starting"
    return progress
