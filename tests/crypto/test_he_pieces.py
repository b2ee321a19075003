"""A sum split into pieces of whole ciphertexts, summed apart and joined, is the sum: byte for byte
(the aggregator sums a large round's pieces in several processes and serves the joined bytes)."""

from __future__ import annotations

import numpy as np
import pytest

from crypto.scheme import AggregationError, CorruptPayloadError, HEScheme, unframe


def _payloads(scheme: HEScheme, rng: np.random.Generator, n_values: int, banks: int = 3) -> list[bytes]:
    return [scheme.encrypt(rng.uniform(-100, 100, n_values)) for _ in range(banks)]


@pytest.mark.parametrize("count", [1, 2, 3, 7])
@pytest.mark.parametrize("length", ["three and a bit", "exactly two", "under one"])
def test_pieces_summed_apart_and_joined_equal_the_whole_sum_byte_for_byte(
    bank_scheme: HEScheme, aggregator_scheme: HEScheme, rng: np.random.Generator, count: int, length: str
) -> None:
    slots = bank_scheme.slot_count
    n_values = {"three and a bit": 3 * slots + 5, "exactly two": 2 * slots, "under one": max(1, slots - 1)}[length]
    if slots == 1:
        n_values = {"three and a bit": 41, "exactly two": 2, "under one": 1}[length]
    payloads = _payloads(bank_scheme, rng, n_values)
    whole = aggregator_scheme.aggregate(payloads)
    pieces = aggregator_scheme.pieces(n_values, count)
    assert [position for piece in pieces for position in piece] == list(range(n_values))
    assert all(piece.start % aggregator_scheme.slot_count == 0 for piece in pieces)
    parts = [aggregator_scheme.aggregate(payloads, values=piece) for piece in pieces]
    joined = aggregator_scheme.concatenate(parts)
    assert joined == whole
    assert unframe(joined)[0].n_addends == 3
    np.testing.assert_array_equal(bank_scheme.decrypt(joined), bank_scheme.decrypt(whole))


def test_pieces_never_split_a_ciphertext_and_never_come_empty(aggregator_scheme: HEScheme) -> None:
    slots = aggregator_scheme.slot_count
    for n_values in (1, slots, slots + 1, 10 * slots - 1):
        for count in (1, 2, 4, 64):
            pieces = aggregator_scheme.pieces(n_values, count)
            assert all(len(piece) > 0 for piece in pieces)
            assert len(pieces) <= min(count, -(-n_values // slots))
            assert pieces[0].start == 0 and pieces[-1].stop == n_values
            assert all(a.stop == b.start for a, b in zip(pieces, pieces[1:], strict=False))


def test_a_range_that_is_not_a_piece_is_refused(bank_scheme: HEScheme, rng: np.random.Generator) -> None:
    slots = bank_scheme.slot_count
    n_values = 2 * slots + 3
    payloads = _payloads(bank_scheme, rng, n_values, banks=2)
    bad = [range(0, n_values + 1), range(0, 0), range(0, n_values, 2)]
    if slots > 1:
        bad += [range(1, n_values), range(0, slots + 1)]
    for values in bad:
        with pytest.raises(AggregationError, match="not a piece"):
            bank_scheme.aggregate(payloads, values=values)


def test_pieces_of_different_sums_or_split_inside_a_ciphertext_are_not_joined(
    bank_scheme: HEScheme, rng: np.random.Generator
) -> None:
    slots = bank_scheme.slot_count
    n_values = 2 * slots + 3
    payloads = _payloads(bank_scheme, rng, n_values)
    first, second = bank_scheme.pieces(n_values, 2)
    with pytest.raises(AggregationError, match="different numbers of contributions"):
        bank_scheme.concatenate([bank_scheme.aggregate(payloads[:2], values=first),
                                 bank_scheme.aggregate(payloads, values=second)])
    if slots > 1:
        short = bank_scheme.encrypt(np.ones(slots - 1))
        with pytest.raises(AggregationError, match="ends inside a ciphertext"):
            bank_scheme.concatenate([short, short])
    with pytest.raises(AggregationError, match="nothing to concatenate"):
        bank_scheme.concatenate([])


def test_unchecked_bodies_skip_only_the_digest(bank_scheme: HEScheme, rng: np.random.Generator) -> None:
    """``check_bodies=False`` is for bytes checked before (a blob read back against its name): it
    trusts the body's digest, never its structure or the header."""
    payloads = _payloads(bank_scheme, rng, 5, banks=2)
    damaged = bytearray(payloads[1])
    damaged[-1] ^= 0x01
    with pytest.raises(CorruptPayloadError, match="payload 1"):
        bank_scheme.aggregate([payloads[0], bytes(damaged)])
    header = bytearray(payloads[1])
    header[12] ^= 0x01
    with pytest.raises(Exception, match="payload 1"):
        bank_scheme.aggregate([payloads[0], bytes(header)], check_bodies=False)
    assert bank_scheme.aggregate(payloads, check_bodies=False) == bank_scheme.aggregate(payloads)
