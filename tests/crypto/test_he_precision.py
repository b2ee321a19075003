"""Precision of a full consortium sum: 64 banks, values in [-1e5, 1e5]."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from crypto.registry import load_context
from crypto.scheme import HEScheme

N_BANKS = 64


def consortium_sum(scheme: HEScheme, vectors: list[np.ndarray]) -> np.ndarray:
    """Encrypt at the banks, sum at a public-only aggregator, decrypt at a bank."""
    aggregator = load_context(scheme.public_context(), require_public=True)
    return scheme.decrypt(aggregator.aggregate([scheme.encrypt(vector) for vector in vectors]))


def test_ckks_sum_of_64_banks_within_1e_6_relative(
    scheme_factory: Callable[..., HEScheme], rng: np.random.Generator
) -> None:
    scheme = scheme_factory("ckks")
    vectors = [rng.uniform(-1e5, 1e5, scheme.slot_count + 500) for _ in range(N_BANKS)]
    exact = np.sum(vectors, axis=0)
    error = np.abs(consortium_sum(scheme, vectors) - exact)
    assert error.max() <= 1e-6 * np.abs(exact).max()
    # the error is noise of fixed absolute size, far below the criterion
    assert error.max() <= 1e-2


@pytest.mark.parametrize("pattern", ["all_max", "all_min", "alternating"])
def test_ckks_sums_at_the_range_limit_do_not_overflow(
    scheme_factory: Callable[..., HEScheme], pattern: str
) -> None:
    scheme = scheme_factory("ckks")
    limit = scheme.max_abs_value
    base = {
        "all_max": np.full(300, limit),
        "all_min": np.full(300, -limit),
        "alternating": np.resize([limit, -limit], 300),
    }[pattern]
    vectors = [base.copy() for _ in range(scheme.max_addends)]
    exact = base * scheme.max_addends
    error = np.abs(consortium_sum(scheme, vectors) - exact)
    assert error.max() <= 1e-6 * np.abs(exact).max()


def test_paillier_sum_of_64_banks_is_exact(
    scheme_factory: Callable[..., HEScheme], rng: np.random.Generator
) -> None:
    scheme = scheme_factory("paillier")
    frac_bits = int(scheme.parameters["frac_bits"])
    vectors = [rng.uniform(-1e5, 1e5, 2 * scheme.slot_count + 5) for _ in range(N_BANKS)]
    fixed = np.sum([np.rint(np.ldexp(vector, frac_bits)).astype(np.int64) for vector in vectors], axis=0)
    decrypted = consortium_sum(scheme, vectors)
    assert np.array_equal(decrypted, np.ldexp(fixed.astype(np.float64), -frac_bits))
    assert np.abs(decrypted - np.sum(vectors, axis=0)).max() <= N_BANKS * 2.0 ** (-frac_bits - 1)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_paillier_headroom_holds_max_addends_at_the_bound(
    scheme_factory: Callable[..., HEScheme], sign: float
) -> None:
    scheme = scheme_factory("paillier")
    vector = np.full(scheme.slot_count, sign * scheme.max_abs_value)
    decrypted = consortium_sum(scheme, [vector] * scheme.max_addends)
    assert np.array_equal(decrypted, vector * scheme.max_addends)


def test_paillier_rounds_half_to_even_like_numpy(scheme_factory: Callable[..., HEScheme]) -> None:
    scheme = scheme_factory("paillier", frac_bits=4)
    ties = np.array([1 / 32, 3 / 32, -1 / 32, -3 / 32, 0.5 / 16 + 1e-9])
    decrypted = scheme.decrypt(scheme.encrypt(ties))
    assert np.array_equal(decrypted, np.rint(ties * 16) / 16)


def test_plain_flat_sum_is_the_float64_sum(
    scheme_factory: Callable[..., HEScheme], rng: np.random.Generator
) -> None:
    scheme = scheme_factory("plain")
    vectors = [rng.uniform(-1e5, 1e5, 100) for _ in range(N_BANKS)]
    expected = np.zeros(100)
    for vector in vectors:
        expected = expected + vector
    assert np.array_equal(consortium_sum(scheme, vectors), expected)


@pytest.mark.parametrize("name", ["ckks", "paillier"])
def test_default_contexts_sum_64_masked_words_exactly(name: str, rng: np.random.Generator) -> None:
    """The protocol's payloads: integers below 2^31 from 64 banks, recovered exactly after rounding."""
    from crypto.masking import FixedPoint
    from crypto.registry import generate

    scheme = generate(name, **({"key_bits": 1024} if name == "paillier" else {}))
    codec = FixedPoint()
    vectors = [rng.integers(0, codec.modulus, 300).astype(np.float64) for _ in range(64)]
    total = scheme.decrypt(scheme.aggregate([scheme.encrypt(v) for v in vectors]))
    np.testing.assert_array_equal(np.rint(total), np.sum(vectors, axis=0))
    assert np.abs(total - np.rint(total)).max() < 0.25  # what FixedPoint.from_decrypted accepts
