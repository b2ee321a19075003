"""Paillier fixed-point packing and the CRT shortcut, checked against first principles."""

from __future__ import annotations

import math
import secrets

import gmpy2  # type: ignore[import-untyped]
import numpy as np
import phe  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto.paillier import (
    NthPowerCRT,
    PaillierParameters,
    decode_fixed_point,
    encode_fixed_point,
    pack_slots,
    unpack_slots,
)


@given(st.integers(min_value=1, max_value=64).flatmap(
    lambda bits: st.tuples(st.just(bits), st.lists(st.integers(0, 2**bits - 1), max_size=40))
))
def test_pack_then_unpack_is_identity(case: tuple[int, list[int]]) -> None:
    slot_bits, units = case
    packed = pack_slots(units, slot_bits=slot_bits)
    assert packed < 2 ** (slot_bits * len(units)) or not units
    assert unpack_slots(packed, count=len(units), slot_bits=slot_bits) == units


@given(st.lists(st.lists(st.integers(0, 2**20), min_size=5, max_size=5), min_size=1, max_size=8))
def test_sum_of_packed_is_packed_sum_while_slots_do_not_overflow(rows: list[list[int]]) -> None:
    # 8 addends of 21-bit values fit a 24-bit slot: packed addition is slot-wise addition
    total = sum(pack_slots(row, slot_bits=24) for row in rows)
    assert unpack_slots(total, count=5, slot_bits=24) == [sum(column) for column in zip(*rows)]


@settings(max_examples=50)
@given(st.lists(st.floats(-1e6, 1e6), max_size=30), st.integers(0, 30))
def test_fixed_point_round_trip_is_within_half_a_step(values: list[float], frac_bits: int) -> None:
    array = np.array(values, dtype=np.float64)
    decoded = decode_fixed_point(encode_fixed_point(array, frac_bits=frac_bits), frac_bits=frac_bits)
    assert np.all(np.abs(decoded - array) <= 2.0 ** (-frac_bits - 1))


def test_default_bit_budget_is_the_documented_one() -> None:
    """The module docstring's figures: B = 2^31, 39-bit slots, 52 values a ciphertext, ~10 B a value."""
    params = PaillierParameters()
    assert params.fixed_bound == 2**31
    assert params.slot_bits == 39
    assert params.slots_per_ciphertext == 52
    assert 9.5 < params.ciphertext_bytes / params.slots_per_ciphertext < 10.5


def test_crt_nth_power_equals_public_key_formula() -> None:
    public_key, private_key = phe.generate_paillier_keypair(n_length=1024)
    n = gmpy2.mpz(public_key.n)
    crt = NthPowerCRT.from_primes(private_key.p, private_key.q)
    for _ in range(20):
        r = gmpy2.mpz(secrets.randbelow(int(n) - 1) + 1)
        assert crt(r) == gmpy2.powmod(r, n, n * n)


def test_crt_ciphertexts_decrypt_with_python_paillier() -> None:
    public_key, private_key = phe.generate_paillier_keypair(n_length=1024)
    n = public_key.n
    crt = NthPowerCRT.from_primes(private_key.p, private_key.q)
    message = secrets.randbelow(n)
    r = secrets.randbelow(n - 1) + 1
    ciphertext = (1 + message * n) * int(crt(gmpy2.mpz(r))) % (n * n)
    assert math.gcd(r, n) == 1
    assert ciphertext == public_key.raw_encrypt(message, r_value=r)
    assert private_key.raw_decrypt(ciphertext) == message
