"""Drive every bank's algorithm in lockstep in one thread, timing each activity exactly.

This is the simulator's and the benchmarks' driver: per round, every bank computes its request
(``compute``), encrypts it (``encrypt``), the aggregator sums the payloads (``aggregate``) and
every bank decrypts the sum (``decrypt``). Nothing overlaps, so each second is attributed to one
activity, and ``parallel_s`` adds up what a deployment with one machine per bank would wait:
per round the slowest bank plus the aggregator.

Payloads are masked exactly as a bank node masks them (:class:`~.rounds.MaskedSum`): every round
the banks reveal their self-mask seeds once the sum is released, and open it. A bank that drops
out is not simulated here (see :mod:`.inmemory`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar


from bank_node.federated.rounds import Algorithm, MaskedSum, Released, SumRequest, simulated_mask_sessions
from consortium.secure_sum import RoundState, SecureSum
from crypto.masking import MaskSession
from crypto.scheme import HEScheme

R = TypeVar("R")


@dataclass
class LockstepCosts:
    """Seconds and bytes of one lockstep run."""

    rounds: int = 0
    compute_s: dict[str, float] = field(default_factory=dict)
    mask_s: dict[str, float] = field(default_factory=dict)
    encrypt_s: dict[str, float] = field(default_factory=dict)
    decrypt_s: dict[str, float] = field(default_factory=dict)
    aggregate_s: float = 0.0
    parallel_s: float = 0.0
    wall_s: float = 0.0
    uploaded_bytes: dict[str, int] = field(default_factory=dict)
    values_sent: dict[str, int] = field(default_factory=dict)
    ciphertext_slots: dict[str, int] = field(default_factory=dict)

    @property
    def bank_s(self) -> float:
        """All banks' own time: their computation, encryption and decryption."""
        return (
            sum(self.compute_s.values()) + sum(self.mask_s.values())
            + sum(self.encrypt_s.values()) + sum(self.decrypt_s.values())
        )

    @property
    def outside_he_s(self) -> float:
        """Time outside HE operations: the banks' own computation."""
        return sum(self.compute_s.values())

    @property
    def bytes_per_value(self) -> float:
        """Uploaded bytes per vector value, over all banks."""
        return sum(self.uploaded_bytes.values()) / max(1, sum(self.values_sent.values()))


@dataclass
class LockstepResult(Generic[R]):
    """Every bank's algorithm result and what the run cost."""

    results: dict[str, R]
    costs: LockstepCosts


class OutOfStepError(RuntimeError):
    """Banks asked for different rounds, or finished at different times: their algorithms diverged."""


def run_lockstep(
    algorithms: Mapping[str, Algorithm[R]],
    *,
    contexts: Mapping[str, HEScheme],
    aggregator: SecureSum,
    on_round: Callable[[str], None] | None = None,
    masks: Mapping[str, MaskSession] | None = None,
    run_id: str = "simulated-run",
) -> LockstepResult[R]:
    """Run one algorithm per bank, round by round, through the aggregator's secure sums.

    Parameters
    ----------
    algorithms
        Bank id to that bank's algorithm generator (already created).
    contexts
        Bank id to that bank's HE scheme with the secret key.
    aggregator
        Secure-sum rounds on the public context.
    on_round
        Called with each round key once its sum is released (for progress reports).
    masks
        Each bank's mask session; fresh simulated keys by default.
    run_id
        Binds the default masks.
    """
    clock = time.perf_counter
    banks = sorted(algorithms)
    sessions = masks or simulated_mask_sessions(banks, run_id)
    sealers = {bank: MaskedSum(context=contexts[bank], masks=sessions[bank], quorum=aggregator.min_banks) for bank in banks}
    participants = frozenset(banks)
    costs = LockstepCosts(
        compute_s=dict.fromkeys(banks, 0.0),
        mask_s=dict.fromkeys(banks, 0.0),
        encrypt_s=dict.fromkeys(banks, 0.0),
        decrypt_s=dict.fromkeys(banks, 0.0),
        uploaded_bytes=dict.fromkeys(banks, 0),
        values_sent=dict.fromkeys(banks, 0),
        ciphertext_slots=dict.fromkeys(banks, 0),
    )
    started = clock()
    pending: dict[str, SumRequest] = {}
    step_s = dict.fromkeys(banks, 0.0)
    for bank in banks:
        t0 = clock()
        pending[bank] = next(algorithms[bank])
        step_s[bank] = clock() - t0
    results: dict[str, R] = {}
    while True:
        keys = {request.key for request in pending.values()}
        if len(keys) != 1:
            raise OutOfStepError(f"banks are out of step: {sorted(keys)}")
        key = keys.pop()
        n_values = len(pending[banks[0]].vector)
        aggregator.open(key, participants=banks, n_values=n_values + 1)
        for bank in banks:
            costs.compute_s[bank] += step_s[bank]
            t0 = clock()
            words = sealers[bank].masked_words(pending[bank], label=key, participants=participants)
            t1 = clock()
            payload = sealers[bank].encrypt(words)
            t2 = clock()
            costs.mask_s[bank] += t1 - t0
            costs.encrypt_s[bank] += t2 - t1
            step_s[bank] += t2 - t0
            costs.uploaded_bytes[bank] += len(payload)
            costs.values_sent[bank] += n_values
            slots = contexts[bank].slot_count
            costs.ciphertext_slots[bank] += math.ceil((n_values + 1) / slots) * slots if slots else n_values
            t0 = clock()
            current = aggregator.contribute(key, bank, payload)
            costs.aggregate_s += clock() - t0
        if current.state is not RoundState.RELEASED or current.aggregate is None:
            raise OutOfStepError(f"round {key!r} was not released")
        released = Released(payload=current.aggregate, contributors=current.summed)
        for bank in banks:
            sealers[bank].check_released(released, label=key, participants=participants)
            aggregator.post_note(key, bank, sessions[bank].self_seed(key))
        seeds = aggregator.notes(key)
        aggregate_s = aggregator.aggregate_seconds.get(key, 0.0)
        sums = {}
        for bank in banks:
            t0 = clock()
            masked = sealers[bank].decrypt(released, label=key)
            t1 = clock()
            sums[bank] = sealers[bank].unmask(masked, seeds, label=key, participants=participants, scale=pending[bank].scale)
            t2 = clock()
            costs.decrypt_s[bank] += t1 - t0
            costs.mask_s[bank] += t2 - t1
            step_s[bank] += t2 - t0
        costs.parallel_s += max(step_s.values()) + aggregate_s
        costs.rounds += 1
        if on_round is not None:
            on_round(key)
        for bank in banks:
            t0 = clock()
            try:
                pending[bank] = algorithms[bank].send(sums[bank])
            except StopIteration as done:
                results[bank] = done.value
            step_s[bank] = clock() - t0
        if results:
            if len(results) != len(banks):
                raise OutOfStepError(f"only {sorted(results)} finished after round {key!r}")
            for bank in banks:
                costs.compute_s[bank] += step_s[bank]
            costs.parallel_s += max(step_s.values())
            break
    costs.wall_s = clock() - started
    return LockstepResult(results=results, costs=costs)
