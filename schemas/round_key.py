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

__all__ = ["RoundKeyError", "WireKey", "parse_round_key", "round_label"]

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
