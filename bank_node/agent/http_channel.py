"""The HTTP transport of the secure-sum protocol: a :class:`~bank_node.federated.rounds.Channel`.

``exchange`` signs the payload, uploads it to the round, then polls the round's aggregate with
growing pauses until the consortium releases the sum. A 409 on upload means the consortium
already holds this bank's contribution (the agent restarted and re-runs its algorithm from the
start) or the round is closed; either way the aggregate answers what happened, so the channel
goes on to poll it. A failed round raises :class:`RoundFailedError`.

``reveal`` posts the bank's signed note (its self-mask seed) to the released round, then polls the
round's notes until every expected bank posted one, or the wait runs out; notes whose signature
does not verify against the bank's registered key are ignored.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from bank_node.agent.client import ConsortiumClient
from bank_node.agent.errors import (
    ConflictError,
    ConsortiumError,
    RoundFailedError,
    RoundTimeoutError,
)
from bank_node.agent.identity import BankIdentity
from bank_node.agent.resources import AggregateStatus
from bank_node.agent.retry import Backoff
from bank_node.federated.rounds import Released
from crypto.scheme import PayloadError, read_header
from crypto.signing import SignatureError, note_message, verify
from schemas.round_key import parse_round_key

T = TypeVar("T")

__all__ = ["ChannelStats", "HttpChannel"]

log = logging.getLogger(__name__)


@dataclass
class ChannelStats:
    """Counts of what the channel did, for progress reports and tests."""

    contributed: int = 0
    replayed: int = 0
    polls: int = 0


class HttpChannel:
    """One bank's rounds of one run, over the consortium's HTTP API.

    Parameters
    ----------
    client
        Client authenticated as this bank.
    identity
        This bank's keys (signs every contribution).
    run_id
        The run the rounds belong to.
    timeout_s
        Longest wait for one round's sum before :class:`RoundTimeoutError`.
    poll_initial_s, poll_max_s
        First and longest pause between polls of an open round (when the consortium does not
        hold the request).
    long_poll_s
        How long the consortium may hold a request for an open round before answering (0: plain
        polling). The sum arrives as soon as it is released, with one request instead of many.
    signing_keys
        Bank id to base64 Ed25519 key: notes are accepted only with a valid signature by it.
    receipts
        Called with (run id, round key, payload, receipt or None, privacy receipt or None) after
        each stored contribution: the agent checks and keeps the ledger's receipts.
    replayed
        Called with (run id, round key, privacy receipt) when a contribution is answered as one
        stored before (409) with the receipt of the bank's privacy spend in the run's epoch.
    sleep, clock
        Injected for tests.
    """

    def __init__(
        self,
        *,
        client: ConsortiumClient,
        identity: BankIdentity,
        run_id: str,
        timeout_s: float = 900.0,
        poll_initial_s: float = 0.02,
        poll_max_s: float = 2.0,
        long_poll_s: float = 20.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        signing_keys: Mapping[str, str] | None = None,
        receipts: Callable[[str, str, bytes, dict[str, Any] | None, dict[str, Any] | None], None] | None = None,
        replayed: Callable[[str, str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.signing_keys = dict(signing_keys or {})
        self.receipts = receipts
        self.replayed = replayed
        #: The epochs of the run this bank sent contributions in (each has a privacy spend entry
        #: in a private run).
        self.epochs_sent: set[int] = set()
        self.client = client
        self.identity = identity
        self.run_id = run_id
        self.timeout_s = timeout_s
        self.poll_initial_s = poll_initial_s
        self.poll_max_s = poll_max_s
        self.long_poll_s = long_poll_s
        self.stats = ChannelStats()
        self._sleep = sleep
        self._clock = clock

    def exchange(
        self, key: str, bank: str, payload: bytes, *, n_values: int, participants: frozenset[str]
    ) -> Released:
        """Contribute ``payload`` to round ``key`` and return the released sum (blocking).

        Raises
        ------
        RoundFailedError
            The round failed (too few banks before its deadline); the run fails with it.
        RoundTimeoutError
            No sum within ``timeout_s``.
        ConsortiumError
            Any other refusal (bad signature, wrong key or length, not a participant, ...).
        """
        if bank != self.identity.bank_id:
            raise ValueError(f"this channel sends as bank {self.identity.bank_id!r}, not {bank!r}")
        signature = self.identity.sign_contribution(self.run_id, key, payload)
        self.epochs_sent.add(parse_round_key(key).epoch)
        try:
            # One request for the upload and the sum, when the last upload lands within the wait.
            result = self.client.put_contribution(self.run_id, key, payload, signature=signature,
                                                  wait_s=min(self.long_poll_s, self.timeout_s))
            self.stats.contributed += 1
            if self.receipts is not None:
                self.receipts(self.run_id, key, payload, result.receipt, result.privacy_receipt)
            summed = result.released
            if summed is not None and summed.payload is not None:
                _check_aggregate(summed.payload, key=key, n_values=n_values)
                return Released(payload=summed.payload, contributors=summed.contributors)
        except ConflictError as exc:
            # Already contributed (before a restart) or the round is closed: its aggregate says which.
            self.stats.replayed += 1
            log.info("contribution not stored, fetching the round's sum: run=%s round=%s reason=%s",
                     self.run_id, key, exc.message)
            privacy_receipt = exc.document.get("privacy_receipt")
            if self.replayed is not None and isinstance(privacy_receipt, dict):
                self.replayed(self.run_id, key, privacy_receipt)
        released = self._wait_for_sum(key)
        _check_aggregate(released.payload, key=key, n_values=n_values)
        return released

    def reveal(self, key: str, bank: str, seed: bytes, *, expected: frozenset[str]) -> dict[str, bytes]:
        """Post this bank's signed seed to round ``key``; collect every expected bank's, or stop waiting."""
        notes: dict[str, bytes] = {}
        try:
            posted = self.client.put_note(self.run_id, key, seed, signature=self.identity.sign_note(self.run_id, key, seed),
                                          wait_s=min(self.long_poll_s, self.timeout_s))
            if posted is not None:
                self._add_verified(key, posted, notes)
                if set(notes) >= expected:
                    return notes
        except ConflictError as exc:  # posted before a restart: the notes say what the round holds
            log.info("note not stored: run=%s round=%s reason=%s", self.run_id, key, exc.message)

        def ask(wait: float) -> bool | None:
            self._add_verified_notes(key, notes, wait_s=wait)
            return True if set(notes) >= expected else None

        self._poll(ask)
        return notes

    def _poll(self, ask: Callable[[float], T | None]) -> T | None:
        """Ask until ``ask`` answers (not None) or ``timeout_s`` passed (None).

        ``ask`` gets how long the consortium may hold the request (long poll). When the answer
        comes back well before that (a server that does not hold requests), the agent paces its
        next ask itself with a growing backoff.
        """
        backoff = Backoff(initial_s=self.poll_initial_s, max_s=self.poll_max_s)
        started = self._clock()
        while True:
            self.stats.polls += 1
            asked = self._clock()
            wait = max(0.0, min(self.long_poll_s, self.timeout_s - (asked - started)))
            answer = ask(wait)
            if answer is not None:
                return answer
            pause = backoff.next() if self._answered_at_once(asked, wait) else 0.0
            if self._clock() - started + pause > self.timeout_s:
                return None
            if pause:
                self._sleep(pause)

    def _answered_at_once(self, asked: float, wait: float) -> bool:
        """Whether the consortium answered well before the long poll's wait (it does not hold
        requests, or the wait was short): then the agent paces its polls itself."""
        return wait <= 0 or self._clock() - asked < wait / 2

    def _add_verified_notes(self, key: str, notes: dict[str, bytes], *, wait_s: float = 0.0) -> None:
        """Add to ``notes`` the round's notes not seen yet whose signature verifies."""
        self._add_verified(key, self.client.get_notes(self.run_id, key, wait_s=wait_s), notes)

    def _add_verified(self, key: str, items: list[dict[str, Any]], notes: dict[str, bytes]) -> None:
        for item in items:
            bank_id, note_b64, signature = (str(item.get(name, "")) for name in ("bank_id", "note", "signature"))
            if bank_id in notes:
                continue
            signing_key = self.signing_keys.get(bank_id)
            try:
                note = base64.b64decode(note_b64, validate=True)
                if signing_key is None:
                    raise SignatureError(f"no signing key for bank {bank_id!r}")
                verify(signing_key, note_message(self.run_id, key, bank_id, note), signature)
            except (binascii.Error, SignatureError) as exc:
                log.warning("ignoring a note that does not verify: run=%s round=%s bank=%s reason=%s",
                            self.run_id, key, bank_id, exc)
                continue
            notes[bank_id] = note

    def _wait_for_sum(self, key: str) -> Released:
        last = AggregateStatus(payload=None)
        started = self._clock()

        def ask(wait: float) -> Released | None:
            nonlocal last
            try:
                last = self.client.get_aggregate(self.run_id, key, wait_s=wait)
            except ConflictError as exc:
                raise RoundFailedError(
                    f"round {key!r} of run {self.run_id!r} failed: {exc.message}",
                    status=exc.status,
                    code=exc.code,
                    errors=exc.errors,
                    document=exc.document,
                ) from None
            if last.payload is None:
                return None
            return Released(payload=last.payload, contributors=last.contributors)

        released = self._poll(ask)
        if released is None:
            raise RoundTimeoutError(
                f"round {key!r} of run {self.run_id!r}: no sum after {self._clock() - started:.0f}s "
                f"({last.contributed} of {last.participants} banks contributed)"
            )
        return released

def _check_aggregate(aggregate: bytes, *, key: str, n_values: int) -> None:
    try:
        header = read_header(aggregate)
    except PayloadError as exc:
        raise ConsortiumError(f"the sum of round {key!r} is not a payload: {exc}") from None
    if header.n_values != n_values:
        raise ConsortiumError(f"the sum of round {key!r} holds {header.n_values} values, expected {n_values}")
