"""An in-memory channel: every bank in one process, each in its own thread, one aggregator.

It moves the same serialized payloads the HTTP path moves, through the same
:class:`~consortium.secure_sum.SecureSum` rounds, with the banks concurrent as in a deployment;
the tests of the channel contract use it (the simulator drives banks in lockstep instead, see
:mod:`.lockstep`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from bank_node.federated.rounds import (
    Algorithm,
    BankRunner,
    Released,
    RoundFailedError,
    simulated_mask_sessions,
)
from consortium.secure_sum import RoundError, RoundState, SecureSum
from crypto.masking import MaskSession
from crypto.scheme import HEScheme

R = TypeVar("R")


class InMemoryChannel:
    """Banks exchange payloads with one in-process aggregator.

    Parameters
    ----------
    aggregator
        The aggregator's secure-sum rounds (public context only).
    participants
        The banks taking part; every round expects all of them.
    timeout_s
        How long a bank waits for a round's sum before the round is closed (the deadline).
    """

    def __init__(self, *, aggregator: SecureSum, participants: Iterable[str], timeout_s: float = 600.0) -> None:
        self.aggregator = aggregator
        self.participants = frozenset(participants)
        self.timeout_s = timeout_s
        self._lock = threading.Condition()
        self._aborted: str | None = None

    def abort(self, reason: str) -> None:
        """Wake every waiting bank with an error: one bank failed, the run cannot go on."""
        with self._lock:
            self._aborted = reason
            self._lock.notify_all()

    def exchange(
        self, key: str, bank: str, payload: bytes, *, n_values: int, participants: frozenset[str]
    ) -> Released:
        """Contribute ``payload`` to round ``key`` and wait for the released sum."""
        with self._lock:
            if self._aborted is not None:
                raise RoundFailedError(f"run aborted: {self._aborted}")
            try:
                self.aggregator.open(key, participants=participants & self.participants, n_values=n_values)
                current = self.aggregator.contribute(key, bank, payload)
            except (RoundError, ValueError) as exc:
                raise RoundFailedError(str(exc)) from None
            if current.state is not RoundState.OPEN:
                self._lock.notify_all()
            released = self._lock.wait_for(
                lambda: current.state is not RoundState.OPEN or self._aborted is not None, timeout=self.timeout_s
            )
            if self._aborted is not None and current.state is RoundState.OPEN:
                raise RoundFailedError(f"run aborted: {self._aborted}")
            if not released:
                current = self.aggregator.close(key)
                self._lock.notify_all()
            if current.aggregate is None:
                raise RoundFailedError(f"round {key!r} failed: {current.reason or current.state.value}")
            return Released(payload=current.aggregate, contributors=current.summed)

    def reveal(self, key: str, bank: str, seed: bytes, *, expected: frozenset[str]) -> dict[str, bytes]:
        """Post this bank's seed; wait for every expected bank's, or the deadline."""
        with self._lock:
            try:
                self.aggregator.post_note(key, bank, seed)
            except RoundError as exc:
                raise RoundFailedError(str(exc)) from None
            self._lock.notify_all()
            self._lock.wait_for(
                lambda: set(self.aggregator.notes(key)) >= expected or self._aborted is not None,
                timeout=self.timeout_s,
            )
            return self.aggregator.notes(key)


def run_banks(
    algorithms: Mapping[str, Callable[[], Algorithm[R]]],
    *,
    contexts: Mapping[str, HEScheme],
    aggregator: SecureSum,
    timeout_s: float = 600.0,
    masks: Mapping[str, MaskSession] | None = None,
    run_id: str = "simulated-run",
) -> tuple[dict[str, R], dict[str, BankRunner]]:
    """Run one algorithm per bank concurrently through an in-memory channel.

    Parameters
    ----------
    algorithms
        Bank id to a factory of that bank's algorithm generator.
    contexts
        Bank id to that bank's HE scheme with the secret key.
    aggregator
        The secure-sum rounds, built on the public context.
    timeout_s
        Deadline of each round.
    masks
        Each bank's mask session; fresh simulated keys by default.
    run_id
        Binds the default masks.

    Returns
    -------
    results, runners
        Each bank's algorithm result, and its runner (with the time and bytes it spent).
    """
    channel = InMemoryChannel(aggregator=aggregator, participants=algorithms, timeout_s=timeout_s)
    sessions = masks or simulated_mask_sessions(algorithms, run_id)
    runners = {
        bank: BankRunner(
            bank=bank, context=contexts[bank], channel=channel, masks=sessions[bank],
            participants=algorithms, quorum=aggregator.min_banks,
        )
        for bank in algorithms
    }

    def run_one(bank: str) -> R:
        try:
            return runners[bank].run(algorithms[bank])
        except BaseException as exc:
            channel.abort(f"bank {bank!r} failed: {exc}")
            raise

    with ThreadPoolExecutor(max_workers=len(runners), thread_name_prefix="bank") as pool:
        futures = {bank: pool.submit(run_one, bank) for bank in algorithms}
        results = {bank: future.result() for bank, future in futures.items()}
    return results, runners
