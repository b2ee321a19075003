"""Signed checkpoints of the ledger, and what a bank watching them refuses: a rewritten, forked,
shrunk or re-signed log, whoever did it (the operator's database administrator included)."""

from __future__ import annotations

import json

import pytest
from nacl.signing import SigningKey

from crypto.checkpoint import Checkpoint, CheckpointError, check_growth
from crypto.merkle import consistency_proof, leaf_hash, root
from crypto.signing import b64encode

LOG = "fedfraud consortium test"


def _entries(n: int, *, rewritten: int | None = None) -> list[bytes]:
    return [leaf_hash(f"entry {i}{' (rewritten)' if i == rewritten else ''}".encode()) for i in range(n)]


def _checkpoint(key: SigningKey, leaves: list[bytes], at: int) -> Checkpoint:
    return Checkpoint(LOG, len(leaves), root(leaves), at).signed(key)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def public(key: SigningKey) -> str:
    return b64encode(bytes(key.verify_key))


def test_a_log_that_grows_is_accepted_step_by_step(key: SigningKey) -> None:
    leaves = _entries(30)
    seen = _checkpoint(key, leaves[:0], 1_000)
    for size in (1, 2, 7, 8, 9, 16, 30, 30):
        new = _checkpoint(key, leaves[:size], 1_000 + size)
        check_growth(seen, new, consistency_proof(leaves[:size], seen.size), public(key))
        seen = new
    assert Checkpoint.from_json(json.dumps(seen.to_json())) == seen


def test_a_rewritten_entry_is_refused_even_when_signed_by_the_log_key(key: SigningKey) -> None:
    leaves = _entries(20)
    seen = _checkpoint(key, leaves[:12], 1_000)
    for position in (0, 5, 11):  # the administrator changes a past entry and re-signs the head
        forged = _entries(20, rewritten=position)
        new = _checkpoint(key, forged, 2_000)
        with pytest.raises(CheckpointError, match="rewritten or forked"):
            check_growth(seen, new, consistency_proof(forged, 12), public(key))
        with pytest.raises(CheckpointError, match="rewritten or forked"):  # nor with the honest log's proof
            check_growth(seen, new, consistency_proof(leaves, 12), public(key))


def test_a_deleted_or_reordered_entry_and_a_fork_are_refused(key: SigningKey) -> None:
    leaves = _entries(20)
    seen = _checkpoint(key, leaves[:10], 1_000)
    deleted = leaves[:4] + leaves[5:]
    reordered = leaves[:3] + [leaves[4], leaves[3]] + leaves[5:]
    fork = leaves[:10] + [leaf_hash(b"other branch")] * 5
    honest = _checkpoint(key, leaves[:15], 2_000)
    for tree in (deleted, reordered):
        with pytest.raises(CheckpointError):
            check_growth(seen, _checkpoint(key, tree, 2_000), consistency_proof(tree, 10), public(key))
    check_growth(seen, _checkpoint(key, fork, 2_000), consistency_proof(fork, 10), public(key))  # a valid extension
    check_growth(seen, honest, consistency_proof(leaves[:15], 10), public(key))
    # ... but two different heads of one size are a fork: each bank sees one, comparing them tells.
    with pytest.raises(CheckpointError, match="rewritten or forked"):
        check_growth(honest, _checkpoint(key, fork, 3_000), [], public(key))


def test_a_shrunk_log_another_key_another_log_and_an_older_head_are_refused(key: SigningKey) -> None:
    leaves = _entries(10)
    seen = _checkpoint(key, leaves, 5_000)
    with pytest.raises(CheckpointError, match="shrank"):
        check_growth(seen, _checkpoint(key, leaves[:8], 6_000), [], public(key))
    stranger = SigningKey.generate()  # the whole log rewritten and signed with a new key
    with pytest.raises(CheckpointError, match="signature does not match"):
        check_growth(seen, _checkpoint(stranger, leaves, 6_000), [], public(key))
    other = Checkpoint("another log", 10, root(leaves), 6_000).signed(key)
    with pytest.raises(CheckpointError, match="of log 'another log'"):
        check_growth(seen, other, [], public(key))
    with pytest.raises(CheckpointError, match="dated before"):
        check_growth(seen, _checkpoint(key, leaves, 4_000), [], public(key))
    tampered = Checkpoint(LOG, 10, root(_entries(10, rewritten=3)), 5_000, seen.signature)
    with pytest.raises(CheckpointError, match="signature does not match"):
        tampered.verify(public(key))
    with pytest.raises(CheckpointError, match="missing signature"):
        Checkpoint(LOG, 10, root(leaves), 5_000).verify(public(key))


@pytest.mark.parametrize(("document", "named"), [
    ("not json", "JSON object"),
    ([], "JSON object"),
    ({"origin": LOG, "size": "10", "root": "", "timestamp_ms": 1, "signature": ""}, "'size'"),
    ({"origin": LOG, "size": True, "root": "", "timestamp_ms": 1, "signature": ""}, "'size'"),
    ({"origin": LOG, "size": 1, "root": "AAAA", "timestamp_ms": 1, "signature": "A" * 88}, "root must be 32 bytes"),
    ({"origin": LOG, "size": 1, "timestamp_ms": 1, "signature": ""}, "'root'"),
])
def test_malformed_checkpoints_are_named(document: object, named: str) -> None:
    with pytest.raises(CheckpointError, match=named):
        Checkpoint.from_json(document if isinstance(document, str) else json.dumps(document))
