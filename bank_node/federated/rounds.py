"""How a bank takes part in secure sums, whatever the algorithm and whatever the transport.

Every federated algorithm here is written as a generator that yields :class:`SumRequest` objects
(``"I need the consortium-wide sum of this vector, under this round key"``) and is sent back the
decrypted sum. It never sees ciphertexts or sockets. A :class:`BankRunner` drives it: it encrypts
each request with the bank's HE context, passes the payload through a :class:`Channel`
(HTTP for the agent, in memory for tests), decrypts the released sum and resumes the
algorithm. Because every bank decrypts the same sum with the same key, every bank derives the
same next step.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from crypto.scheme import HEScheme

R = TypeVar("R")


@dataclass(frozen=True)
class SumRequest:
    """One bank's share of a secure sum.

    Attributes
    ----------
    key
        Round key, the same on every bank for the same step (e.g. ``"gbdt/tree-0/level-2"``).
    vector
        This bank's values; every bank sends a vector of the same length for the same key.
    """

    key: str
    vector: npt.NDArray[np.float64]


#: A federated algorithm: yields requests, receives decrypted sums, returns its result.
Algorithm = Generator[SumRequest, npt.NDArray[np.float64], R]


class RoundFailedError(RuntimeError):
    """A secure-sum round ended without a released sum (raised by any channel)."""


class Channel(Protocol):
    """The transport between one bank and the aggregator."""

    def exchange(self, key: str, bank: str, payload: bytes, *, n_values: int) -> bytes:
        """Upload this bank's payload for round ``key`` and return the released sum (blocking).

        Raises :class:`RoundFailedError` if the round ends without a sum.
        """
        ...


@dataclass
class BankLedger:
    """What one bank spent taking part: seconds by activity and bytes on the wire."""

    encrypt_s: float = 0.0
    decrypt_s: float = 0.0
    wait_s: float = 0.0
    compute_s: float = 0.0
    uploaded_bytes: int = 0
    downloaded_bytes: int = 0
    values_sent: int = 0
    rounds: int = 0


class BankRunner:
    """Drive one bank's algorithm through a channel, encrypting and decrypting at the edge.

    Parameters
    ----------
    bank
        This bank's id.
    context
        The HE scheme *with* the secret key (banks hold it; the aggregator does not).
    channel
        Transport to the aggregator.
    """

    def __init__(self, *, bank: str, context: HEScheme, channel: Channel) -> None:
        self.bank = bank
        self.context = context
        self.channel = channel
        self.ledger = BankLedger()

    def run(self, algorithm: Algorithm[R]) -> R:
        """Run ``algorithm`` to completion and return its result."""
        ledger = self.ledger
        started = time.perf_counter()
        try:
            request = next(algorithm)
            while True:
                ledger.compute_s += time.perf_counter() - started
                summed = self._secure_sum(request)
                started = time.perf_counter()
                request = algorithm.send(summed)
        except StopIteration as done:
            ledger.compute_s += time.perf_counter() - started
            return done.value  # type: ignore[no-any-return]

    def _secure_sum(self, request: SumRequest) -> npt.NDArray[np.float64]:
        ledger = self.ledger
        vector = np.ascontiguousarray(request.vector, dtype=np.float64)
        t0 = time.perf_counter()
        payload = self.context.encrypt(vector)
        t1 = time.perf_counter()
        aggregate = self.channel.exchange(request.key, self.bank, payload, n_values=len(vector))
        t2 = time.perf_counter()
        summed = self.context.decrypt(aggregate)
        t3 = time.perf_counter()
        ledger.encrypt_s += t1 - t0
        ledger.wait_s += t2 - t1
        ledger.decrypt_s += t3 - t2
        ledger.uploaded_bytes += len(payload)
        ledger.downloaded_bytes += len(aggregate)
        ledger.values_sent += len(vector)
        ledger.rounds += 1
        return summed
