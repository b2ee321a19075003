"""Fixtures for the HE scheme tests: one small key per scheme, shared by the session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from crypto.registry import SCHEMES, generate, load_context
from crypto.scheme import HEScheme

# 1024-bit Paillier keys keep the suite fast; production uses 2048 (the default). These tests
# exercise the schemes on raw floats, so CKKS takes the finer scale and Paillier 20 fractional
# bits; the protocol's defaults (integers below 2^31) are tested in test_he_precision.py.
FAST_PARAMS: dict[str, dict[str, Any]] = {
    "ckks": {"scale_bits": 30},
    "paillier": {"key_bits": 1024, "frac_bits": 20, "value_bound": 1e6},
    "plain": {},
}


def make_scheme(name: str, **overrides: Any) -> HEScheme:
    """Generate a fresh key of ``name`` with test-friendly parameters."""
    return generate(name, **{**FAST_PARAMS[name], **overrides})


@pytest.fixture(scope="session")
def scheme_factory() -> Callable[..., HEScheme]:
    """``make_scheme(name, **overrides)``: a new key each call."""
    return make_scheme


@pytest.fixture(scope="session", params=SCHEMES)
def bank_scheme(request: pytest.FixtureRequest) -> HEScheme:
    """A scheme object holding the secret key, as a bank has it after the key ceremony."""
    return make_scheme(request.param)


@pytest.fixture(scope="session")
def aggregator_scheme(bank_scheme: HEScheme) -> HEScheme:
    """The same key loaded from the public context only, as the aggregator holds it."""
    return load_context(bank_scheme.public_context(), require_public=True)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


def expected_sum(scheme: HEScheme, vectors: list[np.ndarray]) -> np.ndarray:
    """What an exact scheme must decrypt: Paillier sums fixed-point-rounded inputs exactly."""
    if scheme.name == "paillier":
        frac_bits = int(scheme.parameters["frac_bits"])
        fixed = [np.rint(np.ldexp(vector, frac_bits)).astype(np.int64) for vector in vectors]
        return np.asarray(np.ldexp(np.sum(fixed, axis=0).astype(np.float64), -frac_bits))
    total = np.zeros_like(vectors[0])
    for vector in vectors:
        total = total + vector
    return total


def assert_close_sum(scheme: HEScheme, decrypted: np.ndarray, vectors: list[np.ndarray]) -> None:
    """Paillier must match exactly; CKKS within 1e-6 of the largest |sum|.

    CKKS noise is absolute (about 1e-5 per contribution at the default scale), so for sums of
    small values the CKKS tolerance never drops below 1e-3.

    The plaintext scheme sums float64 in whatever grouping the aggregates imply, so it is
    held to float64 rounding (its exactness for one flat sum is tested separately).
    """
    expected = expected_sum(scheme, vectors)
    assert decrypted.dtype == np.float64
    assert decrypted.shape == expected.shape
    if scheme.name == "paillier":
        np.testing.assert_array_equal(decrypted, expected)
    else:
        largest = float(np.max(np.abs(expected), initial=0.0))
        if scheme.name == "ckks":
            tolerance = max(1e-6 * largest, 1e-3)
        else:
            tolerance = 1e-12 * max(largest, 1.0)
        np.testing.assert_allclose(decrypted, expected, rtol=0, atol=tolerance)


@pytest.fixture(scope="session")
def assert_sum() -> Callable[[HEScheme, np.ndarray, list[np.ndarray]], None]:
    """``assert_sum(scheme, decrypted, vectors)``: the decrypted aggregate is the inputs' sum."""
    return assert_close_sum
