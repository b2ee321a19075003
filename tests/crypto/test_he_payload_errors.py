"""Damaged, foreign or mismatched bytes are refused with our own, specific errors."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial

import numpy as np
import phe  # type: ignore[import-untyped]
import pytest

from crypto.registry import SCHEMES, load_context
from crypto.scheme import (
    CorruptPayloadError,
    HEADER_SIZE,
    HEScheme,
    KeyMismatchError,
    LengthMismatchError,
    MalformedPayloadError,
    PayloadError,
    PayloadKind,
    PayloadKindError,
    SchemeMismatchError,
    TruncatedPayloadError,
    UnsupportedVersionError,
    read_header,
)
from crypto.scheme import frame, pack_sections, unframe, unpack_sections


def flip(data: bytes, index: int) -> bytes:
    damaged = bytearray(data)
    damaged[index] ^= 0x5A
    return bytes(damaged)


@pytest.fixture
def payload(bank_scheme: HEScheme) -> bytes:
    return bank_scheme.encrypt(np.linspace(-5.0, 5.0, 50))


def refusals(scheme: HEScheme, data: bytes) -> list[Callable[[], object]]:
    """Every entry point that reads a payload: all must refuse the same bytes."""
    return [partial(scheme.decrypt, data), partial(scheme.aggregate, [data])]


def test_payload_of_another_scheme(bank_scheme: HEScheme, scheme_factory: Callable[..., HEScheme]) -> None:
    for other_name in SCHEMES:
        if other_name == bank_scheme.name:
            continue
        foreign = scheme_factory(other_name).encrypt(np.ones(3))
        expected = f"payload is for scheme '{other_name}' but this context is '{bank_scheme.name}'"
        for attempt in refusals(bank_scheme, foreign):
            with pytest.raises(SchemeMismatchError, match=expected):
                attempt()


def test_payload_of_another_key(bank_scheme: HEScheme, scheme_factory: Callable[..., HEScheme]) -> None:
    other = scheme_factory(bank_scheme.name)
    foreign = other.encrypt(np.ones(3))
    expected = f"key {other.key_id} but this context is key {bank_scheme.key_id}"
    for attempt in refusals(bank_scheme, foreign):
        with pytest.raises(KeyMismatchError, match=expected):
            attempt()


def test_truncated_body(bank_scheme: HEScheme, payload: bytes) -> None:
    body_length = len(payload) - HEADER_SIZE
    cut = payload[: HEADER_SIZE + body_length // 2]
    message = f"payload truncated: header says {body_length} body bytes, got {body_length // 2}"
    for attempt in refusals(bank_scheme, cut):
        with pytest.raises(TruncatedPayloadError, match=message):
            attempt()


def test_truncated_header(bank_scheme: HEScheme, payload: bytes) -> None:
    with pytest.raises(TruncatedPayloadError, match="shorter than the 56-byte header"):
        bank_scheme.decrypt(payload[:20])


def test_trailing_bytes(bank_scheme: HEScheme, payload: bytes) -> None:
    with pytest.raises(MalformedPayloadError, match="3 unexpected bytes after"):
        bank_scheme.decrypt(payload + b"xyz")


def test_flipped_byte_in_body(bank_scheme: HEScheme, payload: bytes) -> None:
    for index in (HEADER_SIZE, HEADER_SIZE + (len(payload) - HEADER_SIZE) // 2, len(payload) - 1):
        for attempt in refusals(bank_scheme, flip(payload, index)):
            with pytest.raises(CorruptPayloadError, match="body is corrupted"):
                attempt()


def test_flipped_byte_anywhere_in_header(bank_scheme: HEScheme, payload: bytes) -> None:
    for index in range(HEADER_SIZE):
        damaged = flip(payload, index)
        with pytest.raises(PayloadError) as caught:
            bank_scheme.decrypt(damaged)
        if index < 4:
            assert isinstance(caught.value, MalformedPayloadError)
            assert "magic" in str(caught.value)
        elif index < 6:
            assert isinstance(caught.value, UnsupportedVersionError)
        else:
            assert isinstance(caught.value, CorruptPayloadError)
            assert "header is corrupted" in str(caught.value)


@pytest.mark.parametrize("garbage", [b"", b"hello world", os.urandom(5000), b"\x00" * 100])
def test_garbage_bytes(bank_scheme: HEScheme, garbage: bytes) -> None:
    attempts: list[Callable[[], object]] = [*refusals(bank_scheme, garbage), partial(load_context, garbage)]
    for attempt in attempts:
        with pytest.raises(MalformedPayloadError, match="not a fedfraud HE payload"):
            attempt()


def test_unsupported_version(bank_scheme: HEScheme, payload: bytes) -> None:
    future = payload[:4] + (2).to_bytes(2, "little") + payload[6:]
    with pytest.raises(UnsupportedVersionError, match="version 2 is not supported"):
        bank_scheme.decrypt(future)


def test_lengths_must_match_to_aggregate(aggregator_scheme: HEScheme, bank_scheme: HEScheme) -> None:
    payloads = [bank_scheme.encrypt(np.ones(length)) for length in (10, 10, 11)]
    with pytest.raises(LengthMismatchError, match="payload 2 holds 11 values but payload 0 holds 10"):
        aggregator_scheme.aggregate(payloads)


def test_aggregate_names_the_bad_payload(
    aggregator_scheme: HEScheme, bank_scheme: HEScheme, payload: bytes
) -> None:
    with pytest.raises(CorruptPayloadError, match=r"^payload 1: .*body is corrupted"):
        aggregator_scheme.aggregate([payload, flip(payload, len(payload) - 1), payload])


def test_contexts_and_payloads_are_not_interchangeable(bank_scheme: HEScheme, payload: bytes) -> None:
    with pytest.raises(PayloadKindError, match="expected a ciphertext payload but got a public context"):
        bank_scheme.decrypt(bank_scheme.public_context())
    with pytest.raises(PayloadKindError, match="expected a context but got a ciphertext payload"):
        load_context(payload)


def test_damaged_context_is_refused(bank_scheme: HEScheme) -> None:
    for context in (bank_scheme.public_context(), bank_scheme.secret_context()):
        with pytest.raises(CorruptPayloadError):
            load_context(flip(context, len(context) // 2))
        with pytest.raises(TruncatedPayloadError):
            load_context(context[:-1])


def test_context_loaded_as_wrong_scheme(
    bank_scheme: HEScheme, scheme_factory: Callable[..., HEScheme]
) -> None:
    other_name = next(name for name in SCHEMES if name != bank_scheme.name)
    other_class = type(scheme_factory(other_name))
    with pytest.raises(SchemeMismatchError, match=f"context is for scheme '{bank_scheme.name}'"):
        other_class.load(bank_scheme.public_context())


def reframe(payload: bytes, body: bytes) -> bytes:
    """Rebuild a payload around ``body`` with valid checksums, as a buggy or hostile sender could."""
    header = read_header(payload)
    return frame(
        kind=PayloadKind.CIPHERTEXT,
        scheme=header.scheme,
        key_id=header.key_id,
        n_values=header.n_values,
        n_addends=header.n_addends,
        body=body,
    )


def test_well_framed_but_inconsistent_body(bank_scheme: HEScheme, payload: bytes) -> None:
    _, body = unframe(payload)
    for forged in (reframe(payload, bytes(body)[:-8]), reframe(payload, bytes(body) + b"\x00" * 8)):
        for attempt in refusals(bank_scheme, forged):
            with pytest.raises(PayloadError):
                attempt()


def test_ckks_ciphertext_garbage_with_valid_checksums(scheme_factory: Callable[..., HEScheme]) -> None:
    scheme = scheme_factory("ckks")
    payload = scheme.encrypt(np.ones(10))
    (chunk,) = unpack_sections(unframe(payload)[1], expected=1)
    forged = reframe(payload, pack_sections([os.urandom(len(chunk))]))
    for attempt in refusals(scheme, forged):
        with pytest.raises(CorruptPayloadError, match="not a valid CKKS ciphertext"):
            attempt()
    wrong_length = reframe(scheme.encrypt(np.ones(11)), unframe(payload)[1].tobytes())
    with pytest.raises(CorruptPayloadError, match="holds 10 values, expected 11"):
        scheme.decrypt(wrong_length)


def test_paillier_forged_ciphertexts(scheme_factory: Callable[..., HEScheme]) -> None:
    scheme = scheme_factory("paillier")
    payload = scheme.encrypt(np.ones(3))
    body = unframe(payload)[1]
    for forged in (reframe(payload, b"\xff" * len(body)), reframe(payload, b"\x00" * len(body))):
        with pytest.raises(CorruptPayloadError, match=r"outside \(0, n\^2\)"):
            scheme.decrypt(forged)
    # a genuine ciphertext under the right key, but of a plaintext no bank could have packed
    n = int.from_bytes(unpack_sections(unframe(scheme.public_context())[1])[1], "little")
    stray = phe.PaillierPublicKey(n).raw_encrypt(n - 1)
    forged = reframe(payload, stray.to_bytes(len(body), "little"))
    with pytest.raises(CorruptPayloadError, match="decrypts outside the range of 1 contributions"):
        scheme.decrypt(forged)


def reframe_context(context: bytes, sections: list[bytes]) -> bytes:
    """Rebuild a public context around other sections, with valid checksums."""
    header = read_header(context)
    return frame(kind=header.kind, scheme=header.scheme, key_id=header.key_id, body=pack_sections(sections))


def test_forged_contexts_are_refused_without_crashing(bank_scheme: HEScheme) -> None:
    context = bank_scheme.public_context()
    sections = [bytes(section) for section in unpack_sections(unframe(context)[1])]
    parameters = json.loads(sections[0])
    bad_parameters = json.dumps({**parameters, "max_addends": "many"}).encode()
    extra_parameter = json.dumps({**parameters, "colour": "blue"}).encode()
    forgeries = [
        [bad_parameters, *sections[1:]],
        [extra_parameter, *sections[1:]],
        [b"{not json", *sections[1:]],
        sections[:1],
    ]
    for forged in forgeries:
        with pytest.raises(MalformedPayloadError):
            load_context(reframe_context(context, forged))


def test_forged_tenseal_context_is_refused(scheme_factory: Callable[..., HEScheme]) -> None:
    context = scheme_factory("ckks").public_context()
    parameters, tenseal_bytes = (bytes(section) for section in unpack_sections(unframe(context)[1]))
    for junk in (os.urandom(len(tenseal_bytes)), tenseal_bytes[: len(tenseal_bytes) // 2], b""):
        with pytest.raises(CorruptPayloadError, match="TenSEAL refused the CKKS context"):
            load_context(reframe_context(context, [parameters, junk]))
    lying = json.dumps({**json.loads(parameters), "poly_modulus_degree": 16384}).encode()
    with pytest.raises(MalformedPayloadError, match="does not match its declared parameters"):
        load_context(reframe_context(context, [lying, tenseal_bytes]))
