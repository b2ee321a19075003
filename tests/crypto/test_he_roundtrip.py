"""Encrypt, aggregate and decrypt with every scheme: the sums the protocol relies on."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from crypto.registry import SCHEMES, load_context
from crypto.scheme import (
    AggregationError,
    HEScheme,
    InvalidVectorError,
    MissingSecretKeyError,
    UnexpectedSecretKeyError,
    ValueRangeError,
    read_header,
)

AssertSum = Callable[[HEScheme, np.ndarray, list[np.ndarray]], None]


def test_round_trip_recovers_vector(
    bank_scheme: HEScheme, rng: np.random.Generator, assert_sum: AssertSum
) -> None:
    vector = rng.uniform(-1e5, 1e5, 300)
    payload = bank_scheme.encrypt(vector)
    assert_sum(bank_scheme, bank_scheme.decrypt(payload), [vector])


def test_aggregator_sums_banks_without_secret_key(
    bank_scheme: HEScheme,
    aggregator_scheme: HEScheme,
    rng: np.random.Generator,
    assert_sum: AssertSum,
) -> None:
    vectors = [rng.uniform(-1e5, 1e5, 257) for _ in range(5)]
    payloads = [bank_scheme.encrypt(vector) for vector in vectors]
    total = aggregator_scheme.aggregate(payloads)
    header = read_header(total)
    assert (header.n_values, header.n_addends) == (257, 5)
    assert_sum(bank_scheme, bank_scheme.decrypt(total), vectors)


def test_public_context_can_encrypt_for_the_banks(
    bank_scheme: HEScheme, aggregator_scheme: HEScheme, assert_sum: AssertSum
) -> None:
    vector = np.array([1.5, -2.25, 0.0, 1234.5])
    assert_sum(bank_scheme, bank_scheme.decrypt(aggregator_scheme.encrypt(vector)), [vector])


def test_vectors_longer_than_one_ciphertext_are_chunked(
    bank_scheme: HEScheme,
    aggregator_scheme: HEScheme,
    rng: np.random.Generator,
    assert_sum: AssertSum,
) -> None:
    length = 2 * bank_scheme.slot_count + 3
    vectors = [rng.uniform(-1e3, 1e3, length) for _ in range(3)]
    # mark the chunk borders so a shifted or dropped chunk cannot go unnoticed
    for vector in vectors:
        vector[bank_scheme.slot_count - 1 : bank_scheme.slot_count + 1] = [7.0, -7.0]
    total = aggregator_scheme.aggregate([bank_scheme.encrypt(vector) for vector in vectors])
    decrypted = bank_scheme.decrypt(total)
    assert decrypted.shape == (length,)
    assert_sum(bank_scheme, decrypted, vectors)


@pytest.mark.parametrize("length", [0, 1])
def test_empty_and_single_value_vectors(
    bank_scheme: HEScheme, aggregator_scheme: HEScheme, length: int, assert_sum: AssertSum
) -> None:
    vectors = [np.full(length, 3.25), np.full(length, -1.0)]
    total = aggregator_scheme.aggregate([bank_scheme.encrypt(vector) for vector in vectors])
    decrypted = bank_scheme.decrypt(total)
    assert decrypted.shape == (length,)
    assert_sum(bank_scheme, decrypted, vectors)


def test_decryption_is_deterministic_across_banks(
    bank_scheme: HEScheme, aggregator_scheme: HEScheme, rng: np.random.Generator
) -> None:
    payloads = [bank_scheme.encrypt(rng.uniform(-10, 10, 100)) for _ in range(3)]
    total = aggregator_scheme.aggregate(payloads)
    other_bank = load_context(bank_scheme.secret_context())
    first = bank_scheme.decrypt(total)
    assert np.array_equal(first, bank_scheme.decrypt(total))
    assert np.array_equal(first, other_bank.decrypt(total))


def test_aggregates_of_aggregates_count_all_contributions(
    bank_scheme: HEScheme,
    aggregator_scheme: HEScheme,
    rng: np.random.Generator,
    assert_sum: AssertSum,
) -> None:
    vectors = [rng.uniform(-50, 50, 40) for _ in range(4)]
    payloads = [bank_scheme.encrypt(vector) for vector in vectors]
    left = aggregator_scheme.aggregate(payloads[:2])
    right = aggregator_scheme.aggregate(payloads[2:])
    total = aggregator_scheme.aggregate([left, right])
    assert read_header(total).n_addends == 4
    assert_sum(bank_scheme, bank_scheme.decrypt(total), vectors)


def test_aggregating_more_than_max_addends_is_refused(scheme_factory: Callable[..., HEScheme]) -> None:
    for name in SCHEMES:
        scheme = scheme_factory(name, max_addends=3)
        payloads = [scheme.encrypt(np.ones(4)) for _ in range(4)]
        assert read_header(scheme.aggregate(payloads[:3])).n_addends == 3
        with pytest.raises(AggregationError, match="4 contributions.*at most 3"):
            scheme.aggregate(payloads)


def test_aggregating_nothing_is_refused(aggregator_scheme: HEScheme) -> None:
    with pytest.raises(AggregationError, match="no payloads"):
        aggregator_scheme.aggregate([])


@pytest.mark.parametrize(
    ("vector", "error", "message"),
    [
        (np.ones((2, 3)), InvalidVectorError, "1-D"),
        (np.array([1 + 2j]), InvalidVectorError, "real numbers"),
        (np.array(["a"]), InvalidVectorError, "real numbers"),
        (np.array([1.0, np.nan]), ValueRangeError, "index 1.*finite"),
        (np.array([np.inf]), ValueRangeError, "finite"),
    ],
)
def test_invalid_vectors_are_refused(
    bank_scheme: HEScheme, vector: np.ndarray, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        bank_scheme.encrypt(vector)


def test_values_outside_declared_range_are_refused(bank_scheme: HEScheme) -> None:
    limit = bank_scheme.max_abs_value
    if bank_scheme.name == "plain":  # no declared range: any finite float64 is accepted
        assert limit == np.inf
        assert bank_scheme.decrypt(bank_scheme.encrypt(np.array([1e300])))[0] == 1e300
        return
    assert bank_scheme.decrypt(bank_scheme.encrypt(np.array([limit, -limit])))[0] == pytest.approx(limit)
    for value in (np.nextafter(limit, np.inf), -2 * limit):
        with pytest.raises(ValueRangeError, match="index 2 is outside the range"):
            bank_scheme.encrypt(np.array([0.0, 1.0, value]))


def test_integer_and_list_inputs_are_accepted(bank_scheme: HEScheme) -> None:
    decrypted = bank_scheme.decrypt(bank_scheme.encrypt([1, 2, 3]))
    np.testing.assert_allclose(decrypted, [1.0, 2.0, 3.0], rtol=0, atol=1e-4)


def test_context_round_trips_preserve_key_and_role(bank_scheme: HEScheme) -> None:
    public = load_context(bank_scheme.public_context())
    secret = load_context(bank_scheme.secret_context())
    assert type(public) is type(bank_scheme) is type(secret)
    assert public.key_id == secret.key_id == bank_scheme.key_id
    assert bank_scheme.has_secret_key and secret.has_secret_key and not public.has_secret_key
    assert public.parameters == bank_scheme.parameters
    # re-exporting the public context from a loaded object gives a loadable, identical key
    assert load_context(public.public_context()).key_id == bank_scheme.key_id
    with pytest.raises(MissingSecretKeyError, match="public material only"):
        public.secret_context()
    with pytest.raises(UnexpectedSecretKeyError):
        load_context(bank_scheme.secret_context(), require_public=True)


def test_each_generation_makes_a_new_key(scheme_factory: Callable[..., HEScheme]) -> None:
    for name in SCHEMES:
        assert scheme_factory(name).key_id != scheme_factory(name).key_id


def test_generate_accepts_its_own_parameters(bank_scheme: HEScheme) -> None:
    twin = type(bank_scheme).generate(**bank_scheme.parameters)
    assert twin.parameters == bank_scheme.parameters
    assert twin.key_id != bank_scheme.key_id
