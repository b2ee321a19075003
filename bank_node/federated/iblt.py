"""An invertible table of integer keys that survives being summed under additive HE.

Each bank encodes its multiset of keys into a fixed-length vector of small integers; the
aggregator adds the banks' encrypted vectors; whoever decrypts the sum decodes the *union*
multiset (every key with its total multiplicity) without learning which bank holds which key.
This is an invertible Bloom lookup table (Goodrich and Mitzenmacher, 2011) laid out for
homomorphic sums:

* the table has ``n_cells`` cells split into ``n_hashes`` equal sub-tables; a key lands in one
  cell of each sub-table, at keyed-hash positions;
* a cell holds, summed over the keys landing in it (each times its multiplicity): the count,
  each limb of the key (``limb_bits`` wide, so every sum stays a small integer that CKKS carries
  exactly after rounding), and each limb of a keyed check value of the key;
* decoding peels: a cell whose sums are ``count`` times one key (limbs divisible by the count,
  the check value matching, the cell being one of that key's positions) yields that key with
  multiplicity ``count``, which is then taken out of its other cells, freeing more cells.

With three hashes peeling empties the table with high probability while ``n_cells`` exceeds
about 1.22 distinct keys per cell; :func:`cells_for` leaves a margin, and a failure is always
detected (cells left over, or values that are not integers), never silently wrong: the caller
retries with a larger table and fresh positions.

The vector is field-major: ``n_cells`` counts, then ``n_cells`` values per key limb, then per
check limb.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

IntMatrix = npt.NDArray[np.int64]
IntArray = npt.NDArray[np.int64]

#: Largest decoded deviation from an integer accepted as rounding noise (CKKS adds ~1e-5).
MAX_ROUNDING_NOISE: Final = 0.25

_MIX1: Final = np.uint64(0xBF58476D1CE4E5B9)
_MIX2: Final = np.uint64(0x94D049BB133111EB)
_ODD: Final = np.uint64(0x9E3779B97F4A7C15)


class TableDecodeError(ValueError):
    """The summed table could not be decoded completely (too full, or not a sum of tables)."""


@dataclass(frozen=True)
class TableLayout:
    """Shape and hashing of one invertible table; every bank must use the same layout.

    Attributes
    ----------
    n_cells
        Cells in the table (a multiple of ``n_hashes``).
    key_limbs
        Limbs per key.
    limb_bits
        Bits per limb; each limb is in ``[0, 2**limb_bits)``.
    check_limbs
        Limbs of the check value (``check_limbs * limb_bits`` bits of protection per cell).
    seed
        Secret per table: positions and check values are keyed hashes of it. Changing it (a new
        attempt) moves every key.
    n_hashes
        Cells per key.
    """

    n_cells: int
    key_limbs: int
    limb_bits: int
    check_limbs: int
    seed: bytes
    n_hashes: int = 3

    def __post_init__(self) -> None:
        if self.n_hashes < 2 or self.n_cells <= 0 or self.n_cells % self.n_hashes:
            raise ValueError(f"n_cells must be a positive multiple of n_hashes={self.n_hashes}, got {self.n_cells}")
        if self.key_limbs < 1 or self.check_limbs < 1:
            raise ValueError("a table needs at least one key limb and one check limb")
        if not 1 <= self.limb_bits <= 20:
            raise ValueError(f"limb_bits must be in 1..20, got {self.limb_bits}")
        if len(self.seed) < 16:
            raise ValueError("the table seed must hold at least 16 bytes")

    @property
    def n_fields(self) -> int:
        """Values per cell: the count, the key limbs, the check limbs."""
        return 1 + self.key_limbs + self.check_limbs

    @property
    def n_values(self) -> int:
        """Length of the encoded vector."""
        return self.n_fields * self.n_cells

    @property
    def sub_cells(self) -> int:
        """Cells per sub-table."""
        return self.n_cells // self.n_hashes

    def _seed_word(self, label: str) -> np.uint64:
        digest = hashlib.sha256(self.seed + b"\x00" + label.encode()).digest()
        return np.uint64(int.from_bytes(digest[:8], "little"))

    def positions(self, keys: IntMatrix) -> IntMatrix:
        """Cell index of each key in each sub-table, shape ``(n_keys, n_hashes)``."""
        sub = np.uint64(self.sub_cells)
        columns = [
            (_keyed_hash(keys, self._seed_word(f"position-{j}")) % sub).astype(np.int64) + j * self.sub_cells
            for j in range(self.n_hashes)
        ]
        return np.stack(columns, axis=1) if columns else np.empty((len(keys), 0), dtype=np.int64)

    def checks(self, keys: IntMatrix) -> IntMatrix:
        """The check limbs of each key, shape ``(n_keys, check_limbs)``."""
        word = _keyed_hash(keys, self._seed_word("check"))
        mask = np.uint64((1 << self.limb_bits) - 1)
        return np.stack(
            [((word >> np.uint64(i * self.limb_bits)) & mask).astype(np.int64) for i in range(self.check_limbs)],
            axis=1,
        )


def cells_for(n_keys: int, *, n_hashes: int = 3, load: float = 1.3, attempt: int = 0) -> int:
    """A table size that decodes ``n_keys`` distinct keys with high probability.

    ``load`` cells per key (the peeling threshold for three hashes is about 1.22), a fixed
    margin for small tables, and half as much again for each failed attempt.
    """
    cells = math.ceil(n_keys * load * 1.5**attempt) + 8 * n_hashes
    return cells + (-cells) % n_hashes


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The splitmix64 finaliser: a bijection of 64-bit words that spreads every input bit."""
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))  # type: ignore[no-any-return]


def _keyed_hash(keys: IntMatrix, seed: np.uint64) -> npt.NDArray[np.uint64]:
    """A 64-bit keyed hash of each row of ``keys`` (not cryptographic: it only spreads keys)."""
    words = np.asarray(keys, dtype=np.int64).view(np.uint64)
    h = np.full(len(words), seed, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(words.shape[1]):
            h = _mix(h ^ (words[:, i] + _ODD * np.uint64(i + 1)))
    return h


def split_limbs(values: npt.ArrayLike, *, n_limbs: int, limb_bits: int) -> IntMatrix:
    """Non-negative integers to ``n_limbs`` limbs, least significant first."""
    v = np.asarray(values, dtype=np.int64)
    if v.size and (v.min() < 0 or (n_limbs * limb_bits < 63 and v.max() >> (n_limbs * limb_bits))):
        raise ValueError(f"values must fit in {n_limbs * limb_bits} unsigned bits")
    mask = (1 << limb_bits) - 1
    return np.stack([(v >> (i * limb_bits)) & mask for i in range(n_limbs)], axis=1)


def join_limbs(limbs: IntMatrix, *, limb_bits: int) -> IntArray:
    """Inverse of :func:`split_limbs`."""
    limbs = np.asarray(limbs, dtype=np.int64)
    out = np.zeros(len(limbs), dtype=np.int64)
    for i in range(limbs.shape[1]):
        out |= limbs[:, i] << (i * limb_bits)
    return out


def encode(layout: TableLayout, keys: IntMatrix, multiplicity: npt.ArrayLike | None = None) -> npt.NDArray[np.float64]:
    """This bank's table: every key (a row of limbs) added to its cells, times its multiplicity.

    Rows may repeat; repeats add up like multiplicities.
    """
    keys = np.asarray(keys, dtype=np.int64).reshape(-1, layout.key_limbs)
    if keys.size and (keys.min() < 0 or keys.max() >= 1 << layout.limb_bits):
        raise ValueError(f"key limbs must be in [0, 2**{layout.limb_bits})")
    weight = (
        np.ones(len(keys), dtype=np.float64)
        if multiplicity is None
        else np.asarray(multiplicity, dtype=np.float64).reshape(-1)
    )
    if len(weight) != len(keys):
        raise ValueError("one multiplicity per key is needed")
    fields = np.concatenate([weight[:, None], keys * weight[:, None], layout.checks(keys) * weight[:, None]], axis=1)
    cells = np.zeros((layout.n_fields, layout.n_cells), dtype=np.float64)
    for position in layout.positions(keys).T:
        for f in range(layout.n_fields):
            cells[f] += np.bincount(position, weights=fields[:, f], minlength=layout.n_cells)
    return cells.reshape(-1)


@dataclass(frozen=True)
class DecodedTable:
    """The distinct keys of a summed table and each one's total multiplicity."""

    keys: IntMatrix
    multiplicity: IntArray


def decode(layout: TableLayout, summed: npt.ArrayLike) -> DecodedTable:
    """Peel a summed table back into its keys.

    Raises
    ------
    TableDecodeError
        If the values are not integers within noise, a count is negative, or cells remain
        that no key explains (the table was too full for its keys: retry larger).
    """
    values = np.asarray(summed, dtype=np.float64)
    if values.shape != (layout.n_values,):
        raise TableDecodeError(f"expected {layout.n_values} values for this layout, got {values.size}")
    rounded = np.rint(values)
    noise = float(np.max(np.abs(values - rounded))) if values.size else 0.0
    if not noise <= MAX_ROUNDING_NOISE:
        raise TableDecodeError(f"summed table values are not integers (off by up to {noise:.3g})")
    cells = rounded.astype(np.int64).reshape(layout.n_fields, layout.n_cells)
    if (cells[0] < 0).any():
        raise TableDecodeError("summed table has negative counts: it is not a sum of tables")
    key_rows = slice(1, 1 + layout.key_limbs)
    check_rows = slice(1 + layout.key_limbs, layout.n_fields)
    found_keys: list[IntMatrix] = []
    found_counts: list[IntArray] = []
    # Only cells changed by the last round can have become pure.
    worklist = np.flatnonzero(cells[0] > 0)
    while len(worklist):
        candidates = worklist[cells[0, worklist] > 0]
        count = cells[0, candidates]
        limbs = cells[key_rows, candidates]
        checks = cells[check_rows, candidates]
        whole = ((limbs % count) == 0).all(axis=0) & ((checks % count) == 0).all(axis=0)
        candidates, count = candidates[whole], count[whole]
        key = (limbs[:, whole] // count).T
        check = (checks[:, whole] // count).T
        in_range = ((key >= 0) & (key < 1 << layout.limb_bits)).all(axis=1)
        candidates, count, key, check = candidates[in_range], count[in_range], key[in_range], check[in_range]
        if not len(candidates):
            break
        positions = layout.positions(key)
        own_cell = positions[np.arange(len(key)), candidates // layout.sub_cells] == candidates
        pure = own_cell & (layout.checks(key) == check).all(axis=1)
        if not pure.any():
            break
        candidates, key, count, positions = candidates[pure], key[pure], count[pure], positions[pure]
        # A key can be pure in several of its cells at once (a pure cell among a key's positions
        # holds only that key): take it out once, from the first of them.
        is_pure = np.zeros(layout.n_cells, dtype=bool)
        is_pure[candidates] = True
        first = np.where(is_pure[positions], positions, layout.n_cells).min(axis=1) == candidates
        key, count, positions = key[first], count[first], positions[first]
        fields = np.concatenate([count[:, None], key * count[:, None], layout.checks(key) * count[:, None]], axis=1)
        for position in positions.T:
            for f in range(layout.n_fields):
                np.subtract.at(cells[f], position, fields[:, f])
        found_keys.append(key)
        found_counts.append(count)
        touched = np.zeros(layout.n_cells, dtype=bool)
        touched[positions.ravel()] = True
        worklist = np.flatnonzero(touched)
    if cells.any():
        left = int(np.count_nonzero(cells.any(axis=0)))
        raise TableDecodeError(f"{left} of {layout.n_cells} cells could not be decoded: the table is too full")
    if not found_keys:
        return DecodedTable(np.empty((0, layout.key_limbs), dtype=np.int64), np.empty(0, dtype=np.int64))
    return DecodedTable(np.concatenate(found_keys), np.concatenate(found_counts))


__all__ = [
    "DecodedTable",
    "TableDecodeError",
    "TableLayout",
    "cells_for",
    "decode",
    "encode",
    "join_limbs",
    "split_limbs",
]
