"""Secure-sum rounds: the whole of what the aggregator knows about any algorithm.

A round collects at most one encrypted payload per participating bank under a round key, and
releases their sum once every participant contributed, or once its deadline passed with at
least ``min_banks`` contributions. Fewer than ``min_banks`` contributions are never summed, so
no bank can subtract its own share from a released sum to learn another bank's.

This module is transport-free and storage-free: the Flask service and the in-process
simulator both drive it. It needs only a *public* HE context.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from crypto.scheme import HEScheme, PayloadError, PayloadHeader

DEFAULT_MIN_BANKS = 3


class RoundError(Exception):
    """A contribution or request that a round refuses; the message says why."""


class UnknownRoundError(RoundError):
    """No round with that key was opened."""


class NotAParticipantError(RoundError):
    """The bank is not a participant of the round."""


class RoundClosedError(RoundError):
    """The round no longer accepts contributions."""


class ReplayError(RoundError):
    """The bank already contributed to the round."""


class InvalidContributionError(RoundError):
    """The payload is not a ciphertext for this round's context or length."""


class RoundState(enum.Enum):
    """Where a round stands."""

    OPEN = "open"
    RELEASED = "released"
    FAILED = "failed"


@dataclass
class Round:
    """One secure sum in progress.

    Attributes
    ----------
    key
        The round key, unique within a run (e.g. ``"gbdt/tree-3/level-1"``).
    participants
        Banks expected to contribute.
    n_values
        Length of the vector every payload must hold.
    min_banks
        Quorum: the fewest contributions whose sum may be released.
    state
        Open, released or failed.
    contributions
        Bank id to payload, for banks that contributed.
    aggregate
        The released sum, once released.
    dropped
        Participants that had not contributed when the round was closed.
    """

    key: str
    participants: frozenset[str]
    n_values: int
    min_banks: int
    state: RoundState = RoundState.OPEN
    contributions: dict[str, bytes] = field(default_factory=dict)
    aggregate: bytes | None = None
    dropped: frozenset[str] = frozenset()
    reason: str = ""

    @property
    def complete(self) -> bool:
        """Whether every participant has contributed."""
        return set(self.contributions) >= self.participants


def check_contribution(
    context: HEScheme, payload: bytes, *, round_key: str, n_values: int | None
) -> PayloadHeader:
    """Check that ``payload`` is one bank's fresh ciphertext for a round.

    Parameters
    ----------
    context
        The round's (public) HE context.
    payload
        The bytes a bank sent.
    round_key
        Named in error messages.
    n_values
        The vector length the round expects, or ``None`` for the round's first payload (which
        sets it).

    Returns
    -------
    PayloadHeader
        The payload's verified header.

    Raises
    ------
    InvalidContributionError
        Of another scheme or key, damaged, truncated, of the wrong length, or already a sum.
    """
    try:
        header, _ = context.open_payload(payload)
    except PayloadError as exc:
        raise InvalidContributionError(f"contribution to round {round_key!r} refused: {exc}") from None
    if n_values is not None and header.n_values != n_values:
        raise InvalidContributionError(
            f"contribution to round {round_key!r} holds {header.n_values} values; the round expects {n_values}"
        )
    if header.n_addends != 1:
        raise InvalidContributionError(f"contribution to round {round_key!r} is already a sum of {header.n_addends}")
    return header


def quorum_reached(n_contributed: int, min_banks: int) -> bool:
    """Whether ``n_contributed`` contributions may be summed under a quorum of ``min_banks``."""
    return n_contributed >= min_banks


def quorum_failure_reason(n_contributed: int, n_participants: int, min_banks: int) -> str:
    """Why a round closed without a quorum, in words."""
    return (
        f"{n_contributed} of {n_participants} banks contributed, "
        f"fewer than the quorum of {min_banks}"
    )


class SecureSum:
    """Open rounds, take contributions, release sums under the quorum rule.

    Parameters
    ----------
    context
        The HE scheme loaded from the *public* context; it must not hold the secret key.
    min_banks
        Quorum for every round opened without its own value.
    """

    def __init__(self, *, context: HEScheme, min_banks: int = DEFAULT_MIN_BANKS) -> None:
        if context.has_secret_key:
            raise ValueError("the aggregator must be given the public context only, not the secret key")
        if min_banks < 2:
            raise ValueError("min_banks must be at least 2: a sum of one bank is that bank's data")
        self.context = context
        self.min_banks = min_banks
        self._rounds: dict[str, Round] = {}
        self.aggregate_seconds: dict[str, float] = {}

    def open(self, key: str, *, participants: Iterable[str], n_values: int, min_banks: int | None = None) -> Round:
        """Open a round; reopening an identical round is a no-op, a conflicting one an error."""
        quorum = self.min_banks if min_banks is None else min_banks
        members = frozenset(participants)
        if quorum < 2:
            raise ValueError("min_banks must be at least 2")
        if len(members) < quorum:
            raise ValueError(f"round {key!r} has {len(members)} participants, fewer than the quorum of {quorum}")
        existing = self._rounds.get(key)
        if existing is not None:
            if (existing.participants, existing.n_values, existing.min_banks) != (members, n_values, quorum):
                raise RoundError(f"round {key!r} is already open with other settings")
            return existing
        opened = Round(key=key, participants=members, n_values=n_values, min_banks=quorum)
        self._rounds[key] = opened
        return opened

    def get(self, key: str) -> Round:
        """The round under ``key``."""
        try:
            return self._rounds[key]
        except KeyError:
            raise UnknownRoundError(f"no round {key!r}") from None

    def contribute(self, key: str, bank: str, payload: bytes) -> Round:
        """Accept one bank's encrypted payload, after checking who sends what, to which round.

        Raises
        ------
        UnknownRoundError, NotAParticipantError, RoundClosedError, ReplayError, InvalidContributionError
            With nothing stored.
        """
        current = self.get(key)
        if bank not in current.participants:
            raise NotAParticipantError(f"bank {bank!r} is not a participant of round {key!r}")
        if current.state is not RoundState.OPEN:
            raise RoundClosedError(f"round {key!r} is {current.state.value}; it takes no more contributions")
        if bank in current.contributions:
            raise ReplayError(f"bank {bank!r} already contributed to round {key!r}")
        check_contribution(self.context, payload, round_key=key, n_values=current.n_values)
        current.contributions[bank] = payload
        if current.complete:
            self._release(current)
        return current

    def close(self, key: str) -> Round:
        """Close a round at its deadline: release with a quorum, fail without one.

        Failure is a value, not an exception: the returned round says which banks dropped out.
        """
        current = self.get(key)
        if current.state is not RoundState.OPEN:
            return current
        current.dropped = current.participants - set(current.contributions)
        if quorum_reached(len(current.contributions), current.min_banks):
            self._release(current)
        else:
            current.state = RoundState.FAILED
            current.reason = quorum_failure_reason(
                len(current.contributions), len(current.participants), current.min_banks
            )
            current.contributions.clear()
        return current

    def released(self, key: str) -> bytes | None:
        """The sum of round ``key`` if it was released, else None."""
        current = self.get(key)
        return current.aggregate if current.state is RoundState.RELEASED else None

    def _release(self, current: Round) -> None:
        if len(current.contributions) < current.min_banks:  # pragma: no cover - guarded by callers
            raise RoundError("quorum not reached")
        started = time.perf_counter()
        ordered = [current.contributions[bank] for bank in sorted(current.contributions)]
        current.aggregate = self.context.aggregate(ordered)
        self.aggregate_seconds[current.key] = time.perf_counter() - started
        current.state = RoundState.RELEASED
        # Individual ciphertexts are not needed once summed; keep only the sum.
        current.contributions = {bank: b"" for bank in current.contributions}
