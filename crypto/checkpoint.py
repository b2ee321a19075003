"""Signed checkpoints (tree heads) of the contribution ledger, and the check a watcher makes.

A checkpoint states that the log named ``origin`` held ``size`` entries with Merkle root ``root``
at ``timestamp``; the consortium signs it with its own Ed25519 key. Its signed text is::

    fedfraud-checkpoint-v1\\n{origin}\\n{size}\\n{root, base64}\\n{timestamp, ms since 1970 UTC}

A bank keeps the last checkpoint it accepted and, at every poll, accepts a newer one only with a
consistency proof from the old to the new (:func:`check_growth`): a log that was rewritten,
forked, shrunk or re-signed with another key is refused, whoever did it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from nacl.signing import SigningKey

from crypto.merkle import HASH_SIZE, ProofError, verify_consistency
from crypto.signing import SIGNATURE_BYTES, SignatureError, b64decode_key, b64encode, sign, verify

__all__ = ["Checkpoint", "CheckpointError", "check_growth"]

PREFIX: Final = "fedfraud-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint, or a step from one to the next, that must not be accepted."""


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement of the log's size and root.

    Attributes
    ----------
    origin
        The log's name (one consortium, one log).
    size, root
        Entries, and the Merkle root over them.
    timestamp_ms
        When it was signed, in ms since 1970 UTC.
    signature
        Base64 Ed25519 signature of :meth:`message` ("" before signing).
    """

    origin: str
    size: int
    root: bytes
    timestamp_ms: int
    signature: str = ""

    def message(self) -> bytes:
        """The signed text."""
        if "\n" in self.origin or not self.origin:
            raise CheckpointError(f"a log's origin is one non-empty line, not {self.origin!r}")
        if self.size < 0 or len(self.root) != HASH_SIZE:
            raise CheckpointError("a checkpoint has a size of at least 0 and a 32-byte root")
        return "\n".join((PREFIX, self.origin, str(self.size), b64encode(self.root),
                          str(self.timestamp_ms))).encode("utf-8")

    def signed(self, key: SigningKey) -> Checkpoint:
        """This checkpoint signed with the log's key."""
        return Checkpoint(self.origin, self.size, self.root, self.timestamp_ms, sign(key, self.message()))

    def verify(self, public_key_b64: str) -> None:
        """Check the signature with the log's public key.

        Raises
        ------
        CheckpointError
            Unsigned, or not signed by that key over this content.
        """
        try:
            verify(public_key_b64, self.message(), self.signature)
        except SignatureError as exc:
            raise CheckpointError(f"checkpoint of size {self.size}: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "size": self.size, "root": b64encode(self.root),
                "timestamp_ms": self.timestamp_ms, "signature": self.signature}

    @classmethod
    def from_json(cls, document: Any) -> Checkpoint:
        """Parse a checkpoint as :meth:`to_json` writes it (not yet verified).

        Raises
        ------
        CheckpointError
            A field is missing or malformed; the message names it.
        """
        if isinstance(document, str | bytes):
            try:
                document = json.loads(document)
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"a checkpoint is a JSON object: {exc}") from None
        if not isinstance(document, dict):
            raise CheckpointError("a checkpoint is a JSON object")
        for name, kind in (("origin", str), ("size", int), ("root", str), ("timestamp_ms", int), ("signature", str)):
            if not isinstance(document.get(name), kind) or isinstance(document.get(name), bool):
                raise CheckpointError(f"checkpoint field {name!r} is missing or not a {kind.__name__}")
        try:
            root = b64decode_key(document["root"], what="root", length=HASH_SIZE)
            b64decode_key(document["signature"], what="signature", length=SIGNATURE_BYTES)
        except SignatureError as exc:
            raise CheckpointError(f"checkpoint: {exc}") from None
        return cls(document["origin"], document["size"], root, document["timestamp_ms"], document["signature"])


def check_growth(old: Checkpoint, new: Checkpoint, proof: Sequence[bytes], public_key_b64: str, *,
                 old_key_b64: str | None = None) -> None:
    """Accept ``new`` after ``old`` only if both are the log's, and ``new`` extends ``old``;
    ``old`` is signed by ``old_key_b64`` when given (across a rotation of the log's key).

    Raises
    ------
    CheckpointError
        A bad signature, another log, a smaller or older tree, or a consistency proof that does
        not hold (the log was rewritten or forked); the message says which.
    """
    old.verify(old_key_b64 or public_key_b64)
    new.verify(public_key_b64)
    if new.origin != old.origin:
        raise CheckpointError(f"the new checkpoint is of log {new.origin!r}, not {old.origin!r}")
    if new.size < old.size:
        raise CheckpointError(f"the log shrank from {old.size} to {new.size} entries")
    if new.timestamp_ms < old.timestamp_ms:
        raise CheckpointError("the new checkpoint is dated before the old one")
    if old.size == 0:
        return  # the empty log is a prefix of any log
    try:
        verify_consistency(old.size, new.size, old.root, new.root, proof)
    except ProofError as exc:
        raise CheckpointError(f"the log of {new.size} entries does not extend the one of {old.size} "
                              f"seen before (rewritten or forked): {exc}") from None
