"""Paillier (python-paillier key generation and decryption, gmpy2 arithmetic), exact sums.

Encoding and bit budget
-----------------------
A value ``v`` with ``|v| <= value_bound`` is rounded to the fixed-point integer
``x = rint(v * 2^frac_bits)``, so ``|x| <= B = ceil(value_bound * 2^frac_bits)``. Negative numbers
are handled by an offset: the slot stores ``u = x + B`` in ``[0, 2B]``. A sum of ``k`` slots lies
in ``[0, 2kB]`` and decodes as ``(sum - kB) / 2^frac_bits``; ``k`` travels in the payload header.
Each slot is therefore ``w = bitlength(2 * max_addends * B)`` bits wide, which leaves exactly the
headroom for ``max_addends`` contributions, and ``s = (key_bits - 1) // w`` slots are packed into
one plaintext ``sum_j u_j * 2^(w*j) < 2^(key_bits - 1) <= n``: the packed sum never wraps
modulo ``n``.

The protocol sends masked integers below ``2^31`` (:mod:`crypto.masking`), so the defaults are
``value_bound = 2^31``, ``frac_bits = 0``, ``max_addends = 64``: ``B = 2^31``, ``2B`` needs 32 bits,
``+ 6`` bits for 64 addends gives ``w = 39``; a 2048-bit key packs ``s = 52`` values into each
4096-bit ciphertext, about 10 bytes per value on the wire.

Exactness: decoding divides an integer of magnitude at most ``max_addends * B`` by a power of two.
We require ``max_addends * B <= 2^53``, so the result is exactly representable in float64, and the
decrypted sum equals the sum of the fixed-point-rounded inputs bit for bit.

Encryption uses ``g = n + 1``, so ``c = (1 + m*n) * r^n mod n^2``. Computing ``r^n mod n^2`` is the
whole cost. A holder of the factorization (every bank) computes it modulo ``p^2`` and ``q^2``
and recombines with the CRT: the same ciphertext as the public-key formula for the same ``r``,
about twice as fast. Objects holding only the public key use the plain formula.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Self

import numpy as np
import numpy.typing as npt

from crypto.scheme import (
    CorruptPayloadError,
    HEScheme,
    MalformedPayloadError,
    SchemeParameterError,
    Vector,
    check_max_addends,
    decode_parameters,
    encode_parameters,
    make_key_id,
    pack_sections,
    unpack_sections,
)

try:
    import gmpy2  # type: ignore[import-untyped]
    import phe  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the Paillier scheme needs python-paillier and gmpy2; install them with: "
        "pip install 'phe>=1.5,<2' 'gmpy2>=2.1.5,<3'"
    ) from exc

__all__ = [
    "NthPowerCRT",
    "PaillierParameters",
    "PaillierScheme",
    "decode_fixed_point",
    "encode_fixed_point",
    "pack_slots",
    "unpack_slots",
]

MIN_KEY_BITS: Final = 1024  # below this Paillier is trivially factorable; 2048 for production
_FLOAT_EXACT_BITS: Final = 53


@dataclass(frozen=True)
class PaillierParameters:
    """Validated Paillier key size and fixed-point packing settings.

    Parameters
    ----------
    key_bits
        Bit length of the modulus ``n`` (2048 for production; 1024 is acceptable in tests).
    frac_bits
        Fractional bits of the fixed-point encoding (resolution ``2^-frac_bits``).
    value_bound
        Declared range: values must satisfy ``|v| <= value_bound``.
    max_addends
        Most contributions one aggregate may sum without a slot overflowing.
    """

    key_bits: int = 2048
    frac_bits: int = 0
    value_bound: float = float(2**31)
    max_addends: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.key_bits, int) or self.key_bits < MIN_KEY_BITS or self.key_bits % 2:
            raise SchemeParameterError(
                f"key_bits must be an even integer >= {MIN_KEY_BITS}, got {self.key_bits!r}"
            )
        if not isinstance(self.frac_bits, int) or not 0 <= self.frac_bits <= _FLOAT_EXACT_BITS:
            raise SchemeParameterError(
                f"frac_bits must be an integer in [0, {_FLOAT_EXACT_BITS}], got {self.frac_bits!r}"
            )
        if not isinstance(self.value_bound, (int, float)) or not 0 < self.value_bound < math.inf:
            raise SchemeParameterError(
                f"value_bound must be a positive finite number, got {self.value_bound!r}"
            )
        check_max_addends(self.max_addends)
        if self.max_addends * self.fixed_bound > 2**_FLOAT_EXACT_BITS:
            raise SchemeParameterError(
                f"max_addends * value_bound * 2^frac_bits = {self.max_addends * self.fixed_bound} "
                f"exceeds 2^{_FLOAT_EXACT_BITS}: sums would not decode exactly in float64; "
                "lower frac_bits, value_bound or max_addends"
            )
        if self.slots_per_ciphertext < 1:
            raise SchemeParameterError(
                f"a {self.slot_bits}-bit slot does not fit a {self.key_bits}-bit key"
            )

    @property
    def fixed_bound(self) -> int:
        """``B``: the largest fixed-point magnitude, also the offset added to every value."""
        return math.ceil(math.ldexp(float(self.value_bound), self.frac_bits))

    @property
    def slot_bits(self) -> int:
        """Width ``w`` of one packed slot: room for ``max_addends`` offset values."""
        return (2 * self.max_addends * self.fixed_bound).bit_length()

    @property
    def slots_per_ciphertext(self) -> int:
        """Values packed into one ciphertext."""
        return (self.key_bits - 1) // self.slot_bits

    @property
    def ciphertext_bytes(self) -> int:
        """Wire size of one ciphertext (an integer below ``n^2``)."""
        return (2 * self.key_bits + 7) // 8

    def as_dict(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`PaillierScheme.generate` (JSON-friendly)."""
        return asdict(self)


# ------------------------------------------------------------------------- pure functions


def encode_fixed_point(values: Vector, *, frac_bits: int) -> npt.NDArray[np.int64]:
    """Round values to fixed-point integers ``rint(v * 2^frac_bits)`` (ties to even).

    Parameters
    ----------
    values
        float64 values, already checked against the declared range.
    frac_bits
        Fractional bits.

    Returns
    -------
    numpy.ndarray
        int64 fixed-point integers.
    """
    return np.rint(np.ldexp(values, frac_bits)).astype(np.int64)


def decode_fixed_point(sums: npt.NDArray[np.int64], *, frac_bits: int) -> Vector:
    """Turn fixed-point integers (magnitude at most ``2^53``) back into exact float64 values."""
    return np.ldexp(sums.astype(np.float64), -frac_bits)


def pack_slots(units: Sequence[int], *, slot_bits: int) -> int:
    """Pack non-negative integers below ``2^slot_bits`` into one integer, first slot lowest."""
    packed = 0
    for position, unit in enumerate(units):
        packed |= unit << (slot_bits * position)
    return packed


def unpack_slots(packed: int, *, count: int, slot_bits: int) -> list[int]:
    """Inverse of :func:`pack_slots` for ``count`` slots."""
    mask = (1 << slot_bits) - 1
    return [(packed >> (slot_bits * position)) & mask for position in range(count)]


@dataclass(frozen=True)
class NthPowerCRT:
    """``r^n mod n^2`` computed modulo ``p^2`` and ``q^2`` (needs the factorization).

    ``Z*_{p^2}`` has order ``p(p-1)``, so the exponent ``n`` reduces modulo it; the two
    half-size exponentiations and a CRT recombination replace one full-size one.
    """

    p_square: Any
    q_square: Any
    exponent_p: Any
    exponent_q: Any
    q_square_inverse: Any  # (q^2)^-1 mod p^2

    @classmethod
    def from_primes(cls, p: int, q: int) -> NthPowerCRT:
        """Precompute the CRT constants for ``n = p * q``."""
        p_mpz, q_mpz = gmpy2.mpz(p), gmpy2.mpz(q)
        n = p_mpz * q_mpz
        p_square, q_square = p_mpz * p_mpz, q_mpz * q_mpz
        return cls(
            p_square=p_square,
            q_square=q_square,
            exponent_p=n % (p_mpz * (p_mpz - 1)),
            exponent_q=n % (q_mpz * (q_mpz - 1)),
            q_square_inverse=gmpy2.invert(q_square, p_square),
        )

    def __call__(self, r: Any) -> Any:
        residue_p = gmpy2.powmod(r, self.exponent_p, self.p_square)
        residue_q = gmpy2.powmod(r, self.exponent_q, self.q_square)
        lift = (residue_p - residue_q) * self.q_square_inverse % self.p_square
        return residue_q + lift * self.q_square


# ------------------------------------------------------------------------------- the scheme


class PaillierScheme(HEScheme):
    """Packed fixed-point Paillier with exact sums.

    Parameters
    ----------
    parameters
        Key size and packing settings.
    public_key
        The python-paillier public key (``n``).
    private_key
        The python-paillier private key, or ``None`` for a public-only object.
    """

    name = "paillier"

    def __init__(
        self,
        *,
        parameters: PaillierParameters,
        public_key: phe.PaillierPublicKey,
        private_key: phe.PaillierPrivateKey | None = None,
    ) -> None:
        if public_key.n.bit_length() != parameters.key_bits:
            raise MalformedPayloadError(
                f"modulus has {public_key.n.bit_length()} bits but key_bits is {parameters.key_bits}"
            )
        self._params = parameters
        self._public_key = public_key
        self._private_key = private_key
        self._n = gmpy2.mpz(public_key.n)
        self._n_square = self._n * self._n
        self._parameter_bytes = encode_parameters(parameters.as_dict())
        self._n_bytes = int(public_key.n).to_bytes(self._modulus_bytes, "little")
        self._key_id = make_key_id(self.name.encode(), self._parameter_bytes, self._n_bytes)
        self._nth_power: Callable[[Any], Any]
        if private_key is None:
            self._nth_power = self._nth_power_public
        else:
            self._nth_power = NthPowerCRT.from_primes(private_key.p, private_key.q)

    @classmethod
    def generate(
        cls,
        *,
        key_bits: int = PaillierParameters.key_bits,
        frac_bits: int = PaillierParameters.frac_bits,
        value_bound: float = PaillierParameters.value_bound,
        max_addends: int = PaillierParameters.max_addends,
    ) -> Self:
        """Create a new Paillier key pair.

        Parameters
        ----------
        key_bits
            Modulus size; 2048 for production, at least 1024.
        frac_bits
            Fractional bits of the fixed-point encoding.
        value_bound
            Declared range ``|v| <= value_bound``; larger values are refused by :meth:`encrypt`.
        max_addends
            Most contributions one aggregate may sum.

        Returns
        -------
        PaillierScheme
            An object holding the private key.

        Raises
        ------
        SchemeParameterError
            Invalid or inconsistent parameters (see the module docstring for the bit budget).
        """
        parameters = PaillierParameters(
            key_bits=key_bits, frac_bits=frac_bits, value_bound=value_bound, max_addends=max_addends
        )
        public_key, private_key = phe.generate_paillier_keypair(n_length=parameters.key_bits)
        return cls(parameters=parameters, public_key=public_key, private_key=private_key)

    @classmethod
    def _from_context_body(cls, body: memoryview, *, with_secret: bool) -> Self:
        sections = unpack_sections(body, expected=4 if with_secret else 2)
        raw = decode_parameters(sections[0])
        try:
            parameters = PaillierParameters(**raw)
        except (TypeError, SchemeParameterError) as exc:
            raise MalformedPayloadError(f"Paillier context parameters are invalid: {exc}") from None
        public_key = phe.PaillierPublicKey(int.from_bytes(sections[1], "little"))
        private_key = None
        if with_secret:
            p, q = (int.from_bytes(section, "little") for section in sections[2:])
            if p <= 1 or q <= 1 or p == q or p * q != public_key.n:
                raise MalformedPayloadError("secret context's primes do not factor its modulus")
            private_key = phe.PaillierPrivateKey(public_key, p, q)
        return cls(parameters=parameters, public_key=public_key, private_key=private_key)

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def has_secret_key(self) -> bool:
        return self._private_key is not None

    @property
    def slot_count(self) -> int:
        return self._params.slots_per_ciphertext

    @property
    def max_abs_value(self) -> float:
        return float(self._params.value_bound)

    @property
    def max_addends(self) -> int:
        return self._params.max_addends

    @property
    def parameters(self) -> Mapping[str, Any]:
        return self._params.as_dict()

    @property
    def _modulus_bytes(self) -> int:
        return (self._params.key_bits + 7) // 8

    def _public_context_body(self) -> bytes:
        return pack_sections([self._parameter_bytes, self._n_bytes])

    def _secret_context_body(self) -> bytes:
        assert self._private_key is not None  # checked by HEScheme.secret_context
        size = self._modulus_bytes
        p_bytes = int(self._private_key.p).to_bytes(size, "little")
        q_bytes = int(self._private_key.q).to_bytes(size, "little")
        return pack_sections([self._parameter_bytes, self._n_bytes, p_bytes, q_bytes])

    # ---------------------------------------------------------------------- ciphertexts

    def _nth_power_public(self, r: Any) -> Any:
        return gmpy2.powmod(r, self._n, self._n_square)

    def _encrypt_integer(self, plaintext: int) -> Any:
        """Paillier-encrypt ``0 <= plaintext < n`` with fresh randomness."""
        r = secrets.randbelow(self._public_key.n - 1) + 1
        nude = (1 + gmpy2.mpz(plaintext) * self._n) % self._n_square
        return nude * self._nth_power(gmpy2.mpz(r)) % self._n_square

    def _encrypt_values(self, values: Vector) -> bytes:
        params = self._params
        units = (encode_fixed_point(values, frac_bits=params.frac_bits) + params.fixed_bound).tolist()
        slots, size = params.slots_per_ciphertext, params.ciphertext_bytes
        chunks = []
        for start in range(0, len(units), slots):
            packed = pack_slots(units[start : start + slots], slot_bits=params.slot_bits)
            chunks.append(int(self._encrypt_integer(packed)).to_bytes(size, "little"))
        return b"".join(chunks)

    def _read_ciphertexts(self, body: memoryview, *, n_values: int, where: str, positions: range | None = None) -> list[Any]:
        size = self._params.ciphertext_bytes
        count = -(-n_values // self._params.slots_per_ciphertext)
        if len(body) != count * size:
            raise MalformedPayloadError(
                f"{where}body holds {len(body)} bytes; {n_values} values need {count} "
                f"ciphertexts of {size} bytes"
            )
        ciphertexts = []
        for position in range(count) if positions is None else positions:
            value = gmpy2.mpz(int.from_bytes(body[position * size : (position + 1) * size], "little"))
            if not 0 < value < self._n_square:
                raise CorruptPayloadError(f"{where}ciphertext {position} lies outside (0, n^2)")
            ciphertexts.append(value)
        return ciphertexts

    def _aggregate_bodies(self, bodies: Sequence[memoryview], *, n_values: int, values: range) -> bytes:
        slots = self._params.slots_per_ciphertext
        positions = range(values.start // slots, -(-values.stop // slots))
        columns = [
            self._read_ciphertexts(body, n_values=n_values, where=f"payload {index}: ", positions=positions)
            for index, body in enumerate(bodies)
        ]
        size, n_square = self._params.ciphertext_bytes, self._n_square
        out = []
        for position, total in enumerate(columns[0]):
            for column in columns[1:]:
                total = total * column[position] % n_square
            out.append(int(total).to_bytes(size, "little"))
        return b"".join(out)

    def _concatenate_bodies(self, bodies: Sequence[memoryview], lengths: Sequence[int]) -> bytes:
        for index, (body, length) in enumerate(zip(bodies, lengths, strict=True)):
            self._read_ciphertexts(body, n_values=length, where=f"piece {index}: ")
        return b"".join(bytes(body) for body in bodies)

    def _decrypt_body(self, body: memoryview, *, n_values: int, n_addends: int) -> Vector:
        assert self._private_key is not None  # checked by HEScheme.decrypt
        params = self._params
        slots, slot_bits = params.slots_per_ciphertext, params.slot_bits
        largest = 2 * n_addends * params.fixed_bound
        sums: list[int] = []
        for position, ciphertext in enumerate(
            self._read_ciphertexts(body, n_values=n_values, where="")
        ):
            count = min(slots, n_values - position * slots)
            packed = self._private_key.raw_decrypt(int(ciphertext))
            units = unpack_slots(packed, count=count, slot_bits=slot_bits)
            if packed >> (count * slot_bits) or max(units) > largest:
                raise CorruptPayloadError(
                    f"ciphertext {position} decrypts outside the range of {n_addends} "
                    "contributions; it was not produced under these parameters"
                )
            sums.extend(units)
        offset_total = n_addends * params.fixed_bound
        fixed = np.asarray(sums, dtype=np.int64) - offset_total
        return decode_fixed_point(fixed, frac_bits=params.frac_bits)
