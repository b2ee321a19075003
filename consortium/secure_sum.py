"""Secure-sum rounds: the whole of what the aggregator knows about any algorithm.

A round collects at most one encrypted payload per participating bank under a round key, and
releases their sum once every participant contributed, or once its deadline passed with at
least ``min_banks`` contributions. Fewer than ``min_banks`` contributions are never summed, and
``min_banks`` is never below :data:`MIN_BANKS` (3): with two, either bank subtracts itself.

A round that fails fails alone: a bank that opens a round nobody else joins (a bogus key, a
bogus length) wastes only its own round; the other banks' rounds and the run go on.

After a release, each bank summed posts a small *note* to the round (its self-mask seed,
:mod:`crypto.masking`); the aggregator keeps one per bank and shows them to the round's banks.
It never reads them.

The rules (:func:`decide`, :func:`check_contribution`, :func:`check_note`) are written once,
here, transport-free and storage-free: the Flask service (:mod:`consortium.rounds`) and the
in-process simulator both apply them. Everything here needs only a *public* HE context.
"""

from __future__ import annotations


import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from crypto.scheme import HEScheme, PayloadError, PayloadHeader
from schemas.round_key import parse_round_key

MIN_BANKS = 3
"""The quorum floor: no configuration, request or round may ask for fewer."""
MAX_NOTE_BYTES = 1024
"""Largest note a bank may post to a round (a self-mask seed is 32 bytes)."""


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


class NoteError(RoundError):
    """A note the round refuses now: not released, the bank not in the sum, or posted already."""


class InvalidNoteError(NoteError):
    """A note that no round would take: empty or too long."""


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
    summed: frozenset[str] = frozenset()
    notes: dict[str, bytes] = field(default_factory=dict)

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
    declared = parse_round_key(round_key).n_values
    if declared is not None and header.n_values != declared:
        raise InvalidContributionError(
            f"contribution to round {round_key!r} holds {header.n_values} values; the round key names {declared}"
        )
    if n_values is not None and header.n_values != n_values:
        raise InvalidContributionError(
            f"contribution to round {round_key!r} holds {header.n_values} values; the round expects {n_values}"
        )
    if header.n_addends != 1:
        raise InvalidContributionError(f"contribution to round {round_key!r} is already a sum of {header.n_addends}")
    return header


def check_quorum(min_banks: int) -> int:
    """``min_banks`` if it is a quorum the consortium allows, else :class:`ValueError`."""
    if isinstance(min_banks, bool) or not isinstance(min_banks, int) or min_banks < MIN_BANKS:
        raise ValueError(f"min_banks must be at least {MIN_BANKS}: with two banks, either one subtracts itself from the sum")
    return min_banks


def quorum_reached(n_contributed: int, min_banks: int) -> bool:
    """Whether ``n_contributed`` contributions may be summed under a quorum of ``min_banks``."""
    return n_contributed >= max(min_banks, MIN_BANKS)


class Decision(enum.Enum):
    """What to do with an open round now."""

    WAIT = "wait"
    RELEASE = "release"
    FAIL = "fail"


def decide(*, contributed: frozenset[str] | set[str], participants: frozenset[str] | set[str],
           min_banks: int, past_deadline: bool) -> Decision:
    """The one release rule: every participant in, or the deadline passed with a quorum.

    Parameters
    ----------
    contributed
        Banks whose payload the round holds.
    participants
        Banks the round expects.
    min_banks
        The run's quorum (never below :data:`MIN_BANKS`).
    past_deadline
        Whether the round's deadline has passed.
    """
    if contributed >= participants and quorum_reached(len(contributed), min_banks):
        return Decision.RELEASE
    if not past_deadline:
        return Decision.WAIT
    return Decision.RELEASE if quorum_reached(len(contributed), min_banks) else Decision.FAIL


def check_note(note: bytes, *, bank: str, round_key: str, state: str, summed: frozenset[str] | set[str],
               posted: frozenset[str] | set[str]) -> None:
    """Refuse a note unless the round was released with ``bank`` in its sum, once per bank.

    Raises
    ------
    InvalidNoteError
        Empty or longer than :data:`MAX_NOTE_BYTES`.
    NoteError
        Why the round refuses it.
    """
    if state != RoundState.RELEASED.value:
        raise NoteError(f"round {round_key!r} is {state}; notes are posted to released rounds")
    if bank not in summed:
        raise NoteError(f"bank {bank!r} is not in the sum of round {round_key!r}")
    if bank in posted:
        raise NoteError(f"bank {bank!r} already posted its note to round {round_key!r}")
    if not 0 < len(note) <= MAX_NOTE_BYTES:
        raise InvalidNoteError(f"a note holds 1 to {MAX_NOTE_BYTES} bytes, got {len(note)}")


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

    def __init__(self, *, context: HEScheme, min_banks: int = MIN_BANKS) -> None:
        if context.has_secret_key:
            raise ValueError("the aggregator must be given the public context only, not the secret key")
        check_quorum(min_banks)
        self.context = context
        self.min_banks = min_banks
        self._rounds: dict[str, Round] = {}
        self.aggregate_seconds: dict[str, float] = {}

    def open(self, key: str, *, participants: Iterable[str], n_values: int, min_banks: int | None = None) -> Round:
        """Open a round; reopening an identical round is a no-op, a conflicting one an error."""
        quorum = check_quorum(self.min_banks if min_banks is None else min_banks)
        members = frozenset(participants)
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

    def keys(self) -> list[str]:
        """The keys of every round opened so far, in opening order."""
        return list(self._rounds)

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
        self._settle(current, past_deadline=False)
        return current

    def close(self, key: str) -> Round:
        """Close a round at its deadline: release with a quorum, fail without one.

        Failure is a value, not an exception: the returned round says which banks dropped out.
        """
        current = self.get(key)
        if current.state is RoundState.OPEN:
            self._settle(current, past_deadline=True)
        return current

    def post_note(self, key: str, bank: str, note: bytes) -> Round:
        """Keep ``bank``'s note to a released round it is summed in (once).

        Raises
        ------
        UnknownRoundError, NoteError
            With nothing kept.
        """
        current = self.get(key)
        check_note(note, bank=bank, round_key=key, state=current.state.value, summed=current.summed,
                   posted=set(current.notes))
        current.notes[bank] = bytes(note)
        return current

    def notes(self, key: str) -> dict[str, bytes]:
        """The notes posted to round ``key`` so far, by bank."""
        return dict(self.get(key).notes)

    def _settle(self, current: Round, *, past_deadline: bool) -> None:
        decision = decide(contributed=set(current.contributions), participants=current.participants,
                          min_banks=current.min_banks, past_deadline=past_deadline)
        if decision is Decision.WAIT:
            return
        current.dropped = current.participants - set(current.contributions)
        if decision is Decision.RELEASE:
            self._release(current)
            return
        current.state = RoundState.FAILED
        current.reason = quorum_failure_reason(len(current.contributions), len(current.participants), current.min_banks)
        current.contributions.clear()

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
        current.summed = frozenset(current.contributions)
        # Individual ciphertexts are not needed once summed; keep only the sum.
        current.contributions = {bank: b"" for bank in current.contributions}
