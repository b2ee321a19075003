"""How a bank takes part in secure sums, whatever the algorithm and whatever the transport.

Every federated algorithm here is written as a generator that yields :class:`SumRequest` objects
(``"I need the consortium-wide sum of this vector, under this round key"``) and is sent back the
sum. It never sees ciphertexts, masks or sockets. A :class:`BankRunner` drives it, one round at
a time, through a :class:`Channel` (HTTP for the agent, in memory for tests):

1. :class:`MaskedSum` turns the vector into fixed-point integers, adds the bank's self mask and its
   pairwise masks with every other participant (:mod:`crypto.masking`), appends a check word of 1,
   and encrypts it with the HE context;
2. the channel uploads it and returns the released sum with the list of banks summed in it;
3. only if every participant is in that sum does the bank reveal its round's self-mask seed, and
   collects the others' (a bank that sees an incomplete sum reveals nothing);
4. the bank decrypts the sum, removes the revealed self masks, checks that the check word equals
   the number of participants (the masks cancelled: nothing was missing, altered or foreign), and
   resumes the algorithm with the exact sum.

If a participant is missing from a sum or from the reveals, the round cannot be opened; the
runner restarts the algorithm from the start without that bank (a new *epoch*, whose round keys
start with ``e1/``, ``e2/``...), so a model is always trained by the same banks in every round.
Round keys on the wire name the vector's length and the banks left out of a restarted epoch
(``schemas.round_key``), so the aggregator releases a restarted round as soon as its banks are in.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from nacl.public import PrivateKey

from crypto.masking import FixedPoint, MaskError, MaskSession, Words, check_scheme_fits
from crypto.scheme import HEScheme, PayloadError, read_header
from schemas.round_key import round_label

R = TypeVar("R")

MIN_QUORUM: Final = 3
"""No bank accepts a sum of fewer banks: with two, either one subtracts itself to read the other."""
DEFAULT_MAX_EPOCHS: Final = 3
SUM_LIMIT: Final = FixedPoint().modulus // 2 - 1
"""Largest magnitude of ``rint(v * scale)`` that a secure sum carries exactly, summed over banks."""


@dataclass(frozen=True)
class SumRequest:
    """One bank's share of a secure sum.

    Attributes
    ----------
    key
        Round key, the same on every bank for the same step (e.g. ``"gbdt/tree-0/level-2"``).
    vector
        This bank's values; every bank sends a vector of the same length for the same key.
    scale
        Fixed-point factor, the same on every bank: values are summed as ``rint(v * scale)``, so
        the sum is exact at a resolution of ``1 / scale``. The sum over all banks of
        ``|v| * scale`` must stay below ``2^30`` (an error says so otherwise).
    """

    key: str
    vector: npt.NDArray[np.float64]
    scale: float = 1.0


#: A federated algorithm: yields requests, receives decrypted sums, returns its result.
Algorithm = Generator[SumRequest, npt.NDArray[np.float64], R]


@dataclass(frozen=True)
class Released:
    """A released sum and the banks whose contributions it adds (as the aggregator says)."""

    payload: bytes
    contributors: frozenset[str]


class RoundFailedError(RuntimeError):
    """A secure-sum round ended without a usable sum (raised by any channel and by the runner)."""


class DropoutError(RoundFailedError):
    """Participants are missing from a sum or from its reveals; the others may go on without them.

    Attributes
    ----------
    remaining
        The participants that were present.
    """

    def __init__(self, message: str, *, remaining: frozenset[str]) -> None:
        super().__init__(message)
        self.remaining = remaining


class Channel(Protocol):
    """The transport between one bank and the aggregator."""

    def exchange(
        self, key: str, bank: str, payload: bytes, *, n_values: int, participants: frozenset[str]
    ) -> Released:
        """Upload this bank's payload for round ``key`` and return the released sum (blocking).

        Raises :class:`RoundFailedError` if the round ends without a sum.
        """
        ...

    def reveal(self, key: str, bank: str, seed: bytes, *, expected: frozenset[str]) -> dict[str, bytes]:
        """Publish this bank's self-mask seed of round ``key``; return every seed revealed by the
        ``expected`` banks once all have, or those revealed when the round's deadline passed."""
        ...


@dataclass
class BankLedger:
    """What one bank spent taking part: seconds by activity and bytes on the wire."""

    encrypt_s: float = 0.0
    decrypt_s: float = 0.0
    mask_s: float = 0.0
    wait_s: float = 0.0
    compute_s: float = 0.0
    uploaded_bytes: int = 0
    downloaded_bytes: int = 0
    values_sent: int = 0
    rounds: int = 0
    epochs: int = 1


class MaskedSum:
    """One bank's encoding, masking and encryption of a request, and the opening of a sum.

    Parameters
    ----------
    context
        The HE scheme with the secret key.
    masks
        This bank's mask session for the run.
    quorum
        The fewest banks this bank accepts in a sum (at least :data:`MIN_QUORUM`).
    """

    def __init__(self, *, context: HEScheme, masks: MaskSession, quorum: int = MIN_QUORUM) -> None:
        if quorum < MIN_QUORUM:
            raise ValueError(f"a bank's quorum is at least {MIN_QUORUM}, got {quorum}")
        self.context = context
        self.masks = masks
        self.codec: FixedPoint = masks.codec
        self.quorum = quorum

    @property
    def bank(self) -> str:
        """This bank's id."""
        return self.masks.bank_id

    def seal(self, request: SumRequest, *, label: str, participants: frozenset[str]) -> bytes:
        """The encrypted, masked payload of ``request`` (its values, then a check word of 1)."""
        return self.encrypt(self.masked_words(request, label=label, participants=participants))

    def masked_words(self, request: SumRequest, *, label: str, participants: frozenset[str]) -> Words:
        """``request`` as fixed-point words with a check word of 1, masked for ``participants``."""
        if len(participants) < self.quorum:
            raise RoundFailedError(
                f"round {label!r} has {len(participants)} participants, fewer than this bank's quorum of {self.quorum}"
            )
        check_scheme_fits(self.context, self.codec, len(participants))
        words = self.codec.encode(request.vector, scale=request.scale)
        words = np.append(words, np.uint64(1))
        return self.masks.mask(words, round_label=label, participants=participants)

    def encrypt(self, words: Words) -> bytes:
        """HE-encrypt masked words (integers below ``2^31`` are exact in float64)."""
        return self.context.encrypt(words.astype(np.float64))

    def check_released(self, released: Released, *, label: str, participants: frozenset[str]) -> None:
        """Refuse a sum of too few banks, and stop (revealing nothing) if a participant is missing.

        Raises
        ------
        RoundFailedError
            A sum of fewer than the quorum, or one that claims banks outside the participants.
        DropoutError
            Participants are missing from the sum.
        """
        try:
            header = read_header(released.payload)
        except PayloadError as exc:
            raise RoundFailedError(f"the sum of round {label!r} is not a payload: {exc}") from None
        if header.n_addends < self.quorum:
            raise RoundFailedError(
                f"the sum of round {label!r} adds {header.n_addends} banks, fewer than this bank's quorum of {self.quorum}"
            )
        strangers = released.contributors - participants
        if strangers:
            raise RoundFailedError(f"the sum of round {label!r} claims banks that are not participants: {sorted(strangers)}")
        if released.contributors != participants or header.n_addends != len(participants):
            raise DropoutError(
                f"round {label!r} was released with {header.n_addends} of {len(participants)} banks "
                f"(missing: {sorted(participants - released.contributors)})",
                remaining=released.contributors & participants,
            )

    def open(
        self, released: Released, seeds: Mapping[str, bytes], *, label: str, participants: frozenset[str], scale: float
    ) -> npt.NDArray[np.float64]:
        """Decrypt the sum, remove the revealed self masks, check and decode it.

        Raises
        ------
        DropoutError
            A participant did not reveal its seed.
        RoundFailedError
            The masks did not cancel.
        """
        return self.unmask(self.decrypt(released, label=label), seeds, label=label, participants=participants, scale=scale)

    def decrypt(self, released: Released, *, label: str) -> Words:
        """The released sum's words, still masked by the banks' self masks."""
        try:
            return self.codec.from_decrypted(self.context.decrypt(released.payload))
        except MaskError as exc:
            raise RoundFailedError(f"round {label!r}: {exc}") from None

    def unmask(
        self, summed: Words, seeds: Mapping[str, bytes], *, label: str, participants: frozenset[str], scale: float
    ) -> npt.NDArray[np.float64]:
        """Remove the revealed self masks, check the check word and decode the sum."""
        missing = participants - set(seeds)
        if missing:
            raise DropoutError(
                f"round {label!r}: no self-mask seed from {sorted(missing)}; the sum cannot be opened",
                remaining=participants & frozenset(seeds),
            )
        words = self.masks.unmask(summed, {bank: seeds[bank] for bank in participants})
        if int(words[-1]) != len(participants):
            raise RoundFailedError(
                f"round {label!r}: the masks did not cancel (a contribution was altered, replaced or "
                "is missing, or a revealed seed is false); the sum is unusable"
            )
        return self.codec.decode(words[:-1], scale=scale)


class BankRunner:
    """Drive one bank's algorithm through a channel, masking and encrypting at the edge.

    Parameters
    ----------
    bank
        This bank's id.
    context
        The HE scheme *with* the secret key (banks hold it; the aggregator does not).
    channel
        Transport to the aggregator.
    masks
        This bank's mask session for the run (its pinned peers' keys).
    participants
        The banks of the run (this one included).
    quorum
        The fewest banks this bank accepts in a sum or as participants (at least 3).
    max_epochs
        How many times the algorithm may start over after dropouts.
    on_round
        Called with each round's wire key once its sum is opened (progress reporting).
    on_restart
        Called before an algorithm starts over without banks that dropped out (with the epoch
        about to start): its sums are released again, so a private run spends its noise again.
        What it raises ends the run.
    """

    def __init__(
        self,
        *,
        bank: str,
        context: HEScheme,
        channel: Channel,
        masks: MaskSession,
        participants: Iterable[str],
        quorum: int = MIN_QUORUM,
        max_epochs: int = DEFAULT_MAX_EPOCHS,
        on_round: Callable[[str], None] | None = None,
        on_restart: Callable[[int], None] | None = None,
    ) -> None:
        if masks.bank_id != bank:
            raise ValueError(f"the mask session is bank {masks.bank_id!r}'s, not {bank!r}'s")
        self.bank = bank
        self.context = context
        self.channel = channel
        self.sealer = MaskedSum(context=context, masks=masks, quorum=quorum)
        self.participants = frozenset(participants)
        self.epoch_participants = self.participants
        """The banks of the epoch being run (an algorithm factory may read it when called)."""
        if bank not in self.participants:
            raise ValueError(f"bank {bank!r} is not a participant")
        self.max_epochs = max_epochs
        self.on_round = on_round
        self.on_restart = on_restart
        self.ledger = BankLedger()

    def run(self, algorithm: Algorithm[R] | Callable[[], Algorithm[R]]) -> R:
        """Run the algorithm to completion and return its result.

        Given a factory, the algorithm starts over without banks that dropped out (at most
        ``max_epochs`` times, and never with fewer than the quorum); given a generator, a
        dropout ends the run. An algorithm run after another on the same runner (the run's
        training after its terminal statistics, its gate after its training) starts with the
        banks and the epoch the previous one ended with: a bank that dropped out is not waited
        for again, and nothing starts over (or is charged again) for it.

        Raises
        ------
        RoundFailedError
            A round could not be completed, or too few banks are left.
        """
        participants = self.epoch_participants
        first = self.ledger.epochs - 1  # the epoch the previous algorithm ended in (0 at first)
        for epoch in range(first, self.max_epochs):
            self.epoch_participants = participants
            if epoch > first and self.on_restart is not None:
                self.on_restart(epoch)
            generator = algorithm() if callable(algorithm) else algorithm
            try:
                return self._run_epoch(generator, epoch, participants)
            except DropoutError as exc:
                if not callable(algorithm) or epoch + 1 == self.max_epochs:
                    raise
                if self.bank not in exc.remaining:
                    raise RoundFailedError(f"this bank was left out of the run: {exc}") from None
                if len(exc.remaining) < self.sealer.quorum:
                    raise RoundFailedError(f"{exc}; fewer than the quorum of {self.sealer.quorum} banks remain") from None
                participants = exc.remaining
                self.ledger.epochs += 1
        raise RoundFailedError("no epoch left")  # pragma: no cover - the loop returns or raises

    def _run_epoch(self, algorithm: Algorithm[R], epoch: int, participants: frozenset[str]) -> R:
        ledger = self.ledger
        started = time.perf_counter()
        try:
            request = next(algorithm)
            while True:
                ledger.compute_s += time.perf_counter() - started
                label = round_label(request.key, epoch=epoch, n_values=len(request.vector) + 1,
                                    participants=participants, run_participants=sorted(self.participants))
                summed = self._secure_sum(request, label, participants)
                if self.on_round is not None:
                    self.on_round(label)
                started = time.perf_counter()
                request = algorithm.send(summed)
        except StopIteration as done:
            ledger.compute_s += time.perf_counter() - started
            return done.value  # type: ignore[no-any-return]
        finally:
            algorithm.close()

    def _secure_sum(self, request: SumRequest, label: str, participants: frozenset[str]) -> npt.NDArray[np.float64]:
        ledger = self.ledger
        vector = np.ascontiguousarray(request.vector, dtype=np.float64)
        t0 = time.perf_counter()
        payload = self.sealer.seal(request, label=label, participants=participants)
        t1 = time.perf_counter()
        released = self.channel.exchange(label, self.bank, payload, n_values=len(vector) + 1, participants=participants)
        self.sealer.check_released(released, label=label, participants=participants)
        seeds = self.channel.reveal(
            label, self.bank, self.sealer.masks.self_seed(label), expected=participants
        )
        t2 = time.perf_counter()
        summed = self.sealer.open(released, seeds, label=label, participants=participants, scale=request.scale)
        t3 = time.perf_counter()
        ledger.encrypt_s += t1 - t0
        ledger.wait_s += t2 - t1
        ledger.decrypt_s += t3 - t2
        ledger.uploaded_bytes += len(payload)
        ledger.downloaded_bytes += len(released.payload)
        ledger.values_sent += len(vector)
        ledger.rounds += 1
        return summed


def simulated_mask_sessions(
    banks: Iterable[str], run_id: str, *, codec: FixedPoint | None = None
) -> dict[str, MaskSession]:
    """Fresh keys and mask sessions for banks simulated in one process (tests, simulator, bench)."""
    names = sorted(set(banks))
    keys = {bank: PrivateKey.generate() for bank in names}
    return {
        bank: MaskSession(
            bank_id=bank,
            box_key=keys[bank],
            peers={peer: bytes(keys[peer].public_key) for peer in names if peer != bank},
            run_id=run_id,
            self_secret=secrets.token_bytes(32),
            codec=codec or FixedPoint(),
        )
        for bank in names
    }
