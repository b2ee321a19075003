"""A plaintext "scheme" with the same interface, headers and role split as the real ones.

It encrypts nothing: the body is the float64 vector itself. It exists so that protocol tests
run fast and so that benchmarks can measure what homomorphic encryption costs on top of plain
summation. Its "secret key" is a flag: an object loaded from the public context refuses to
decrypt exactly like the real schemes do, so role-split tests hold for it too.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Final, Self

import numpy as np

from crypto.scheme import (
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

__all__ = ["PlainScheme"]

_WIRE_DTYPE: Final = np.dtype("<f8")
_NONCE_BYTES: Final = 16


class PlainScheme(HEScheme):
    """Plaintext float64 vectors behind the :class:`~crypto.scheme.HEScheme` interface.

    Parameters
    ----------
    max_addends
        Most contributions one aggregate may sum (kept for parity with the real schemes).
    nonce
        Random bytes that make each generated "key" distinct, so key-id checks work.
    with_secret
        Whether this object may decrypt.
    """

    name = "plain"

    def __init__(self, *, max_addends: int = 64, nonce: bytes, with_secret: bool) -> None:
        self._max_addends = check_max_addends(max_addends)
        self._nonce = bytes(nonce)
        self._with_secret = with_secret
        self._parameter_bytes = encode_parameters(self.parameters)
        self._key_id = make_key_id(self.name.encode(), self._parameter_bytes, self._nonce)

    @classmethod
    def generate(cls, *, max_addends: int = 64) -> Self:
        """Create a new plaintext "key".

        Parameters
        ----------
        max_addends
            Most contributions one aggregate may sum.

        Returns
        -------
        PlainScheme
            An object that may decrypt.
        """
        return cls(max_addends=max_addends, nonce=secrets.token_bytes(_NONCE_BYTES), with_secret=True)

    @classmethod
    def _from_context_body(cls, body: memoryview, *, with_secret: bool) -> Self:
        parameter_section, nonce = unpack_sections(body, expected=2)
        parameters = decode_parameters(parameter_section)
        if set(parameters) != {"max_addends"}:
            raise MalformedPayloadError(f"unexpected plain parameters {sorted(parameters)}")
        try:
            return cls(max_addends=parameters["max_addends"], nonce=bytes(nonce), with_secret=with_secret)
        except SchemeParameterError as exc:
            raise MalformedPayloadError(f"plain context parameters are invalid: {exc}") from None

    @property
    def key_id(self) -> str:
        return self._key_id

    @property
    def has_secret_key(self) -> bool:
        return self._with_secret

    @property
    def slot_count(self) -> int:
        return 1

    @property
    def max_abs_value(self) -> float:
        return math.inf

    @property
    def max_addends(self) -> int:
        return self._max_addends

    @property
    def parameters(self) -> Mapping[str, Any]:
        return {"max_addends": self._max_addends}

    def _public_context_body(self) -> bytes:
        return pack_sections([self._parameter_bytes, self._nonce])

    def _secret_context_body(self) -> bytes:
        return pack_sections([self._parameter_bytes, self._nonce])

    def _encrypt_values(self, values: Vector) -> bytes:
        return values.astype(_WIRE_DTYPE, copy=False).tobytes()

    def _aggregate_bodies(self, bodies: Sequence[memoryview], *, n_values: int, values: range) -> bytes:
        total = np.zeros(len(values), dtype=np.float64)
        for index, body in enumerate(bodies):
            total += self._read_body(body, n_values=n_values, index=index)[values.start : values.stop]
        return total.astype(_WIRE_DTYPE, copy=False).tobytes()

    def _concatenate_bodies(self, bodies: Sequence[memoryview], lengths: Sequence[int]) -> bytes:
        return b"".join(self._read_body(body, n_values=length, index=index).tobytes()
                        for index, (body, length) in enumerate(zip(bodies, lengths, strict=True)))

    def _decrypt_body(self, body: memoryview, *, n_values: int, n_addends: int) -> Vector:
        return self._read_body(body, n_values=n_values, index=None).astype(np.float64)

    @staticmethod
    def _read_body(body: memoryview, *, n_values: int, index: int | None) -> Vector:
        if len(body) != n_values * _WIRE_DTYPE.itemsize:
            where = "" if index is None else f"payload {index}: "
            raise MalformedPayloadError(
                f"{where}body holds {len(body)} bytes; {n_values} float64 values need "
                f"{n_values * _WIRE_DTYPE.itemsize}"
            )
        return np.frombuffer(body, dtype=_WIRE_DTYPE)
