"""The invertible table: banks' key multisets summed under HE decode to their union, or fail loudly."""

from __future__ import annotations

import numpy as np
import pytest

import crypto
from bank_node.federated.iblt import (
    TableDecodeError,
    TableLayout,
    cells_for,
    decode,
    encode,
    join_limbs,
    split_limbs,
)


def layout(n_keys: int, *, key_limbs: int = 6, seed: bytes = b"table-seed-0123456789", load: float = 1.3) -> TableLayout:
    return TableLayout(n_cells=cells_for(n_keys, load=load), key_limbs=key_limbs, limb_bits=12, check_limbs=2, seed=seed)


def as_multiset(keys: np.ndarray, counts: np.ndarray) -> dict[tuple[int, ...], int]:
    out: dict[tuple[int, ...], int] = {}
    for row, c in zip(map(tuple, keys.tolist()), counts.tolist()):
        out[row] = out.get(row, 0) + c
    return out


def bank_key_sets(rng: np.random.Generator, n_banks: int, n_keys: int) -> list[np.ndarray]:
    """Keys spread over banks, with keys shared between banks and repeated within one."""
    pool = rng.integers(0, 4096, size=(n_keys, 6))
    return [pool[rng.integers(0, n_keys, size=n_keys // n_banks + 5)] for _ in range(n_banks)]


@pytest.mark.parametrize("n_keys", [1, 50, 5_000])
def test_sum_of_bank_tables_decodes_to_the_union_multiset(n_keys: int) -> None:
    rng = np.random.default_rng(n_keys)
    banks = bank_key_sets(rng, 4, n_keys)
    union = np.concatenate(banks)
    table = layout(len(union))
    decoded = decode(table, sum(encode(table, keys) for keys in banks))
    expected = as_multiset(union, np.ones(len(union), dtype=np.int64))
    assert as_multiset(decoded.keys, decoded.multiplicity) == expected
    assert len(decoded.keys) == len(expected)  # each distinct key once


def test_explicit_multiplicities_add_up() -> None:
    keys = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
    table = layout(4)
    summed = encode(table, keys, [3, 1]) + encode(table, keys[:1], [2])
    decoded = decode(table, summed)
    assert as_multiset(decoded.keys, decoded.multiplicity) == {(1, 2, 3, 4, 5, 6): 5, (7, 8, 9, 10, 11, 12): 1}


def test_empty_tables_decode_to_nothing() -> None:
    table = layout(0)
    decoded = decode(table, encode(table, np.empty((0, 6), dtype=np.int64)) * 3)
    assert decoded.keys.shape == (0, 6) and decoded.multiplicity.size == 0


def test_an_overfull_table_is_refused_not_misread() -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 4096, size=(2_000, 6))
    small = TableLayout(n_cells=900, key_limbs=6, limb_bits=12, check_limbs=2, seed=b"table-seed-0123456789")
    with pytest.raises(TableDecodeError, match="could not be decoded: the table is too full"):
        decode(small, encode(small, keys))


def test_values_that_are_not_sums_of_tables_are_refused() -> None:
    table = layout(10)
    vector = encode(table, np.arange(60).reshape(10, 6))
    with pytest.raises(TableDecodeError, match="not integers"):
        decode(table, vector + 0.4)
    with pytest.raises(TableDecodeError, match="negative counts"):
        decode(table, -vector)
    with pytest.raises(TableDecodeError, match=f"expected {table.n_values} values"):
        decode(table, vector[:-1])
    garbage = np.zeros_like(vector)
    garbage[np.random.default_rng(0).integers(0, len(vector), 40)] = 7
    with pytest.raises(TableDecodeError):
        decode(table, garbage)


def test_positions_are_keyed_by_the_seed() -> None:
    keys = np.random.default_rng(1).integers(0, 4096, size=(200, 6))
    one, other = layout(200, seed=b"a" * 32), layout(200, seed=b"b" * 32)
    assert not np.array_equal(one.positions(keys), other.positions(keys))
    assert not np.array_equal(encode(one, keys), encode(other, keys))
    # A table summed under one seed does not decode under another.
    with pytest.raises(TableDecodeError):
        decode(other, encode(one, keys))


def test_key_limbs_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="key limbs must be in"):
        encode(layout(1), np.array([[4096, 0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="n_cells must be a positive multiple"):
        TableLayout(n_cells=10, key_limbs=1, limb_bits=12, check_limbs=1, seed=b"x" * 16)


def test_limbs_round_trip() -> None:
    values = np.array([0, 1, 4095, 4096, (1 << 48) - 1, 123456789012])
    limbs = split_limbs(values, n_limbs=4, limb_bits=12)
    assert limbs.max() < 4096
    assert np.array_equal(join_limbs(limbs, limb_bits=12), values)
    with pytest.raises(ValueError, match="48 unsigned bits"):
        split_limbs([1 << 48], n_limbs=4, limb_bits=12)


@pytest.mark.parametrize("scheme", ["ckks", "paillier"])
def test_tables_summed_under_encryption_decode_exactly(scheme: str) -> None:
    rng = np.random.default_rng(11)
    banks = bank_key_sets(rng, 3, 300 if scheme == "paillier" else 3_000)
    union = np.concatenate(banks)
    table = layout(len(union))
    secret = crypto.generate(scheme)
    public = crypto.load_context(secret.public_context(), require_public=True)
    summed = public.aggregate([secret.encrypt(encode(table, keys)) for keys in banks])
    decoded = decode(table, secret.decrypt(summed))
    assert as_multiset(decoded.keys, decoded.multiplicity) == as_multiset(union, np.ones(len(union), dtype=np.int64))
