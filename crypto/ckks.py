"""CKKS through TenSEAL: the default scheme, tuned for sums only.

Choice of parameters
--------------------
The protocol only ever adds ciphertexts, so no multiplicative depth is needed: the coefficient
modulus is one 60-bit data prime plus the special prime SEAL needs for key switching
(``N = 4096``, ``[60, 49]``: all 109 bits allowed for 128-bit security). Relinearisation and
Galois keys are never serialized (the public context is the public key and parameters); a
ciphertext of 2048 values is ~66 KB, i.e. 32 bytes per value. ``N = 8192`` costs the same per
value but rounds every payload up to 4096 slots: the federated GBDT's level payloads filled 82%
of them against 89% with 2048 slots, and its sums were noisier (measured by
``bench/gbdt_protocol.py``).

Choice of scale
---------------
The protocol encrypts masked integers below ``2^31`` (:mod:`crypto.masking`) and rounds the
decrypted sum back to integers, so the default scale is the smallest that keeps CKKS noise far
below one half: ``2^20`` gives ``max_abs_value = 2^31`` for 64 addends, and a 64-bank sum of
values below ``2^32`` measured an absolute error of 0.04 (integers are recovered exactly).

Everything rides on the 60-bit data prime ``q0 > 2^59``. A sum decodes correctly only while every
coefficient of the summed plaintext stays below ``q0 / 2 > 2^58``. For real slot values bounded
by ``M`` the CKKS coefficients are bounded by ``M * scale`` (the inverse canonical embedding
averages the slots), so a sum of ``K`` contributions needs ``K * M * scale < 2^58``. We keep one
extra bit for rounding and encryption noise and accept ``|value| <= 2^(57 - scale_bits) / K``.
With the default ``scale = 2^30`` and ``K = 64`` that is ``2^21`` (about 2.1 million), which
covers the consortium's histograms and the acceptance range ``[-1e5, 1e5]`` with a factor of 20
to spare. The error is absolute noise, about ``1e-5`` per contribution: a 64-bank sum of values
in ``[-1e5, 1e5]`` measured ``7e-5`` at most, ``4e-11`` of the largest sum (the requirement is
``1e-6``). A larger scale buys absolute precision at the cost of range: each extra bit of scale
halves ``max_abs_value``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Self

import numpy as np

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
    import tenseal as ts  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "the CKKS scheme needs TenSEAL; install it with: pip install 'tenseal>=0.3.16,<0.4'"
    ) from exc

__all__ = ["CKKSParameters", "CKKSScheme", "MAX_COEFF_MODULUS_BITS"]

MAX_COEFF_MODULUS_BITS: Final[Mapping[int, int]] = {
    1024: 27,
    2048: 54,
    4096: 109,
    8192: 218,
    16384: 438,
    32768: 881,
}
"""Largest total coefficient modulus (bits) per polynomial degree for 128-bit security (SEAL)."""

_MIN_SCALE_BITS: Final = 20  # below this, fresh-encryption noise (~1e3 absolute in the
# coefficients) costs more than 1e-4 per value; a scale that coarse is a configuration mistake
_NOISE_MARGIN_BITS: Final = 1  # headroom kept below q0/2 for rounding and noise (see module doc)


@dataclass(frozen=True)
class CKKSParameters:
    """Validated CKKS settings.

    Parameters
    ----------
    poly_modulus_degree
        Ring degree ``N``; a ciphertext holds ``N / 2`` values.
    coeff_mod_bit_sizes
        Bit sizes of the coefficient-modulus primes; the last one is SEAL's special prime,
        the others form the modulus ciphertexts live under.
    scale_bits
        ``log2`` of the CKKS scale (fixed-point precision of the encoding).
    max_addends
        Most contributions one aggregate may sum; bounds :attr:`max_abs_value`.
    """

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 49)
    scale_bits: int = 20
    max_addends: int = 64

    def __post_init__(self) -> None:
        degree = self.poly_modulus_degree
        if degree not in MAX_COEFF_MODULUS_BITS:
            raise SchemeParameterError(
                f"poly_modulus_degree must be one of {sorted(MAX_COEFF_MODULUS_BITS)}, got {degree!r}"
            )
        sizes = self.coeff_mod_bit_sizes
        if len(sizes) < 2 or not all(isinstance(bits, int) and 20 <= bits <= 60 for bits in sizes):
            raise SchemeParameterError(
                "coeff_mod_bit_sizes needs at least two primes (data + special) of 20 to 60 "
                f"bits each, got {list(sizes)}"
            )
        if sum(sizes) > MAX_COEFF_MODULUS_BITS[degree]:
            raise SchemeParameterError(
                f"coeff_mod_bit_sizes {list(sizes)} total {sum(sizes)} bits; N={degree} allows "
                f"at most {MAX_COEFF_MODULUS_BITS[degree]} for 128-bit security"
            )
        check_max_addends(self.max_addends)
        if not isinstance(self.scale_bits, int) or self.scale_bits < _MIN_SCALE_BITS:
            raise SchemeParameterError(
                f"scale_bits must be an integer >= {_MIN_SCALE_BITS}, got {self.scale_bits!r}"
            )
        if self.max_abs_value < 1.0:
            raise SchemeParameterError(
                f"scale 2^{self.scale_bits} with {self.max_addends} addends leaves no room for "
                f"values of magnitude 1 under a {self.data_modulus_bits}-bit data modulus; "
                "lower scale_bits or max_addends"
            )

    @property
    def data_modulus_bits(self) -> int:
        """Guaranteed bit length of the modulus fresh ciphertexts live under (a lower bound)."""
        # Every b-bit prime exceeds 2^(b-1); the last prime is the special prime.
        return sum(bits - 1 for bits in self.coeff_mod_bit_sizes[:-1]) + 1

    @property
    def max_abs_value(self) -> float:
        """Largest magnitude per value such that ``max_addends`` of them cannot overflow."""
        # coefficients must stay below q/2 > 2^(data_modulus_bits - 2), minus the noise margin
        exponent = self.data_modulus_bits - 2 - _NOISE_MARGIN_BITS - self.scale_bits
        return math.ldexp(1.0, exponent) / self.max_addends

    def as_dict(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`CKKSScheme.generate` (JSON-friendly)."""
        fields = asdict(self)
        fields["coeff_mod_bit_sizes"] = list(self.coeff_mod_bit_sizes)
        return fields


def _public_bytes(context: ts.Context) -> bytes:
    return context.serialize(  # type: ignore[no-any-return]
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )


def _check_context_matches(context: ts.Context, parameters: CKKSParameters) -> None:
    """Refuse a context whose TenSEAL parameters disagree with the declared ones.

    The range and chunking guarantees are computed from the declared parameters, so they must
    describe the context actually loaded.
    """
    seal = context.seal_context().data
    actual = (
        seal.first_context_data().parms().poly_modulus_degree(),
        seal.first_context_data().total_coeff_modulus_bit_count(),
        seal.key_context_data().total_coeff_modulus_bit_count(),
    )
    sizes = parameters.coeff_mod_bit_sizes
    declared = (parameters.poly_modulus_degree, sum(sizes[:-1]), sum(sizes))
    is_ckks = seal.first_context_data().parms().scheme() == ts.SCHEME_TYPE.CKKS.value
    if not is_ckks or actual != declared:
        raise MalformedPayloadError(
            f"TenSEAL context (CKKS={is_ckks}, N, data bits, total bits) = {actual} does not "
            f"match its declared parameters {declared}"
        )


class CKKSScheme(HEScheme):
    """TenSEAL CKKS vectors, chunked to the slot count and summed in place.

    Parameters
    ----------
    context
        The TenSEAL context (with or without the secret key).
    parameters
        The settings the context was made with.
    """

    name = "ckks"

    def __init__(self, *, context: ts.Context, parameters: CKKSParameters) -> None:
        self._context = context
        self._params = parameters
        self._scale = math.ldexp(1.0, parameters.scale_bits)
        # set before serializing: TenSEAL saves the global scale, and the key id must not
        # depend on whether the context was generated or loaded
        self._context.global_scale = self._scale
        self._parameter_bytes = encode_parameters(parameters.as_dict())
        self._public_tenseal = _public_bytes(context)
        self._key_id = make_key_id(self.name.encode(), self._parameter_bytes, self._public_tenseal)

    @classmethod
    def generate(
        cls,
        *,
        poly_modulus_degree: int = CKKSParameters.poly_modulus_degree,
        coeff_mod_bit_sizes: Sequence[int] = CKKSParameters.coeff_mod_bit_sizes,
        scale_bits: int = CKKSParameters.scale_bits,
        max_addends: int = CKKSParameters.max_addends,
    ) -> Self:
        """Create a new CKKS key pair.

        Parameters
        ----------
        poly_modulus_degree
            Ring degree ``N`` (slots = ``N / 2``).
        coeff_mod_bit_sizes
            Coefficient-modulus prime sizes; the default ``(60, 49)`` gives 32 bytes per value.
        scale_bits
            ``log2`` of the encoding scale; see the module docstring for the range trade-off.
        max_addends
            Most contributions one aggregate may sum.

        Returns
        -------
        CKKSScheme
            An object holding the secret key.

        Raises
        ------
        SchemeParameterError
            Insecure or inconsistent parameters.
        """
        parameters = CKKSParameters(
            poly_modulus_degree=poly_modulus_degree,
            coeff_mod_bit_sizes=tuple(coeff_mod_bit_sizes),
            scale_bits=scale_bits,
            max_addends=max_addends,
        )
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=parameters.poly_modulus_degree,
            coeff_mod_bit_sizes=list(parameters.coeff_mod_bit_sizes),
        )
        return cls(context=context, parameters=parameters)

    @classmethod
    def _from_context_body(cls, body: memoryview, *, with_secret: bool) -> Self:
        parameter_section, tenseal_section = unpack_sections(body, expected=2)
        raw = decode_parameters(parameter_section)
        try:
            raw["coeff_mod_bit_sizes"] = tuple(raw["coeff_mod_bit_sizes"])
            parameters = CKKSParameters(**raw)
        except (KeyError, TypeError, SchemeParameterError) as exc:
            raise MalformedPayloadError(f"CKKS context parameters are invalid: {exc}") from None
        try:
            context = ts.context_from(bytes(tenseal_section))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise CorruptPayloadError(f"TenSEAL refused the CKKS context: {exc}") from None
        _check_context_matches(context, parameters)
        return cls(context=context, parameters=parameters)

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def has_secret_key(self) -> bool:
        return bool(self._context.has_secret_key())

    @property
    def slot_count(self) -> int:
        return self._params.poly_modulus_degree // 2

    @property
    def max_abs_value(self) -> float:
        return self._params.max_abs_value

    @property
    def max_addends(self) -> int:
        return self._params.max_addends

    @property
    def parameters(self) -> Mapping[str, Any]:
        return self._params.as_dict()

    def _public_context_body(self) -> bytes:
        return pack_sections([self._parameter_bytes, self._public_tenseal])

    def _secret_context_body(self) -> bytes:
        full = self._context.serialize(
            save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
        )
        return pack_sections([self._parameter_bytes, full])

    # ---------------------------------------------------------------------- ciphertexts

    def _chunk_lengths(self, n_values: int) -> list[int]:
        slots = self.slot_count
        return [min(slots, n_values - start) for start in range(0, n_values, slots)]

    def _encrypt_values(self, values: Vector) -> bytes:
        slots = self.slot_count
        chunks = []
        for start in range(0, values.size, slots):
            vector = ts.ckks_vector(self._context, values[start : start + slots], scale=self._scale)
            chunks.append(vector.serialize())
        return pack_sections(chunks)

    def _load_chunk(self, data: memoryview, *, length: int, where: str) -> ts.CKKSVector:
        try:
            vector = ts.ckks_vector_from(self._context, bytes(data))
        except (ValueError, RuntimeError, TypeError) as exc:
            raise CorruptPayloadError(
                f"{where} is not a valid CKKS ciphertext for this context ({exc})"
            ) from None
        if vector.size() != length:
            raise CorruptPayloadError(f"{where} holds {vector.size()} values, expected {length}")
        return vector

    def _aggregate_bodies(self, bodies: Sequence[memoryview], *, n_values: int, values: range) -> bytes:
        lengths = self._chunk_lengths(n_values)
        chunked = []
        for index, body in enumerate(bodies):
            try:
                chunked.append(unpack_sections(body, expected=len(lengths)))
            except MalformedPayloadError as exc:
                raise MalformedPayloadError(f"payload {index}: {exc}") from None
        summed = []
        # One chunk position at a time keeps one ciphertext per bank in memory. Deserializing
        # dominates the cost; add_ sums in place (copy() would round-trip through bytes).
        slots = self.slot_count
        for position in range(values.start // slots, -(-values.stop // slots)):
            length = lengths[position]
            total = self._load_chunk(
                chunked[0][position], length=length, where=f"payload 0, chunk {position}"
            )
            for index in range(1, len(chunked)):
                addend = self._load_chunk(
                    chunked[index][position], length=length, where=f"payload {index}, chunk {position}"
                )
                try:
                    total.add_(addend)
                except (ValueError, RuntimeError, TypeError) as exc:
                    raise CorruptPayloadError(
                        f"payload {index}, chunk {position} cannot be added: {exc}"
                    ) from None
            summed.append(total.serialize())
        return pack_sections(summed)

    def _concatenate_bodies(self, bodies: Sequence[memoryview], lengths: Sequence[int]) -> bytes:
        chunks: list[bytes] = []
        for index, (body, length) in enumerate(zip(bodies, lengths, strict=True)):
            try:
                chunks.extend(bytes(chunk) for chunk in unpack_sections(body, expected=len(self._chunk_lengths(length))))
            except MalformedPayloadError as exc:
                raise MalformedPayloadError(f"piece {index}: {exc}") from None
        return pack_sections(chunks)

    def _decrypt_body(self, body: memoryview, *, n_values: int, n_addends: int) -> Vector:
        lengths = self._chunk_lengths(n_values)
        chunks = unpack_sections(body, expected=len(lengths))
        out = np.empty(n_values, dtype=np.float64)
        start = 0
        for position, (chunk, length) in enumerate(zip(chunks, lengths, strict=True)):
            vector = self._load_chunk(chunk, length=length, where=f"chunk {position}")
            out[start : start + length] = vector.decrypt()
            start += length
        return out
