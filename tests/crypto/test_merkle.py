"""The ledger's Merkle proofs: the published RFC 6962 test vectors, proofs built here checked by the
verifiers for every tree up to 40 leaves, and every altered proof refused (a verifier that accepts a
forged proof is the classic bug of these systems)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from crypto.merkle import (
    EMPTY_ROOT,
    ProofError,
    Tree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "merkle_proofs.json").read_text())
# The eight entries of the RFC 6962 reference tree the vectors are made on.
RFC_ENTRIES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                          "606162636465666768696a6b6c6d6e6f")]
RFC_ROOT_8 = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def _b(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _proof(case: dict[str, Any]) -> list[bytes]:
    return [_b(p) for p in case.get("proof") or []]


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: c["file"].removeprefix("testdata/"))
def test_published_inclusion_vectors(case: dict[str, Any]) -> None:
    def check() -> None:
        verify_inclusion(case["leafIdx"], case["treeSize"], _b(case["leafHash"]), _proof(case), _b(case["root"]))

    if case["wantErr"]:
        with pytest.raises(ProofError):
            check()
    else:
        check()


@pytest.mark.parametrize("case", VECTORS["consistency"], ids=lambda c: c["file"].removeprefix("testdata/"))
def test_published_consistency_vectors(case: dict[str, Any]) -> None:
    def check() -> None:
        verify_consistency(case["size1"], case["size2"], _b(case["root1"]), _b(case["root2"]), _proof(case))

    if case["wantErr"]:
        with pytest.raises(ProofError):
            check()
    else:
        check()


def test_the_vectors_cover_accepted_and_refused_proofs() -> None:
    for kind in ("inclusion", "consistency"):
        wanted = [case["wantErr"] for case in VECTORS[kind]]
        assert wanted.count(False) >= 5 and wanted.count(True) >= 80


def test_the_reference_tree_and_its_proofs_are_the_published_ones() -> None:
    leaves = [leaf_hash(entry) for entry in RFC_ENTRIES]
    assert root([]) == EMPTY_ROOT
    assert root(leaves).hex() == RFC_ROOT_8
    for case in VECTORS["inclusion"]:
        if not case["wantErr"] and case["treeSize"] <= 8 and root(leaves[: case["treeSize"]]) == _b(case["root"]):
            assert inclusion_proof(leaves[: case["treeSize"]], case["leafIdx"]) == _proof(case)
    matched = 0
    for case in VECTORS["consistency"]:
        if not case["wantErr"] and 0 < case["size1"] < case["size2"] <= 8:
            assert root(leaves[: case["size2"]]) == _b(case["root2"])
            assert consistency_proof(leaves[: case["size2"]], case["size1"]) == _proof(case)
            matched += 1
    assert matched >= 3


def _tree(n: int) -> list[bytes]:
    return [leaf_hash(f"entry {i}".encode()) for i in range(n)]


def _altered(proof: list[bytes]) -> list[list[bytes]]:
    """Every way to spoil a proof a little: a bit flipped in each component, a component dropped,
    one added at either end, two neighbours swapped."""
    spoiled = []
    for i, component in enumerate(proof):
        for bit in (0, 131, 255):
            flipped = bytearray(component)
            flipped[bit // 8] ^= 1 << (bit % 8)
            spoiled.append([*proof[:i], bytes(flipped), *proof[i + 1 :]])
        spoiled.append(proof[:i] + proof[i + 1 :])
        if i + 1 < len(proof) and proof[i] != proof[i + 1]:
            spoiled.append([*proof[:i], proof[i + 1], proof[i], *proof[i + 2 :]])
    spoiled.append([*proof, leaf_hash(b"extra")])
    spoiled.append([leaf_hash(b"extra"), *proof])
    return spoiled


@pytest.mark.parametrize("size", range(1, 41))
def test_inclusion_proofs_of_every_leaf_hold_and_no_altered_one_does(size: int) -> None:
    leaves = _tree(size)
    top = root(leaves)
    for index in range(size):
        proof = inclusion_proof(leaves, index)
        verify_inclusion(index, size, leaves[index], proof, top)
        for spoiled in _altered(proof):
            with pytest.raises(ProofError):
                verify_inclusion(index, size, leaves[index], spoiled, top)
        # The entry cannot be claimed at another place. (A tree of another size can share the
        # path's shape: the size is bound by the signed checkpoint that carries the root.)
        for other_index in {index + 1, index - 1, index ^ 1, size - 1 - index} - {index}:
            if 0 <= other_index < size:
                with pytest.raises(ProofError):
                    verify_inclusion(other_index, size, leaves[index], proof, top)
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaf_hash(b"not this one"), proof, top)


@pytest.mark.parametrize("new_size", range(1, 41))
def test_consistency_proofs_of_every_prefix_hold_and_no_altered_one_does(new_size: int) -> None:
    leaves = _tree(new_size)
    new_root = root(leaves)
    with pytest.raises(ProofError, match="an empty tree"):  # nothing to be consistent with
        verify_consistency(0, new_size, EMPTY_ROOT, new_root, [])
    for old_size in range(1, new_size + 1):
        old_root = root(leaves[:old_size])
        proof = consistency_proof(leaves, old_size)
        verify_consistency(old_size, new_size, old_root, new_root, proof)
        if 0 < old_size < new_size:
            for spoiled in _altered(proof):
                with pytest.raises(ProofError):
                    verify_consistency(old_size, new_size, old_root, new_root, spoiled)
            # A rewritten history: the same sizes, another entry in the old part.
            forged = list(leaves)
            forged[old_size - 1] = leaf_hash(b"rewritten")
            with pytest.raises(ProofError):
                verify_consistency(old_size, new_size, old_root, root(forged), consistency_proof(forged, old_size))
            with pytest.raises(ProofError):
                verify_consistency(old_size, new_size, root(forged[:old_size]), new_root, proof)
    with pytest.raises(ProofError):
        verify_consistency(new_size, new_size - 1, new_root, root(leaves[:-1]), [])


def test_malformed_input_is_a_proof_error_not_a_crash() -> None:
    leaves = _tree(5)
    top = root(leaves)
    proof = inclusion_proof(leaves, 2)
    for bad in ([*proof[:1], b"short", *proof[2:]], [*proof, b""]):
        with pytest.raises(ProofError, match="is not a 32-byte hash"):
            verify_inclusion(2, 5, leaves[2], bad, top)
    with pytest.raises(ProofError, match="not in a tree"):
        verify_inclusion(5, 5, leaves[2], proof, top)
    with pytest.raises(ProofError, match="not in a tree"):
        verify_inclusion(-1, 5, leaves[2], proof, top)
    with pytest.raises(ValueError):
        inclusion_proof(leaves, 5)
    with pytest.raises(ValueError):
        consistency_proof(leaves, 6)


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 2.1.1, word for word: the oracle the incremental tree is checked against."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    if m == len(leaves):
        return [] if complete else [_mth(leaves)]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


def test_one_tree_grown_leaf_by_leaf_answers_every_earlier_size_as_the_rfc_defines() -> None:
    """The ledger keeps one tree per process and appends to it: roots and proofs of any earlier
    size must be those of the RFC's recursive definitions over that prefix."""
    leaves = _tree(70)
    tree = Tree()
    for leaf in leaves:
        tree.append(leaf)
    assert tree.size == 70 and tree.root(0) == EMPTY_ROOT
    for size in range(1, 71):
        assert tree.root(size) == _mth(leaves[:size])
        for index in range(size):
            assert tree.inclusion_proof(index, size) == _path(index, leaves[:size])
        for old in range(1, size):
            assert tree.consistency_proof(old, size) == _subproof(old, leaves[:size], True)
    for size in range(70):
        before = Tree(leaves[:size])
        assert before.root_with(leaves[size]) == _mth(leaves[: size + 1]) and before.size == size
        assert before.root_with(*leaves[size : size + 3]) == _mth(leaves[: size + 3])
    with pytest.raises(ValueError, match="holds 70 leaves"):
        tree.root(71)
    with pytest.raises(ValueError, match="32 bytes"):
        tree.append(b"short")
