"""The offline check of a log against a pinned key, with the log's chain of signing keys."""

from __future__ import annotations

import base64
import json
from datetime import datetime

from nacl.signing import SigningKey

from crypto.checkpoint import Checkpoint
from crypto.merkle import Tree, leaf_hash
from schemas.ledger import LogVerifier, canonical_entry, endorse_rotation

AT = datetime(2026, 12, 3, 12, 0, 0)
ORIGIN = "fedfraud-consortium"


def _public(key: SigningKey) -> str:
    return base64.b64encode(bytes(key.verify_key)).decode()


def _log(first: SigningKey, n: int, rotate_at: dict[int, SigningKey] | None = None) -> list[tuple[bytes, Checkpoint]]:
    """A log of ``n`` entries signed by ``first``, rotated at the given indexes to the given keys."""
    rotate_at = rotate_at or {}
    tree, out, key = Tree(), [], first
    for index in range(n):
        if index == 0:
            body = canonical_entry(0, "ledger.started", AT, details={"origin": ORIGIN, "public_key": _public(first)})
        elif index in rotate_at:
            new = rotate_at[index]
            body = canonical_entry(index, "ledger.key_rotated", AT,
                                   details=endorse_rotation(key, ORIGIN, index, tree.root(), _public(new)))
            key = new
        else:
            body = canonical_entry(index, "bank.enrolled", AT, bank_id=f"bank-{index}")
        tree.append(leaf_hash(body))
        out.append((body, Checkpoint(ORIGIN, index + 1, tree.root(), index + 1).signed(key)))
    return out


def _check(pinned: SigningKey, log: list[tuple[bytes, Checkpoint]]) -> LogVerifier:
    verifier = LogVerifier(_public(pinned), origin=ORIGIN)
    for position, (body, checkpoint) in enumerate(log):
        verifier.add(position, body, checkpoint)
    verifier.conclude()
    return verifier


def test_a_log_holds_under_any_key_of_its_chain_and_under_no_other() -> None:
    first, second, third = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    log = _log(first, 9, {3: second, 6: third})
    for pinned in (first, second, third):
        verifier = _check(pinned, log)
        assert verifier.result.ok and verifier.result.verified == 9
        assert [key for _, key in verifier.keys] == [_public(first), _public(second), _public(third)]
        assert verifier.key_for(3) == _public(first) and verifier.key_for(4) == _public(second)
    stranger = _check(SigningKey.generate(), log).result
    assert not stranger.ok and stranger.first_bad == 0 and stranger.verified == 0


def test_a_rotation_the_key_in_force_did_not_endorse_breaks_the_log_there() -> None:
    first, second, impostor = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    log = _log(first, 6, {3: second})
    tree = Tree([leaf_hash(body) for body, _ in log[:3]])
    details = endorse_rotation(impostor, ORIGIN, 3, tree.root(), _public(second))
    details["previous_key"] = _public(first)  # claims to replace the real key, endorsed by another
    forged = canonical_entry(3, "ledger.key_rotated", AT, details=details)
    rebuilt = _log(first, 3)
    tree.append(leaf_hash(forged))
    rebuilt.append((forged, Checkpoint(ORIGIN, 4, tree.root(), 4).signed(second)))
    result = _check(first, rebuilt).result
    assert result.first_bad == 3 and "not endorsed" in (result.problem or "")


def test_entries_under_a_key_the_pinned_key_never_reached_hold_from_none_on() -> None:
    """A forged log under its own key, broken further on: nothing of it holds for the pinned key
    (not 'entries 0 to m-1 hold')."""
    pinned, forger = SigningKey.generate(), SigningKey.generate()
    log = _log(forger, 5)
    body, _ = log[4]
    log[4] = (body, Checkpoint(ORIGIN, 5, b"\0" * 32, 5).signed(forger))
    result = _check(pinned, log).result
    assert result.first_bad == 0 and result.verified == 0 and "pinned key" in (result.problem or "")


def test_an_entry_whose_details_are_not_an_object_is_named_not_a_crash() -> None:
    key = SigningKey.generate()
    log = _log(key, 3)
    odd = json.dumps({"at": "2026-12-03T12:00:00.000Z", "bank_id": None, "details": ["x"], "event": "bank.enrolled",
                      "index": 1, "model_version": None, "run_id": None},
                     sort_keys=True, separators=(",", ":")).encode()
    tree = Tree([leaf_hash(log[0][0]), leaf_hash(odd)])
    log[1] = (odd, Checkpoint(ORIGIN, 2, tree.root(), 2).signed(key))
    result = _check(key, log).result
    assert result.first_bad == 1 and "details" in (result.problem or "")
