"""Pairwise and self masks over fixed-point integers: what makes a stored contribution worthless
even to someone holding the HE secret key.

Every secure sum is computed over integers modulo ``M = 2^modulus_bits``. A bank turns its
vector ``v`` into fixed-point integers ``x = rint(v * scale) mod M`` and uploads, encrypted,

    y_i = x_i + PRG(b_i) + sum_{j != i} sign(i, j) * PRG(s_ij)   (mod M)

* ``s_ij`` is a per-round seed derived from the X25519 agreement between banks ``i`` and ``j``
  (both compute it; nobody else can). ``sign`` is +1 for the lower bank id, -1 for the higher,
  so the pairwise terms cancel in the sum over all participants.
* ``b_i`` is a per-round *self* seed only bank ``i`` knows. It is revealed only after the round
  was released with every participant in it; a bank that believes the round incomplete never
  reveals it. That is what stops an aggregator from hiding one bank's upload, getting the others
  to redo the round without it, and subtracting: the hidden upload stays covered by its self mask.
* ``PRG`` is the ChaCha20 keystream of the seed, read as 64-bit words reduced modulo ``M``
  (``M`` divides ``2^64``, so the words stay uniform).

Given ``y_i`` and every seed except those of one honest pair, ``y_i`` is uniform modulo ``M``
whatever ``x_i`` is (a one-time pad), so the aggregator, one bank and the HE secret key together
learn nothing of another bank's contribution. The sum ``sum_i y_i - sum_i PRG(b_i)`` equals
``sum_i x_i (mod M)``, exact: decoded as a signed integer and divided by ``scale`` it is the same
number on every bank and under every HE scheme.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from nacl.public import Box, PrivateKey, PublicKey

from crypto.scheme import CryptoError, HEScheme

__all__ = [
    "DEFAULT_MODULUS_BITS",
    "FixedPoint",
    "MaskError",
    "MaskRangeError",
    "MaskSession",
    "Words",
    "check_scheme_fits",
    "expand",
    "pair_secret",
]

Words = npt.NDArray[np.uint64]

DEFAULT_MODULUS_BITS: Final = 31
"""Bits of the masking modulus. CKKS (N=4096, scale 2^20) sums 64 values below 2^31 exactly; it
is the same for every scheme so that encrypted and plaintext runs give bit-identical sums."""
SEED_BYTES: Final = 32
_PERSON: Final = b"fedfraud-mask-1"  # BLAKE2b personalisation: domain-separates our derivations
_NONCE: Final = bytes(16)  # every seed is used for one stream only


class MaskError(CryptoError):
    """A masked sum that cannot be formed or opened; the message says why."""


class MaskRangeError(MaskError, ValueError):
    """A value too large for the masking modulus (its sum over the banks could wrap)."""


def pair_secret(own: PrivateKey, peer_box_key: bytes) -> bytes:
    """The 32-byte secret two banks share: X25519 agreement of their box keys (symmetric)."""
    return bytes(Box(own, PublicKey(peer_box_key)).shared_key())


def derive(secret: bytes, *labels: str) -> bytes:
    """A 32-byte seed for one purpose, keyed by ``secret`` (BLAKE2b, labels length-prefixed)."""
    data = b"".join(len(part).to_bytes(4, "little") + part for part in (label.encode() for label in labels))
    return hashlib.blake2b(data, key=secret, digest_size=SEED_BYTES, person=_PERSON).digest()


def expand(seed: bytes, n_values: int, modulus_bits: int) -> Words:
    """``n_values`` pseudorandom integers modulo ``2^modulus_bits`` from a 32-byte seed (ChaCha20)."""
    if len(seed) != SEED_BYTES:
        raise MaskError(f"a mask seed is {SEED_BYTES} bytes, got {len(seed)}")
    stream = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor().update(bytes(8 * n_values))
    words = np.frombuffer(stream, dtype="<u8").astype(np.uint64)
    return words & np.uint64((1 << modulus_bits) - 1)


@dataclass(frozen=True)
class FixedPoint:
    """Signed fixed-point numbers as integers modulo ``2^modulus_bits``.

    Parameters
    ----------
    modulus_bits
        Bits of the modulus ``M``; sums are exact while their magnitude stays below ``M / 2``.
    """

    modulus_bits: int = DEFAULT_MODULUS_BITS

    def __post_init__(self) -> None:
        if not 8 <= self.modulus_bits <= 62:
            raise MaskError(f"modulus_bits must be in [8, 62], got {self.modulus_bits}")

    @property
    def modulus(self) -> int:
        """``M``."""
        return 1 << self.modulus_bits

    @property
    def mask(self) -> np.uint64:
        """``M - 1``, to reduce uint64 words modulo ``M``."""
        return np.uint64(self.modulus - 1)

    def encode(self, values: npt.ArrayLike, *, scale: float) -> Words:
        """``rint(values * scale)`` modulo ``M``.

        Only the caller can bound the *sum* over the banks (it must stay below ``M / 2``); this
        refuses what certainly wraps: a single value that does not fit.

        Raises
        ------
        MaskRangeError
            A value is not finite, or ``|rint(v * scale)| >= M / 2``.
        """
        scaled = np.rint(np.asarray(values, dtype=np.float64) * scale)
        limit = self.modulus // 2 - 1
        if scaled.size:
            if not np.isfinite(scaled).all():
                raise MaskRangeError("only finite values can be summed")
            worst = int(np.argmax(np.abs(scaled)))
            if abs(scaled[worst]) > limit:
                raise MaskRangeError(
                    f"value {scaled[worst] / scale:g} at index {worst} times scale {scale:g} exceeds "
                    f"{limit}, the largest magnitude a 2^{self.modulus_bits} modulus carries"
                )
        return scaled.astype(np.int64).astype(np.uint64) & self.mask

    def decode(self, words: Words, *, scale: float) -> npt.NDArray[np.float64]:
        """Signed values of sums modulo ``M``, divided by ``scale``."""
        reduced = np.asarray(words, dtype=np.uint64) & self.mask
        signed = reduced.astype(np.int64)
        signed = np.where(signed >= self.modulus // 2, signed - self.modulus, signed)
        return signed.astype(np.float64) / scale

    def from_decrypted(self, values: npt.ArrayLike) -> Words:
        """Integers modulo ``M`` from a decrypted sum of masked words (CKKS noise rounded off).

        Raises
        ------
        MaskError
            A value is negative or far from an integer: the sum was not of masked words.
        """
        array = np.asarray(values, dtype=np.float64)
        rounded = np.rint(array)
        if array.size and (np.max(np.abs(array - rounded)) > 0.25 or rounded.min() < 0):
            raise MaskError("the decrypted sum is not a sum of masked integers (noise or foreign payload)")
        return rounded.astype(np.uint64) & self.mask


def check_scheme_fits(context: HEScheme, codec: FixedPoint, n_banks: int) -> None:
    """Refuse an HE context that cannot sum ``n_banks`` masked words exactly.

    Raises
    ------
    MaskError
        Words below ``M`` exceed the context's value range, or it cannot add ``n_banks`` of them.
    """
    if context.max_abs_value < codec.modulus - 1:
        raise MaskError(
            f"this {context.name} context takes values up to {context.max_abs_value:g}, but masked sums "
            f"need {codec.modulus - 1} (2^{codec.modulus_bits} - 1); generate a context with the current defaults"
        )
    if context.max_addends < n_banks:
        raise MaskError(f"this {context.name} context sums at most {context.max_addends} banks, not {n_banks}")


@dataclass
class MaskSession:
    """One bank's masks for one run.

    Parameters
    ----------
    bank_id
        This bank.
    box_key
        This bank's X25519 private key.
    peers
        Other banks' X25519 public keys (raw 32 bytes), as this bank pinned them.
    run_id
        The run; every seed is bound to it.
    self_secret
        32 random bytes only this bank knows, fixed for the run (a restarted agent must reuse it,
        so that its replayed contributions stay consistent with its reveals).
    codec
        The fixed-point encoding (its modulus).
    """

    bank_id: str
    box_key: PrivateKey
    peers: Mapping[str, bytes]
    run_id: str
    self_secret: bytes
    codec: FixedPoint = field(default_factory=FixedPoint)
    _pairs: dict[str, bytes] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.self_secret) != SEED_BYTES:
            raise MaskError(f"the self-mask secret is {SEED_BYTES} bytes, got {len(self.self_secret)}")
        if self.bank_id in self.peers:
            raise MaskError("a bank is not its own peer")
        self._pairs = {peer: pair_secret(self.box_key, key) for peer, key in self.peers.items()}

    def self_seed(self, round_label: str) -> bytes:
        """This bank's self-mask seed for one round (revealed once the round is complete)."""
        return derive(self.self_secret, "self", self.run_id, round_label)

    def pair_seed(self, peer: str, round_label: str) -> bytes:
        """The seed this bank shares with ``peer`` for one round (never revealed)."""
        low, high = sorted((self.bank_id, peer))
        return derive(self._pairs[peer], "pair", self.run_id, round_label, low, high)

    def mask(self, words: Words, *, round_label: str, participants: Iterable[str]) -> Words:
        """``words`` plus the self mask and the pairwise masks with every other participant.

        Raises
        ------
        MaskError
            A participant whose key this bank has not pinned, or this bank is not a participant.
        """
        members = sorted(set(participants))
        if self.bank_id not in members:
            raise MaskError(f"bank {self.bank_id!r} is not a participant of round {round_label!r}")
        unknown = [peer for peer in members if peer != self.bank_id and peer not in self._pairs]
        if unknown:
            raise MaskError(f"no pinned key for participants {unknown}: masks cannot be agreed with them")
        bits = self.codec.modulus_bits
        n = len(words)
        total = (np.asarray(words, dtype=np.uint64) + expand(self.self_seed(round_label), n, bits)) & self.codec.mask
        for peer in members:
            if peer == self.bank_id:
                continue
            stream = expand(self.pair_seed(peer, round_label), n, bits)
            # uint64 arithmetic wraps modulo 2^64, a multiple of M: reducing afterwards is exact.
            total = (total + stream if self.bank_id < peer else total - stream) & self.codec.mask
        return total

    def unmask(self, summed: Words, revealed: Mapping[str, bytes]) -> Words:
        """The sum of the banks' words: ``summed`` minus the revealed self masks, modulo ``M``."""
        total = np.asarray(summed, dtype=np.uint64) & self.codec.mask
        for bank in sorted(revealed):
            total = (total - expand(revealed[bank], len(total), self.codec.modulus_bits)) & self.codec.mask
        return total
