"""The homomorphic-encryption scheme interface, the wire header and the errors.

Every byte string this package hands out (a ciphertext payload, a public context, a secret
context) starts with one fixed-size header:

======  =====  ==============================================================
offset  bytes  field
======  =====  ==============================================================
0       4      magic ``b"FFHE"``
4       2      format version (``FORMAT_VERSION``)
6       1      kind (:class:`PayloadKind`)
7       1      scheme id (``SCHEME_IDS``)
8       8      key id: the first 8 bytes of a SHA-256 over the public material
16      8      number of values in the vector (0 for contexts)
24      4      number of bank contributions summed in it (0 for contexts)
28      8      body length in bytes
36      16     first 16 bytes of the SHA-256 of the body
52      4      CRC-32 of bytes 0..51
======  =====  ==============================================================

All integers are little-endian. The body digest is what makes corruption detectable: a CKKS
ciphertext with one flipped bit still deserializes, and decrypts to garbage.

A scheme object plays whichever role its key material allows. Loaded from a public context it
can encrypt and aggregate; only an object holding the secret key (the banks') can decrypt.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Final, Self

import numpy as np
import numpy.typing as npt

__all__ = [
    "AggregationError",
    "CorruptPayloadError",
    "CryptoError",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "HEScheme",
    "InvalidVectorError",
    "KeyMismatchError",
    "LengthMismatchError",
    "MAGIC",
    "MalformedPayloadError",
    "MissingSecretKeyError",
    "PayloadError",
    "PayloadHeader",
    "PayloadKind",
    "PayloadKindError",
    "SCHEME_IDS",
    "SchemeMismatchError",
    "SchemeParameterError",
    "TruncatedPayloadError",
    "UnexpectedSecretKeyError",
    "UnknownSchemeError",
    "UnsupportedVersionError",
    "ValueRangeError",
    "Vector",
    "frame",
    "pack_sections",
    "read_header",
    "unframe",
    "unpack_sections",
]

Vector = npt.NDArray[np.float64]
"""A 1-D float64 array: what :meth:`HEScheme.encrypt` takes and :meth:`HEScheme.decrypt` returns."""


# --------------------------------------------------------------------------------------- errors


class CryptoError(Exception):
    """Base class of every error raised by :mod:`crypto`."""


class SchemeParameterError(CryptoError, ValueError):
    """Parameters given to ``generate`` (or found in a context) are invalid or insecure."""


class UnknownSchemeError(CryptoError, ValueError):
    """A scheme name or scheme id that this build does not know."""


class MissingSecretKeyError(CryptoError):
    """The operation needs the secret key, but this object holds public material only."""


class UnexpectedSecretKeyError(CryptoError):
    """Secret key material was offered where only a public context is allowed."""


class InvalidVectorError(CryptoError, ValueError):
    """The vector to encrypt is not a 1-D array of real numbers."""


class ValueRangeError(InvalidVectorError):
    """A value is not finite, or lies outside the range the context was generated for."""


class AggregationError(CryptoError):
    """An aggregation request that cannot be honoured (nothing to sum, too many contributions)."""


class PayloadError(CryptoError):
    """Base class for bytes that cannot be accepted as a payload or context."""


class MalformedPayloadError(PayloadError):
    """The bytes are not in this package's format, or their structure is inconsistent."""


class UnsupportedVersionError(PayloadError):
    """The header carries a format version this build cannot read."""


class TruncatedPayloadError(PayloadError):
    """Fewer bytes than the header announces."""


class CorruptPayloadError(PayloadError):
    """A checksum does not match, or the backend refused the ciphertext bytes."""


class PayloadKindError(PayloadError):
    """A context was given where a ciphertext was expected, or the other way round."""


class SchemeMismatchError(PayloadError):
    """The bytes belong to another HE scheme than the context handling them."""


class KeyMismatchError(PayloadError):
    """The bytes belong to another key (another key ceremony) than the context handling them."""


class LengthMismatchError(PayloadError):
    """Payloads to be summed hold vectors of different lengths."""


# --------------------------------------------------------------------------------------- header

MAGIC: Final = b"FFHE"
FORMAT_VERSION: Final = 1
KEY_ID_BYTES: Final = 8
DIGEST_BYTES: Final = 16

_FIELDS: Final = struct.Struct("<4sHBB8sQIQ16s")
_CRC: Final = struct.Struct("<I")
HEADER_SIZE: Final = _FIELDS.size + _CRC.size
_VERSION_FIELD: Final = struct.Struct("<H")

SCHEME_IDS: Final[Mapping[str, int]] = {"ckks": 1, "paillier": 2, "plain": 3}
_SCHEME_NAMES: Final[Mapping[int, str]] = {number: name for name, number in SCHEME_IDS.items()}


class PayloadKind(IntEnum):
    """What a framed byte string holds."""

    CIPHERTEXT = 1
    PUBLIC_CONTEXT = 2
    SECRET_CONTEXT = 3

    @property
    def label(self) -> str:
        """Human-readable name used in error messages."""
        return {1: "ciphertext payload", 2: "public context", 3: "secret context"}[self.value]


@dataclass(frozen=True)
class PayloadHeader:
    """The decoded header of a payload or context.

    Attributes
    ----------
    kind
        What the body holds.
    scheme
        Scheme name (one of ``SCHEME_IDS``).
    key_id
        Hex id of the key the bytes belong to.
    n_values
        Length of the encrypted vector (0 for contexts).
    n_addends
        How many bank contributions were summed into the payload (1 for a fresh encryption,
        0 for contexts).
    body_length
        Body size in bytes.
    body_digest
        First ``DIGEST_BYTES`` of the SHA-256 of the body.
    version
        Wire format version.
    """

    kind: PayloadKind
    scheme: str
    key_id: str
    n_values: int
    n_addends: int
    body_length: int
    body_digest: bytes
    version: int = FORMAT_VERSION


def body_digest(body: bytes | memoryview) -> bytes:
    """Return the truncated SHA-256 stored in the header for ``body``."""
    return hashlib.sha256(body).digest()[:DIGEST_BYTES]


def frame(
    *,
    kind: PayloadKind,
    scheme: str,
    key_id: str,
    body: bytes,
    n_values: int = 0,
    n_addends: int = 0,
) -> bytes:
    """Prefix ``body`` with a header.

    Parameters
    ----------
    kind, scheme, key_id, n_values, n_addends
        Header fields; see :class:`PayloadHeader`.
    body
        The scheme-specific bytes.

    Returns
    -------
    bytes
        Header followed by body.
    """
    fields = _FIELDS.pack(
        MAGIC,
        FORMAT_VERSION,
        int(kind),
        SCHEME_IDS[scheme],
        bytes.fromhex(key_id),
        n_values,
        n_addends,
        len(body),
        body_digest(body),
    )
    return b"".join((fields, _CRC.pack(zlib.crc32(fields)), body))


def read_header(data: bytes) -> PayloadHeader:
    """Decode and check the header of a payload or context, without looking at the body.

    Useful to route or log a payload without holding any key.

    Parameters
    ----------
    data
        A payload or context as produced by this package.

    Returns
    -------
    PayloadHeader
        The decoded header.

    Raises
    ------
    MalformedPayloadError
        The bytes do not start with the magic, or a field holds an impossible value.
    TruncatedPayloadError
        The bytes end inside the header.
    UnsupportedVersionError
        The format version is not one this build reads.
    CorruptPayloadError
        The header's CRC-32 does not match.
    """
    view = memoryview(data)
    prefix = bytes(view[: len(MAGIC)])
    if prefix != MAGIC[: len(prefix)] or not prefix:
        raise MalformedPayloadError(
            f"not a fedfraud HE payload or context: starts with {prefix!r}, expected magic {MAGIC!r}"
        )
    if len(view) < HEADER_SIZE:
        raise TruncatedPayloadError(
            f"payload truncated: got {len(view)} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    (version,) = _VERSION_FIELD.unpack_from(view, len(MAGIC))
    if version != FORMAT_VERSION:
        raise UnsupportedVersionError(
            f"payload format version {version} is not supported (this build reads version "
            f"{FORMAT_VERSION})"
        )
    (crc,) = _CRC.unpack_from(view, _FIELDS.size)
    if zlib.crc32(view[: _FIELDS.size]) != crc:
        raise CorruptPayloadError("payload header is corrupted: its CRC-32 does not match")
    _, _, kind_number, scheme_number, key_bytes, n_values, n_addends, body_length, digest = (
        _FIELDS.unpack_from(view, 0)
    )
    try:
        kind = PayloadKind(kind_number)
    except ValueError:
        raise MalformedPayloadError(f"unknown payload kind {kind_number} in header") from None
    if scheme_number not in _SCHEME_NAMES:
        raise MalformedPayloadError(f"unknown scheme id {scheme_number} in header")
    return PayloadHeader(
        kind=kind,
        scheme=_SCHEME_NAMES[scheme_number],
        key_id=key_bytes.hex(),
        n_values=n_values,
        n_addends=n_addends,
        body_length=body_length,
        body_digest=digest,
        version=version,
    )


def unframe(data: bytes, *, check_body: bool = True) -> tuple[PayloadHeader, memoryview]:
    """Check header, length and body digest; return the header and a view of the body.

    Parameters
    ----------
    data
        A payload or context.
    check_body
        Whether to check the body's SHA-256 against the header; ``False`` only for bytes whose
        body was checked before and that the caller holds unchanged since (a content-addressed
        copy read back and checked against its name).

    Returns
    -------
    tuple of PayloadHeader and memoryview
        The header and the (verified) body.

    Raises
    ------
    PayloadError
        Any of the problems listed in :func:`read_header`, a truncated body, trailing bytes,
        or a body whose digest does not match.
    """
    header = read_header(data)
    body = memoryview(data)[HEADER_SIZE:]
    if len(body) < header.body_length:
        raise TruncatedPayloadError(
            f"payload truncated: header says {header.body_length} body bytes, got {len(body)}"
        )
    if len(body) > header.body_length:
        raise MalformedPayloadError(
            f"payload has {len(body) - header.body_length} unexpected bytes after its "
            f"{header.body_length}-byte body"
        )
    if check_body and body_digest(body) != header.body_digest:
        raise CorruptPayloadError(
            f"{header.kind.label} body is corrupted: its SHA-256 does not match the header"
        )
    return header, body


def make_key_id(*parts: bytes) -> str:
    """Derive a key id (16 hex characters) from the public material that defines a key."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(struct.pack("<Q", len(part)))
        hasher.update(part)
    return hasher.digest()[:KEY_ID_BYTES].hex()


# ------------------------------------------------------------------------------ body sections

_COUNT: Final = struct.Struct("<I")
_LENGTH: Final = struct.Struct("<Q")


def pack_sections(sections: Sequence[bytes]) -> bytes:
    """Concatenate byte strings, each prefixed with its length, behind a count."""
    parts = [_COUNT.pack(len(sections))]
    for section in sections:
        parts.append(_LENGTH.pack(len(section)))
        parts.append(section)
    return b"".join(parts)


def unpack_sections(body: memoryview, *, expected: int | None = None) -> list[memoryview]:
    """Split a body written by :func:`pack_sections`.

    Parameters
    ----------
    body
        The body bytes.
    expected
        If given, the number of sections the body must hold.

    Returns
    -------
    list of memoryview
        The sections, as views into ``body``.

    Raises
    ------
    MalformedPayloadError
        The section structure is inconsistent with the body length or ``expected``.
    """
    if len(body) < _COUNT.size:
        raise MalformedPayloadError("payload body is too short to hold its section count")
    (count,) = _COUNT.unpack_from(body, 0)
    if expected is not None and count != expected:
        raise MalformedPayloadError(f"payload body holds {count} sections, expected {expected}")
    sections: list[memoryview] = []
    offset = _COUNT.size
    for index in range(count):
        if offset + _LENGTH.size > len(body):
            raise MalformedPayloadError(f"payload body ends inside the length of section {index}")
        (length,) = _LENGTH.unpack_from(body, offset)
        offset += _LENGTH.size
        if offset + length > len(body):
            raise MalformedPayloadError(
                f"section {index} claims {length} bytes but only {len(body) - offset} remain"
            )
        sections.append(body[offset : offset + length])
        offset += length
    if offset != len(body):
        raise MalformedPayloadError(f"payload body has {len(body) - offset} bytes after its sections")
    return sections


def encode_parameters(parameters: Mapping[str, Any]) -> bytes:
    """Canonical JSON of scheme parameters (sorted keys), so key ids are reproducible."""
    return json.dumps(dict(parameters), sort_keys=True, separators=(",", ":")).encode()


def decode_parameters(section: memoryview) -> dict[str, Any]:
    """Inverse of :func:`encode_parameters`; raises :class:`MalformedPayloadError`."""
    try:
        decoded = json.loads(bytes(section).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedPayloadError(f"context parameters are not valid JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise MalformedPayloadError("context parameters are not a JSON object")
    return decoded


# ------------------------------------------------------------------------------------ vectors


def check_max_addends(max_addends: int) -> int:
    """Validate the ``max_addends`` parameter shared by all schemes and return it."""
    if isinstance(max_addends, bool) or not isinstance(max_addends, int) or max_addends < 1:
        raise SchemeParameterError(f"max_addends must be a positive integer, got {max_addends!r}")
    return max_addends


def as_vector(vector: npt.ArrayLike, *, max_abs_value: float) -> Vector:
    """Validate a vector to encrypt and return it as contiguous float64.

    Parameters
    ----------
    vector
        Anything numpy turns into a 1-D array of real numbers.
    max_abs_value
        Largest magnitude the context accepts (``math.inf`` for no limit).

    Returns
    -------
    Vector
        The values as a 1-D float64 array.

    Raises
    ------
    InvalidVectorError
        Not 1-D, or not real numbers.
    ValueRangeError
        A value is NaN, infinite, or larger in magnitude than ``max_abs_value``.
    """
    array = np.asarray(vector)
    if array.ndim != 1:
        raise InvalidVectorError(f"expected a 1-D vector, got an array of shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise InvalidVectorError(f"expected real numbers, got dtype {array.dtype}")
    values = np.ascontiguousarray(array, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        index = int(np.argmin(finite))
        raise ValueRangeError(
            f"value at index {index} is {values[index]}; only finite values can be encrypted"
        )
    if values.size and not math.isinf(max_abs_value):
        magnitudes = np.abs(values)
        index = int(np.argmax(magnitudes))
        if magnitudes[index] > max_abs_value:
            raise ValueRangeError(
                f"value {values[index]!r} at index {index} is outside the range "
                f"[-{max_abs_value:g}, {max_abs_value:g}] this context was generated for"
            )
    return values


# ---------------------------------------------------------------------------------- interface


class HEScheme(ABC):
    """An additively homomorphic encryption scheme bound to one key.

    Subclasses implement the key handling and the scheme-specific body formats; this class
    owns the framing and every check on incoming bytes, so that all schemes refuse the same
    bad input with the same errors.

    Objects are created with :meth:`generate` (a new key, with the secret) or :meth:`load`
    (from :meth:`public_context` or :meth:`secret_context` bytes).
    """

    name: ClassVar[str]
    """Scheme name, a key of ``SCHEME_IDS``."""

    # ----------------------------------------------------------------- keys and contexts

    @classmethod
    @abstractmethod
    def generate(cls, *args: Any, **params: Any) -> Self:
        """Create a new key with the secret key.

        Parameters
        ----------
        *args, **params
            Scheme-specific parameters; every implementation takes keyword arguments only
            (the ``*args`` here just lets subclasses declare their own keyword-only signature).

        Returns
        -------
        HEScheme
            An object holding the secret key.
        """

    @classmethod
    def load(cls, data: bytes, *, require_public: bool = False) -> Self:
        """Rebuild a scheme object from :meth:`public_context` or :meth:`secret_context` bytes.

        Parameters
        ----------
        data
            Serialized context.
        require_public
            Refuse secret key material (what the aggregator should pass).

        Returns
        -------
        HEScheme
            Holding the secret key only if ``data`` is a secret context.

        Raises
        ------
        PayloadError
            The bytes are not an intact context of this scheme.
        UnexpectedSecretKeyError
            ``require_public`` is set and the bytes hold a secret key.
        """
        header, body = unframe(data)
        if header.kind is PayloadKind.CIPHERTEXT:
            raise PayloadKindError("expected a context but got a ciphertext payload")
        if header.scheme != cls.name:
            raise SchemeMismatchError(
                f"context is for scheme {header.scheme!r} but was loaded as {cls.name!r}"
            )
        with_secret = header.kind is PayloadKind.SECRET_CONTEXT
        if require_public and with_secret:
            raise UnexpectedSecretKeyError(
                "a secret context was given where only a public context is allowed"
            )
        if header.n_values or header.n_addends:
            raise MalformedPayloadError("a context header must not announce values or addends")
        scheme = cls._from_context_body(body, with_secret=with_secret)
        if scheme.key_id != header.key_id:
            raise KeyMismatchError(
                f"context body belongs to key {scheme.key_id} but its header says {header.key_id}"
            )
        if scheme.has_secret_key and not with_secret:
            raise UnexpectedSecretKeyError("the public context unexpectedly holds a secret key")
        if with_secret and not scheme.has_secret_key:
            raise MalformedPayloadError("the secret context lacks its secret key")
        return scheme

    @classmethod
    @abstractmethod
    def _from_context_body(cls, body: memoryview, *, with_secret: bool) -> Self:
        """Build an object from a verified context body."""

    @property
    @abstractmethod
    def key_id(self) -> str:
        """16 hex characters identifying the key (a digest of the public material)."""

    @property
    @abstractmethod
    def has_secret_key(self) -> bool:
        """Whether this object can decrypt."""

    @property
    @abstractmethod
    def slot_count(self) -> int:
        """Values held by one ciphertext; longer vectors are split into several."""

    @property
    @abstractmethod
    def max_abs_value(self) -> float:
        """Largest magnitude :meth:`encrypt` accepts (``math.inf`` if unlimited)."""

    @property
    @abstractmethod
    def max_addends(self) -> int:
        """Most contributions one aggregate may sum without overflow."""

    @property
    @abstractmethod
    def parameters(self) -> Mapping[str, Any]:
        """Keyword arguments for :meth:`generate` that reproduce these settings with a new key."""

    def public_context(self) -> bytes:
        """Serialize the public material only (what the aggregator holds).

        Returns
        -------
        bytes
            A framed public context; loading it gives an object that encrypts and aggregates
            but cannot decrypt.
        """
        return frame(
            kind=PayloadKind.PUBLIC_CONTEXT,
            scheme=self.name,
            key_id=self.key_id,
            body=self._public_context_body(),
        )

    def secret_context(self) -> bytes:
        """Serialize everything, including the secret key (for the banks only).

        Returns
        -------
        bytes
            A framed secret context.

        Raises
        ------
        MissingSecretKeyError
            This object holds public material only.
        """
        self._require_secret_key("export the secret context")
        return frame(
            kind=PayloadKind.SECRET_CONTEXT,
            scheme=self.name,
            key_id=self.key_id,
            body=self._secret_context_body(),
        )

    @abstractmethod
    def _public_context_body(self) -> bytes:
        """Scheme-specific bytes of the public context."""

    @abstractmethod
    def _secret_context_body(self) -> bytes:
        """Scheme-specific bytes of the secret context."""

    # --------------------------------------------------------------- encrypt / sum / decrypt

    def encrypt(self, vector: npt.ArrayLike) -> bytes:
        """Encrypt a vector of real numbers under this key.

        Parameters
        ----------
        vector
            1-D array of finite values with magnitude at most :attr:`max_abs_value`.

        Returns
        -------
        bytes
            A framed ciphertext payload counting as one contribution.

        Raises
        ------
        InvalidVectorError
            The input is not a 1-D real vector.
        ValueRangeError
            A value is not finite or out of range.
        """
        values = as_vector(vector, max_abs_value=self.max_abs_value)
        return frame(
            kind=PayloadKind.CIPHERTEXT,
            scheme=self.name,
            key_id=self.key_id,
            n_values=values.size,
            n_addends=1,
            body=self._encrypt_values(values),
        )

    def aggregate(self, payloads: Sequence[bytes], *, values: range | None = None, check_bodies: bool = True) -> bytes:
        """Add encrypted vectors using public material only.

        Parameters
        ----------
        payloads
            Ciphertext payloads of this key, all of the same length (fresh encryptions or
            earlier aggregates).
        values
            Sum only these positions of the vectors (a step-1 range starting at a multiple of
            :attr:`slot_count`, ending at one or at the vectors' end): the result encrypts that
            piece alone, for :meth:`concatenate` to join with the others. Pieces are summed
            apart (by several processes) with the same bytes as the whole.
        check_bodies
            As :func:`unframe`'s ``check_body``: ``False`` only for payloads whose bodies were
            checked before and are held unchanged since.

        Returns
        -------
        bytes
            A payload encrypting the elementwise sum; its contribution count is the total of
            the inputs'.

        Raises
        ------
        AggregationError
            No payloads, more contributions than :attr:`max_addends`, or a range of values
            that is not a piece of these vectors.
        PayloadError
            A payload is damaged, of another scheme or key, or of another length; the message
            names the offending payload's position.
        """
        if not payloads:
            raise AggregationError("nothing to aggregate: no payloads given")
        headers: list[PayloadHeader] = []
        bodies: list[memoryview] = []
        for index, payload in enumerate(payloads):
            try:
                header, body = self.open_payload(payload, check_body=check_bodies)
            except PayloadError as exc:
                raise type(exc)(f"payload {index}: {exc}") from None
            if headers and header.n_values != headers[0].n_values:
                raise LengthMismatchError(
                    f"payload {index} holds {header.n_values} values but payload 0 holds "
                    f"{headers[0].n_values}; only vectors of equal length can be summed"
                )
            headers.append(header)
            bodies.append(body)
        n_addends = sum(header.n_addends for header in headers)
        if n_addends > self.max_addends:
            raise AggregationError(
                f"the payloads sum {n_addends} contributions but this context was generated "
                f"for at most {self.max_addends}; more could overflow"
            )
        n_values = headers[0].n_values
        piece = range(n_values) if values is None else self._check_piece(values, n_values)
        return frame(
            kind=PayloadKind.CIPHERTEXT,
            scheme=self.name,
            key_id=self.key_id,
            n_values=len(piece),
            n_addends=n_addends,
            body=self._aggregate_bodies(bodies, n_values=n_values, values=piece),
        )

    def pieces(self, n_values: int, count: int) -> list[range]:
        """Split ``n_values`` positions into at most ``count`` pieces of whole ciphertexts, as even
        as they come, for :meth:`aggregate` to sum apart."""
        slots = self.slot_count
        ciphertexts = -(-n_values // slots)
        count = max(1, min(count, ciphertexts))
        bounds = [min(n_values, slots * (ciphertexts * part // count)) for part in range(count + 1)]
        return [range(bounds[part], bounds[part + 1]) for part in range(count)]

    def _check_piece(self, values: range, n_values: int) -> range:
        aligned_end = values.stop == n_values or values.stop % self.slot_count == 0
        if (values.step != 1 or not 0 <= values.start < values.stop <= n_values
                or values.start % self.slot_count or not aligned_end):
            raise AggregationError(
                f"values {values.start}..{values.stop} are not a piece of {n_values}-value vectors "
                f"in whole ciphertexts of {self.slot_count} values"
            )
        return values

    def concatenate(self, pieces: Sequence[bytes]) -> bytes:
        """Join sums of consecutive pieces (from :meth:`aggregate` with ``values``) into one.

        Parameters
        ----------
        pieces
            Ciphertext payloads of this key, in order, each summing the same number of
            contributions; all but the last hold whole ciphertexts.

        Returns
        -------
        bytes
            The payload encrypting the pieces' values one after the other.

        Raises
        ------
        AggregationError
            No pieces, pieces of different contribution counts, or a piece that ends inside a
            ciphertext before the last.
        PayloadError
            A piece is damaged or of another scheme or key.
        """
        if not pieces:
            raise AggregationError("nothing to concatenate: no pieces given")
        opened = []
        for index, piece in enumerate(pieces):
            try:
                opened.append(self.open_payload(piece))
            except PayloadError as exc:
                raise type(exc)(f"piece {index}: {exc}") from None
        headers = [header for header, _ in opened]
        if len({header.n_addends for header in headers}) != 1:
            raise AggregationError("the pieces sum different numbers of contributions; they are not one sum")
        for index, header in enumerate(headers[:-1]):
            if header.n_values % self.slot_count:
                raise AggregationError(
                    f"piece {index} ends inside a ciphertext ({header.n_values} values, "
                    f"{self.slot_count} per ciphertext); only the last piece may"
                )
        return frame(
            kind=PayloadKind.CIPHERTEXT,
            scheme=self.name,
            key_id=self.key_id,
            n_values=sum(header.n_values for header in headers),
            n_addends=headers[0].n_addends,
            body=self._concatenate_bodies([body for _, body in opened], [header.n_values for header in headers]),
        )

    def decrypt(self, payload: bytes) -> Vector:
        """Decrypt a payload (typically an aggregate).

        Decryption is deterministic: the same payload and key always give the same numbers,
        so every bank derives the same model from the same sum.

        Parameters
        ----------
        payload
            A ciphertext payload of this key.

        Returns
        -------
        Vector
            float64 values, as many as were encrypted.

        Raises
        ------
        MissingSecretKeyError
            This object holds public material only.
        PayloadError
            The payload is damaged or of another scheme or key.
        """
        self._require_secret_key("decrypt")
        header, body = self.open_payload(payload)
        values = self._decrypt_body(body, n_values=header.n_values, n_addends=header.n_addends)
        if values.shape != (header.n_values,):  # a scheme bug, not a user error
            raise CorruptPayloadError(
                f"decrypted {values.shape} values but the header announces {header.n_values}"
            )
        return values

    def open_payload(self, payload: bytes, *, check_body: bool = True) -> tuple[PayloadHeader, memoryview]:
        """Check that ``payload`` is an intact ciphertext of this scheme and key.

        Parameters
        ----------
        payload
            Bytes claimed to be a ciphertext payload.
        check_body
            As :func:`unframe`'s.

        Returns
        -------
        tuple of PayloadHeader and memoryview
            The header and the verified body.

        Raises
        ------
        PayloadError
            With a message naming the problem.
        """
        header, body = unframe(payload, check_body=check_body)
        if header.kind is not PayloadKind.CIPHERTEXT:
            raise PayloadKindError(f"expected a ciphertext payload but got a {header.kind.label}")
        if header.scheme != self.name:
            raise SchemeMismatchError(
                f"payload is for scheme {header.scheme!r} but this context is {self.name!r}"
            )
        if header.key_id != self.key_id:
            raise KeyMismatchError(
                f"payload was encrypted under key {header.key_id} but this context is key "
                f"{self.key_id}"
            )
        if not 1 <= header.n_addends <= self.max_addends:
            raise MalformedPayloadError(
                f"payload claims {header.n_addends} contributions; this context allows 1 to "
                f"{self.max_addends}"
            )
        return header, body

    @abstractmethod
    def _encrypt_values(self, values: Vector) -> bytes:
        """Body of a fresh ciphertext of ``values`` (validated, float64, 1-D)."""

    @abstractmethod
    def _aggregate_bodies(self, bodies: Sequence[memoryview], *, n_values: int, values: range) -> bytes:
        """Body of the sum of the positions ``values`` (whole ciphertexts, checked) of verified
        ciphertext bodies, each of ``n_values`` values."""

    @abstractmethod
    def _concatenate_bodies(self, bodies: Sequence[memoryview], lengths: Sequence[int]) -> bytes:
        """Body of the verified bodies' values one after the other (``lengths`` values each)."""

    @abstractmethod
    def _decrypt_body(self, body: memoryview, *, n_values: int, n_addends: int) -> Vector:
        """Values of a verified ciphertext body; only called when the secret key is held."""

    # ---------------------------------------------------------------------------- helpers

    def _require_secret_key(self, action: str) -> None:
        if not self.has_secret_key:
            raise MissingSecretKeyError(
                f"cannot {action}: this {self.name} context (key {self.key_id}) holds public "
                "material only; the secret key stays with the banks"
            )

    def __repr__(self) -> str:
        role = "secret" if self.has_secret_key else "public"
        return f"<{type(self).__name__} key={self.key_id} {role}>"
