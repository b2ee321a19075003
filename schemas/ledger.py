"""The contribution ledger as it travels: entries, their checkpoints, receipts, and the check of a
whole log that anyone can run offline.

Every entry is canonical JSON (sorted keys, no spaces, UTF-8)::

    {"at": "2026-12-02T02:00:00.123Z", "bank_id": "bank-1" | null, "details": {...},
     "event": "contribution.accepted", "index": 41, "model_version": 3 | null, "run_id": "..." | null}

Its leaf in the Merkle tree is ``SHA-256(0x00 || entry)`` (``crypto/merkle.py``). The consortium
signs, in the same database transaction that appends entry ``i``, the checkpoint of the log's
first ``i + 1`` entries (``crypto/checkpoint.py``). So every entry carries the signed root of the
log as it stood right after it, and a check from the first entry names the first one that is no
longer what was signed: changed, deleted, inserted or moved, even by the database's administrator,
who does not hold the signing key.

A *receipt* is what a bank keeps of its own entries: the entry, its index, an inclusion proof and a
signed checkpoint of a log that holds it (the C2SP ``tlog-proof`` shape, in JSON).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final

from nacl.signing import SigningKey

from crypto.checkpoint import Checkpoint, CheckpointError
from crypto.merkle import HASH_SIZE, ProofError, Tree, leaf_hash, verify_inclusion
from crypto.signing import SignatureError, b64encode, sign, verify

__all__ = [
    "EVENTS",
    "LedgerError",
    "LogVerifier",
    "MAX_PROOFS_A_REQUEST",
    "Verification",
    "ROTATION",
    "canonical_entry",
    "check_rotation",
    "endorse_rotation",
    "key_named",
    "entry_time",
    "parse_entry",
    "receipt_document",
    "verify_receipt",
]

#: Every event the ledger records, and what it means.
EVENTS: Final[Mapping[str, str]] = {
    "ledger.started": "the log's first entry: its origin and signing key",
    "ledger.key_rotated": "the log's signing key was replaced: the old key endorsed the new one, which signs from "
                          "this entry on",
    "bank.enrolled": "an operator enrolled a bank",
    "bank.keys_registered": "a bank registered its signing and box public keys",
    "roster.signed": "a bank proposed or approved a roster (membership) version",
    "key.published": "a member published the consortium's public HE context for a roster",
    "key.share_posted": "the publisher relayed a sealed secret share to a member",
    "token.issued": "a bearer token was issued (its id and role, never the token)",
    "token.revoked": "a bearer token was revoked",
    "schedule.changed": "an operator changed a model family's schedule",
    "run.opened": "a training run was opened, with its window, parameters and participants",
    "run.withdrawal": "a participant bank said it cannot take part, and why",
    "run.cancelled": "an operator cancelled a run",
    "run.failed": "a run failed, and why",
    "run.completed": "a run's model was published and promoted",
    "run.rejected": "a run's model was published for the record but not promoted",
    "contribution.accepted": "the aggregator stored a bank's signed, encrypted contribution to a round",
    "contribution.refused": "the aggregator refused a contribution, and why",
    "round.released": "a round's sum was released, and which contributions it adds",
    "round.failed": "a round closed without its quorum",
    "privacy.spent": "a bank's first contribution to a differentially private run: the run's epsilon and delta",
    "assessment.posted": "a bank's signed assessment of a candidate against the current model",
    "proposal.received": "a bank's signed proposal of a run's final model",
    "model.published": "a model the agreeing banks signed was published (its lineage)",
    "model.current": "a family's current model changed: promoted, or rolled back by an operator",
}

ROTATION: Final = "ledger.key_rotated"
MAX_PROOFS_A_REQUEST: Final = 1000
"""Inclusion proofs one request may ask the consortium for (a bank confirms a night's receipts in a few)."""
_ROTATION_PREFIX: Final = "fedfraud ledger key rotation v1"

_KEYS: Final = ("at", "bank_id", "details", "event", "index", "model_version", "run_id")


class LedgerError(ValueError):
    """An entry, receipt or log that does not hold; the message names the entry."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def _iso(moment: datetime) -> str:
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="milliseconds") + "Z"


def entry_time(at: str) -> datetime:
    """The naive-UTC time an entry's ``at`` states."""
    return datetime.fromisoformat(at.removesuffix("Z"))


def canonical_entry(index: int, event: str, at: datetime, *, bank_id: str | None = None,
                    run_id: str | None = None, model_version: int | None = None,
                    details: Mapping[str, Any] | None = None) -> bytes:
    """The bytes of an entry (``at`` in naive UTC or aware)."""
    if event not in EVENTS:
        raise LedgerError(f"unknown ledger event {event!r}", index)
    document = {"at": _iso(at), "bank_id": bank_id, "details": dict(details or {}), "event": event,
                "index": index, "model_version": model_version, "run_id": run_id}
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def parse_entry(body: str | bytes, index: int | None = None) -> dict[str, Any]:
    """An entry's fields, checked to be canonical (re-encoding gives the same bytes) and, when
    ``index`` is given, to claim that place in the log."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    try:
        document = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LedgerError(f"entry {index}: not JSON ({exc})", index) from None
    if not isinstance(document, dict) or sorted(document) != list(_KEYS):
        raise LedgerError(f"entry {index}: an entry holds exactly {', '.join(_KEYS)}", index)
    if json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8") != raw:
        raise LedgerError(f"entry {index}: not in canonical form", index)
    if not isinstance(document["details"], dict):
        raise LedgerError(f"entry {index}: its details are a JSON object", index)
    if index is not None and document["index"] != index:
        raise LedgerError(f"entry {index}: the entry at this place says it is entry {document['index']} "
                          "(entries were deleted, inserted or reordered)", index)
    return document


def _rotation_message(origin: str, size: int, root: bytes, new_key: str) -> bytes:
    return "\n".join((_ROTATION_PREFIX, origin, str(size), b64encode(root), new_key)).encode("utf-8")


def endorse_rotation(old_key: SigningKey, origin: str, size: int, root: bytes, new_key: str) -> dict[str, str]:
    """The details of a ``ledger.key_rotated`` entry appended at index ``size`` to the log whose
    first ``size`` entries have Merkle root ``root``: the old key signs that state of the log and
    the new public key, which signs the checkpoints from this entry on."""
    return {"public_key": new_key, "previous_key": b64encode(bytes(old_key.verify_key)),
            "endorsement": sign(old_key, _rotation_message(origin, size, root, new_key))}


def check_rotation(fields: Mapping[str, Any], *, origin: str, root: bytes, current_key: str) -> str:
    """The key that signs from a ``ledger.key_rotated`` entry on, once checked to be endorsed by
    ``current_key`` (the key in force before it) over the log as it stood before it (``root``).

    Raises
    ------
    LedgerError
        Not endorsed by the key in force (a key put in by whoever could write the database), or
        endorsing another state of the log.
    """
    index = int(fields["index"])
    details = fields.get("details") or {}
    new_key, previous = details.get("public_key"), details.get("previous_key")
    if not isinstance(new_key, str) or not isinstance(details.get("endorsement"), str):
        raise LedgerError(f"entry {index}: a key rotation names the new public key and the old key's endorsement",
                          index)
    if previous != current_key:
        raise LedgerError(f"entry {index}: the key rotation replaces key {previous}, but the log was signed by "
                          f"{current_key} until then", index)
    try:
        verify(current_key, _rotation_message(origin, index, root, new_key), details["endorsement"])
    except SignatureError:
        raise LedgerError(f"entry {index}: the key rotation to {new_key} is not endorsed by the key in force "
                          "over the log before it (a key put in by someone who does not hold the log's key)",
                          index) from None
    return new_key


def key_named(fields: Mapping[str, Any], *, current_key: str | None = None, origin: str = "", root: bytes = b"",
              trusted: bool = False) -> str | None:
    """The key the log is signed by from entry ``fields`` on, when that entry sets it: the key
    entry 0 (``ledger.started``) names, or the key a rotation puts in force, checked with
    :func:`check_rotation` against ``current_key`` and ``root`` unless ``trusted`` (an entry
    checked before, or written by the caller itself). None for any other entry, and for an entry 0
    that names no key.

    Raises
    ------
    LedgerError
        A rotation the key in force did not endorse.
    """
    details = fields.get("details") or {}
    if int(fields["index"]) == 0:
        declared = details.get("public_key") if fields.get("event") == "ledger.started" else None
        return declared if isinstance(declared, str) else None
    if fields.get("event") != ROTATION:
        return None
    if trusted:
        return str(details.get("public_key"))
    if current_key is None:
        raise LedgerError(f"entry {fields['index']}: a key rotation in a log whose key is not known", fields["index"])
    return check_rotation(fields, origin=origin, root=root, current_key=current_key)


@dataclass
class Verification:
    """What a check of a log found.

    Attributes
    ----------
    size
        Entries examined.
    verified
        Entries that hold, from the first: all of them when :attr:`ok`.
    first_bad, problem
        The first entry that does not hold and why (None when the log holds).
    checkpoint
        The signed checkpoint of the last entry that holds.
    """

    size: int = 0
    verified: int = 0
    first_bad: int | None = None
    problem: str | None = None
    checkpoint: Checkpoint | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad is None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "size": self.size, "verified": self.verified, "first_bad": self.first_bad,
                "problem": self.problem,
                "checkpoint": None if self.checkpoint is None else self.checkpoint.to_json()}


@dataclass
class LogVerifier:
    """Checks a log entry by entry, from the first, against the log's public key.

    Feed every entry with :meth:`add` in the log's order; the first that does not hold stops the
    check (later entries are only counted). :attr:`result` says how far the log holds; call
    :meth:`conclude` once the last entry is in.

    The key is the one pinned (``public_key``). A log whose key was rotated is signed by the key
    its first entry names up to the first rotation, then by each key a rotation endorsed in turn;
    every rotation must be endorsed by the key in force before it. The pinned key must be one of
    them, having signed a checkpoint: the log up to that checkpoint is then the one it signed, and
    every later key holds by the chain of endorsements from it.
    """

    public_key: str
    origin: str | None = None
    tree: Tree = field(default_factory=Tree)
    result: Verification = field(default_factory=Verification)
    keys: list[tuple[int, str]] = field(default_factory=list)
    """(first checkpoint size it signs, key) of every key in the log so far, oldest first."""
    _pinned_signed: bool = False

    @property
    def signing_key(self) -> str:
        """The key in force at the end of the entries checked so far."""
        return self.keys[-1][1] if self.keys else self.public_key

    def key_for(self, size: int) -> str:
        """The key that signs the checkpoint of the log's first ``size`` entries."""
        found = self.keys[0][1] if self.keys else self.public_key
        for first, key in self.keys:
            if first <= size:
                found = key
        return found

    def add(self, position: int, body: str | bytes, checkpoint: Checkpoint) -> None:
        """Check the entry found at ``position`` (0-based) with the checkpoint stored beside it."""
        self.result.size += 1
        if not self.result.ok:
            return
        try:
            self._check(position, body, checkpoint)
        except (LedgerError, CheckpointError) as exc:
            self.result.first_bad, self.result.problem = position, str(exc)
            return
        self.result.verified += 1
        self.result.checkpoint = checkpoint

    def add_verified(self, body: str | bytes, checkpoint: Checkpoint) -> None:
        """Take an entry checked before, unchanged since (only its leaf joins the tree)."""
        raw = body.encode("utf-8") if isinstance(body, str) else body
        if self.tree.size == 0 or ROTATION.encode() in raw:
            self._follow_keys(parse_entry(raw), trusted=True)
        self.tree.append(leaf_hash(raw))
        self._pinned_signed = self._pinned_signed or self.signing_key == self.public_key
        self.result.size += 1
        self.result.verified += 1
        self.result.checkpoint = checkpoint

    def conclude(self) -> Verification:
        """The result, once every entry was added: a log whose checkpoints the pinned key never
        signed holds for whoever pinned it from no entry on, however far it holds in itself."""
        if self.result.size and not self._pinned_signed:
            further = ("" if self.result.first_bad is None else
                       f"; checked under its own keys, entry {self.result.first_bad}: {self.result.problem}")
            self.result.first_bad, self.result.verified = 0, 0
            self.result.problem = (f"no checkpoint of this log is signed by the pinned key {self.public_key} (its "
                                   f"keys: {', '.join(key for _, key in self.keys)}){further}")
            self.result.checkpoint = None
        return self.result

    def _follow_keys(self, fields: Mapping[str, Any], *, trusted: bool = False,
                     origin: str = "", root: bytes = b"") -> None:
        """The key in force after entry ``fields``: the first entry's, then each rotation's."""
        index = int(fields["index"])
        named = key_named(fields, current_key=self.signing_key, origin=origin, root=root, trusted=trusted)
        if index == 0:
            self.keys = [(1, named or self.public_key)]
        elif named is not None:
            self.keys.append((index + 1, named))

    def _check(self, position: int, body: str | bytes, checkpoint: Checkpoint) -> None:
        if position != self.tree.size:
            raise LedgerError(f"entry {self.tree.size} is missing", self.tree.size)
        fields = parse_entry(body, position)
        raw = body.encode("utf-8") if isinstance(body, str) else body
        self.origin = self.origin or checkpoint.origin
        self._follow_keys(fields, origin=self.origin, root=self.tree.root())
        self.tree.append(leaf_hash(raw))
        if checkpoint.origin != self.origin:
            raise LedgerError(f"entry {position}: its checkpoint is of log {checkpoint.origin!r}, "
                              f"not {self.origin!r}", position)
        if checkpoint.size != position + 1 or checkpoint.root != self.tree.root():
            raise LedgerError(f"entry {position}: the log up to it is not the one the consortium signed "
                              "(this entry, or the signed root stored with it, was changed)", position)
        try:
            checkpoint.verify(self.signing_key)
        except CheckpointError:
            raise LedgerError(f"entry {position}: its checkpoint is not signed by the log's key "
                              "(entry forged or log re-signed with another key)", position) from None
        self._pinned_signed = self._pinned_signed or self.signing_key == self.public_key


def receipt_document(body: bytes, index: int, proof: list[bytes], checkpoint: Checkpoint) -> dict[str, Any]:
    """A receipt as JSON: the entry, its index, an inclusion proof and the signed checkpoint."""
    return {"entry": body.decode("utf-8"), "index": index,
            "proof": [base64.b64encode(p).decode("ascii") for p in proof], "checkpoint": checkpoint.to_json()}


def verify_receipt(document: Any, public_key: str) -> tuple[dict[str, Any], Checkpoint]:
    """Check a receipt on its own: the checkpoint signed by the log's key, and the entry in it.

    Returns
    -------
    The entry's fields and the receipt's checkpoint.

    Raises
    ------
    LedgerError
        Malformed, or not proving what it claims; the message says what.
    """
    if not isinstance(document, dict):
        raise LedgerError("a receipt is a JSON object")
    index = document.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise LedgerError("receipt: 'index' is a non-negative integer")
    body, proof = document.get("entry"), document.get("proof")
    if not isinstance(body, str) or not isinstance(proof, list) or not all(isinstance(p, str) for p in proof):
        raise LedgerError(f"receipt of entry {index}: 'entry' is a string and 'proof' a list of base64 hashes", index)
    try:
        checkpoint = Checkpoint.from_json(document.get("checkpoint"))
        checkpoint.verify(public_key)
        hashes = [base64.b64decode(p, validate=True) for p in proof]
    except (CheckpointError, ValueError) as exc:
        raise LedgerError(f"receipt of entry {index}: {exc}", index) from None
    if any(len(h) != HASH_SIZE for h in hashes):
        raise LedgerError(f"receipt of entry {index}: the proof holds hashes of {HASH_SIZE} bytes", index)
    fields = parse_entry(body, index)
    try:
        verify_inclusion(index, checkpoint.size, leaf_hash(body.encode("utf-8")), hashes, checkpoint.root)
    except ProofError as exc:
        raise LedgerError(f"receipt of entry {index}: the entry is not in the signed log ({exc})", index) from None
    return fields, checkpoint
