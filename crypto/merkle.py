"""Merkle trees of a transparency log, as RFC 9162 (Certificate Transparency 2.0) defines them.

The contribution ledger is an append-only list of entries. Its tree hash commits to every entry
in order; an *inclusion proof* shows that an entry is the ``index``-th of a tree of ``size``
entries with a given root, a *consistency proof* that a tree of ``old_size`` entries is a prefix
of a later one. A bank that kept an earlier root can thus check, from a few hashes, that nobody
rewrote the log it saw, not even the consortium's database administrator.

- leaf hash: ``SHA-256(0x00 || entry)``; interior node: ``SHA-256(0x01 || left || right)``; the
  empty tree: ``SHA-256("")`` (RFC 9162 section 2.1.1).
- Proofs are built by the recursive definitions of sections 2.1.3.1 and 2.1.4.1 and checked by
  the verification algorithms of sections 2.1.3.2 and 2.1.4.2.

Every check raises :class:`ProofError` saying what did not hold; a verifier that returns
without raising accepted the proof. The verifiers are tested on the published RFC 6962 test
vectors and on proofs altered bit by bit, component by component.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "ProofError",
    "Tree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof that does not prove what it claims (or is malformed)."""


def leaf_hash(entry: bytes) -> bytes:
    """The hash of one log entry."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n`` > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """The tree hash of the leaf hashes ``leaves``."""
    return Tree(leaves).root()


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``leaves`` (leaf hashes)."""
    return Tree(leaves).inclusion_proof(index)


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """The proof that the first ``old_size`` leaves form a prefix of the tree of ``leaves``."""
    return Tree(leaves).consistency_proof(old_size)


class Tree:
    """A growing log's tree that keeps every perfect subtree's hash, so that roots and proofs of
    any of its sizes cost O(log² n) hashes instead of rehashing every leaf.

    ``levels[k][i]`` is the hash of leaves ``[i * 2**k, (i + 1) * 2**k)``. Roots and proofs equal
    :func:`root`, :func:`inclusion_proof` and :func:`consistency_proof` over the same leaves.
    """

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        """Leaves appended so far."""
        return len(self.levels[0])

    def append(self, leaf: bytes) -> None:
        """Add the next leaf hash."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash has {HASH_SIZE} bytes, not {len(leaf)}")
        self.levels[0].append(leaf)
        k = 0
        while len(self.levels[k]) % 2 == 0:  # a subtree of 2**(k+1) leaves just completed
            if len(self.levels) == k + 1:
                self.levels.append([])
            self.levels[k + 1].append(node_hash(self.levels[k][-2], self.levels[k][-1]))
            k += 1

    def root_with(self, *leaves: bytes) -> bytes:
        """The root the tree would have with ``leaves`` appended, leaving the tree as it is (the
        ledger signs it before the transaction that appends the entries commits)."""
        peaks: list[tuple[int, bytes]] = []
        offset = 0
        for k in range(len(self.levels) - 1, -1, -1):
            if self.size >> k & 1:
                peaks.append((1 << k, self.levels[k][offset >> k]))
                offset += 1 << k
        for leaf in leaves:
            peaks.append((1, leaf))
            while len(peaks) > 1 and peaks[-1][0] == peaks[-2][0]:
                (n, left), (_, right) = peaks[-2], peaks[-1]
                peaks[-2:] = [(2 * n, node_hash(left, right))]
        if not peaks:
            return EMPTY_ROOT
        top = peaks[-1][1]
        for _, left in reversed(peaks[:-1]):
            top = node_hash(left, top)
        return top

    def _hash(self, lo: int, hi: int) -> bytes:
        """The tree hash of leaves ``[lo, hi)`` as the RFC splits them (``lo`` is a multiple of
        the largest power of two not above ``hi - lo``, as every range the proofs ask for is)."""
        n = hi - lo
        if n & (n - 1) == 0:
            k = n.bit_length() - 1
            return self.levels[k][lo >> k]
        k = _split(n)
        return node_hash(self._hash(lo, lo + k), self._hash(lo + k, hi))

    def _check_size(self, size: int | None) -> int:
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"the tree holds {self.size} leaves, not {size}")
        return size

    def root(self, size: int | None = None) -> bytes:
        """The root of the tree's first ``size`` leaves (all by default)."""
        size = self._check_size(size)
        return EMPTY_ROOT if size == 0 else self._hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of leaf ``index`` in the tree of the first ``size`` leaves."""
        size = self._check_size(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of {size}")
        path: list[bytes] = []
        lo, hi = 0, size
        while hi - lo > 1:
            k = _split(hi - lo)
            if index < lo + k:
                path.append(self._hash(lo + k, hi))
                hi = lo + k
            else:
                path.append(self._hash(lo, lo + k))
                lo += k
        return path[::-1]

    def consistency_proof(self, old_size: int, size: int | None = None) -> list[bytes]:
        """The proof that the first ``old_size`` leaves are a prefix of the first ``size``."""
        size = self._check_size(size)
        if not 0 <= old_size <= size:
            raise ValueError(f"a tree of {old_size} is not a prefix of a tree of {size}")
        if old_size in (0, size):
            return []
        proof: list[bytes] = []
        lo, hi, m, complete = 0, size, old_size, True
        while m != hi - lo:
            k = _split(hi - lo)
            if m <= k:
                proof.append(self._hash(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._hash(lo, lo + k))
                lo, m, complete = lo + k, m - k, False
        if not complete:
            proof.append(self._hash(lo, hi))
        return proof[::-1]


def _check_hashes(name: str, values: Sequence[bytes]) -> None:
    for i, value in enumerate(values):
        if not isinstance(value, bytes) or len(value) != HASH_SIZE:
            raise ProofError(f"{name}[{i}] is not a {HASH_SIZE}-byte hash")


def verify_inclusion(index: int, size: int, entry_hash: bytes, proof: Sequence[bytes], expected_root: bytes) -> None:
    """Check that ``entry_hash`` is leaf ``index`` of the tree of ``size`` leaves whose root is
    ``expected_root`` (RFC 9162, 2.1.3.2).

    Raises
    ------
    ProofError
        The proof does not hold, or the claim is impossible (index outside the tree).
    """
    _check_hashes("proof", proof)
    _check_hashes("hash", [entry_hash, expected_root])
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size}")
    fn, sn, r = index, size - 1, entry_hash
    for p in proof:
        if sn == 0:
            raise ProofError("the proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the proof is shorter than the tree is deep")
    if r != expected_root:
        raise ProofError("the proof leads to another root")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> None:
    """Check that the tree of ``old_size`` leaves with root ``old_root`` is a prefix of the tree
    of ``new_size`` leaves with root ``new_root`` (RFC 9162, 2.1.4.2).

    Raises
    ------
    ProofError
        The proof does not hold: the log was rewritten or forked between the two roots.
    """
    _check_hashes("proof", proof)
    if not isinstance(old_root, bytes) or not isinstance(new_root, bytes):
        raise ProofError("the roots must be bytes")
    if old_size < 1:
        raise ProofError("an empty tree is a prefix of any tree: there is nothing to prove")
    if old_size > new_size:
        raise ProofError(f"a tree of {old_size} cannot be a prefix of a tree of {new_size}")
    if old_size == new_size:
        if proof:
            raise ProofError("trees of one size need an empty proof")
        if old_root != new_root:
            raise ProofError("two different roots for trees of the same size")
        return
    if not proof:
        raise ProofError("an empty proof for trees of different sizes")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node of the new tree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the proof is shorter than the tree is deep")
    if fr != old_root:
        raise ProofError("the proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("the proof does not lead to the new root")
