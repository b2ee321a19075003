"""Choosing a scheme by name, loading contexts, and refusing bad parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from crypto.ckks import CKKSScheme
from crypto.paillier import PaillierScheme
from crypto.plain import PlainScheme
from crypto.registry import DEFAULT_SCHEME, SCHEMES, generate, load_context, scheme_class
from crypto.scheme import (
    HEADER_SIZE,
    HEScheme,
    PayloadKind,
    SchemeParameterError,
    UnknownSchemeError,
    read_header,
)


def test_every_listed_scheme_has_an_implementation() -> None:
    assert SCHEMES == ("ckks", "paillier", "plain")
    assert DEFAULT_SCHEME == "ckks"
    assert [scheme_class(name) for name in SCHEMES] == [CKKSScheme, PaillierScheme, PlainScheme]
    assert all(scheme_class(name).name == name for name in SCHEMES)


def test_unknown_scheme_name() -> None:
    message = "unknown HE scheme 'bfv'; choose one of ckks, paillier, plain"
    with pytest.raises(UnknownSchemeError, match=message):
        generate("bfv")


def test_unknown_parameter_name() -> None:
    with pytest.raises(TypeError, match="scale_bits"):
        generate("paillier", scale_bits=30)


def test_load_context_picks_the_scheme_from_the_header(bank_scheme: HEScheme) -> None:
    loaded = load_context(bank_scheme.public_context())
    assert isinstance(loaded, type(bank_scheme))


def test_header_describes_payload_without_a_key(bank_scheme: HEScheme) -> None:
    payload = bank_scheme.encrypt(np.arange(12.0))
    header = read_header(payload)
    assert header.kind is PayloadKind.CIPHERTEXT
    assert (header.scheme, header.key_id) == (bank_scheme.name, bank_scheme.key_id)
    assert (header.n_values, header.n_addends) == (12, 1)
    assert header.body_length == len(payload) - HEADER_SIZE


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("ckks", {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": (60, 60)}, "128-bit security"),
        ("ckks", {"poly_modulus_degree": 3000}, "poly_modulus_degree must be one of"),
        ("ckks", {"coeff_mod_bit_sizes": (60,)}, "at least two primes"),
        ("ckks", {"coeff_mod_bit_sizes": (61, 60)}, "20 to 60 bits"),
        ("ckks", {"scale_bits": 10}, "scale_bits must be an integer >= 20"),
        ("ckks", {"scale_bits": 55}, "leaves no room"),
        ("ckks", {"max_addends": 0}, "max_addends must be a positive integer"),
        ("paillier", {"key_bits": 512}, "key_bits must be an even integer >= 1024"),
        ("paillier", {"key_bits": 1024, "value_bound": -1.0}, "value_bound must be a positive"),
        ("paillier", {"key_bits": 1024, "value_bound": float("inf")}, "value_bound must be a positive"),
        ("paillier", {"key_bits": 1024, "frac_bits": 40}, "exactly in float64"),
        ("paillier", {"key_bits": 1024, "frac_bits": 1.5}, "frac_bits must be an integer"),
        ("plain", {"max_addends": -3}, "max_addends must be a positive integer"),
    ],
)
def test_bad_parameters_are_refused(name: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemeParameterError, match=message):
        generate(name, **params)


def test_ckks_range_follows_scale_and_addends(scheme_factory: Callable[..., HEScheme]) -> None:
    base = scheme_factory("ckks")
    finer = scheme_factory("ckks", scale_bits=base.parameters["scale_bits"] + 2)
    fewer = scheme_factory("ckks", max_addends=base.max_addends // 4)
    assert finer.max_abs_value == base.max_abs_value / 4
    assert fewer.max_abs_value == base.max_abs_value * 4
    assert base.max_abs_value >= 1e5  # the consortium's histograms need at least this much


def test_ckks_wire_size_is_32_bytes_per_value(scheme_factory: Callable[..., HEScheme]) -> None:
    scheme = scheme_factory("ckks")
    values = scheme.slot_count * 2
    assert len(scheme.encrypt(np.zeros(values))) / values <= 32.1
