"""The consortium's membership as the banks pin it: a versioned roster that the members sign.

The aggregator enrols banks and serves their public keys, but it must not decide who the banks
share secrets with: an operator that enrols a fake bank, or swaps a bank's box key, would
otherwise receive the HE secret key at the next ceremony or agree masks in another bank's place.
So each bank node keeps a *pinned* roster (bank ids with their Ed25519 and X25519 public keys) and
takes keys from nothing else. The aggregator only relays roster documents and signatures.

A roster is accepted (pinned) by a bank under these rules, checked by :func:`accept`:

- **Genesis** (nothing pinned yet): version 1, no predecessor, this bank among the members, at
  least :data:`MIN_MEMBERS` members, and signed by *every* member. Each bank signs only after its
  staff compared every member's :func:`fingerprint` with the one that member read out out of band,
  so no key reaches a roster that some member did not check.
- **Joining** (nothing pinned yet, a later version): this bank among the members and signed by it
  (it signs only after checking *every* member's fingerprint), and by more than half of the others.
- **Change** (a roster is pinned): the next version, naming the pinned roster's digest as its
  predecessor; continuing members keep their keys; signed by more than half of the pinned
  roster's members (with their *pinned* keys) and by every member it adds. An old roster sent again
  is refused as a replay; a roster that skips a version or forks the chain is refused.

Signatures cover ``fedfraud-roster-v1\\n{bank_id}\\n{sha256 hex of the document}``. The document is
canonical JSON (sorted keys, no spaces), so the digest is the same at every bank.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from crypto.signing import SignatureError, b64decode_key, load_box_key, load_signing_key, verify

__all__ = [
    "MIN_MEMBERS",
    "ROSTER_FORMAT",
    "Member",
    "Roster",
    "RosterError",
    "accept",
    "fingerprint",
    "normalise_fingerprint",
    "roster_message",
    "valid_signers",
]

ROSTER_FORMAT: Final = "fedfraud-roster-v1"
MIN_MEMBERS: Final = 3
"""Fewer banks can never form a quorum (see ``bank_node.federated.rounds.MIN_QUORUM``)."""
MAX_MEMBERS: Final = 1000
_FINGERPRINT_BYTES: Final = 16


class RosterError(ValueError):
    """A roster that cannot be pinned; the message says which rule it breaks."""


def fingerprint(signing_key: str, box_key: str) -> str:
    """What a bank's staff read out to the other members: a digest of both public keys.

    Parameters
    ----------
    signing_key, box_key
        The bank's Ed25519 and X25519 public keys, base64.

    Returns
    -------
    str
        32 hex digits (128 bits of SHA-256) in groups of four, e.g. ``"3f2a 91c0 ..."``.
    """
    raw = b64decode_key(signing_key, what="Ed25519 signing key") + b64decode_key(box_key, what="X25519 box key")
    digest = hashlib.sha256(b"fedfraud-fingerprint-v1\n" + raw).hexdigest()[: 2 * _FINGERPRINT_BYTES]
    return " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))


def normalise_fingerprint(text: str) -> str:
    """A fingerprint as typed by a person (any spacing or case) in canonical form."""
    digits = "".join(text.split()).lower()
    return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def roster_message(bank_id: str, document: bytes) -> bytes:
    """The bytes a member signs to approve a roster document."""
    if "\n" in bank_id:
        raise SignatureError(f"a signed field may not contain a newline: {bank_id!r}")
    return f"{ROSTER_FORMAT}\n{bank_id}\n{hashlib.sha256(document).hexdigest()}".encode()


@dataclass(frozen=True)
class Member:
    """One bank of the roster and its public keys (base64)."""

    bank_id: str
    signing_key: str
    box_key: str

    @property
    def fingerprint(self) -> str:
        """See :func:`fingerprint`."""
        return fingerprint(self.signing_key, self.box_key)


@dataclass(frozen=True)
class Roster:
    """A version of the membership.

    Attributes
    ----------
    version
        1 for the first roster, then one more per change.
    previous
        SHA-256 hex of the previous version's document ("" for version 1).
    members
        The banks, sorted by id.
    """

    version: int
    previous: str
    members: tuple[Member, ...]

    @classmethod
    def create(cls, *, version: int, previous: str, members: Iterable[Member]) -> Roster:
        """A roster with its members sorted by id; see :meth:`check` for what is refused."""
        roster = cls(version=version, previous=previous, members=tuple(sorted(members, key=lambda m: m.bank_id)))
        roster.check()
        return roster

    def check(self) -> None:
        """Raise :class:`RosterError` unless the roster is well formed."""
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise RosterError(f"roster version must be a positive integer, got {self.version!r}")
        if (self.version == 1) != (self.previous == ""):
            raise RosterError("version 1 has no predecessor, and every later version names one")
        if self.previous and (len(self.previous) != 64 or any(c not in "0123456789abcdef" for c in self.previous)):
            raise RosterError("previous must be the SHA-256 hex digest of the previous roster")
        ids = [m.bank_id for m in self.members]
        if len(set(ids)) != len(ids):
            raise RosterError("a bank appears twice in the roster")
        if list(ids) != sorted(ids):
            raise RosterError("roster members must be sorted by bank id")
        if not MIN_MEMBERS <= len(ids) <= MAX_MEMBERS:
            raise RosterError(f"a roster holds {MIN_MEMBERS} to {MAX_MEMBERS} banks, got {len(ids)}")
        for member in self.members:
            try:
                load_signing_key(member.signing_key)
                load_box_key(member.box_key)
            except SignatureError as exc:
                raise RosterError(f"bank {member.bank_id!r}: {exc}") from None

    # -------------------------------------------------------------------------- views

    @property
    def bank_ids(self) -> tuple[str, ...]:
        """The members' ids, sorted."""
        return tuple(m.bank_id for m in self.members)

    def member(self, bank_id: str) -> Member | None:
        """The member ``bank_id``, or None."""
        return next((m for m in self.members if m.bank_id == bank_id), None)

    def signing_keys(self) -> dict[str, str]:
        """Bank id to Ed25519 public key (base64)."""
        return {m.bank_id: m.signing_key for m in self.members}

    def box_keys(self) -> dict[str, str]:
        """Bank id to X25519 public key (base64)."""
        return {m.bank_id: m.box_key for m in self.members}

    # ---------------------------------------------------------------------- encoding

    def to_bytes(self) -> bytes:
        """The canonical JSON document that members sign."""
        document = {
            "format": ROSTER_FORMAT,
            "version": self.version,
            "previous": self.previous,
            "members": [
                {"bank_id": m.bank_id, "signing_key": m.signing_key, "box_key": m.box_key} for m in self.members
            ],
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @property
    def digest(self) -> str:
        """SHA-256 hex of :meth:`to_bytes` (what the next version names as ``previous``)."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Roster:
        """Parse a roster document; it must be exactly canonical, so that its digest is unique.

        Raises
        ------
        RosterError
            Not JSON, another format, a missing field, or not in canonical form.
        """
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise RosterError("a roster is a JSON document") from None
        if not isinstance(document, dict) or document.get("format") != ROSTER_FORMAT:
            raise RosterError(f"not a roster: expected format {ROSTER_FORMAT!r}")
        try:
            members = [_member(entry) for entry in document["members"]]
            roster = cls(version=document["version"], previous=document["previous"], members=tuple(members))
        except (KeyError, TypeError):
            raise RosterError("a roster has version, previous and members (bank_id, signing_key, box_key)") from None
        roster.check()
        if roster.to_bytes() != data:
            raise RosterError("the roster document is not in canonical form (sorted keys, no spaces)")
        return roster


def _member(entry: Any) -> Member:
    if not isinstance(entry, dict) or set(entry) != {"bank_id", "signing_key", "box_key"}:
        raise TypeError("member")
    if not all(isinstance(value, str) for value in entry.values()):
        raise TypeError("member")
    return Member(bank_id=entry["bank_id"], signing_key=entry["signing_key"], box_key=entry["box_key"])


def valid_signers(document: bytes, signatures: Mapping[str, str], keys: Mapping[str, str]) -> set[str]:
    """The banks among ``keys`` whose signature over ``document`` verifies with their key.

    A signature from a bank not in ``keys``, or that does not verify, counts for nothing.
    """
    signers = set()
    for bank_id, signature in signatures.items():
        key = keys.get(bank_id)
        if key is None:
            continue
        try:
            verify(key, roster_message(bank_id, document), signature)
        except SignatureError:
            continue
        signers.add(bank_id)
    return signers


def accept(
    pinned: Roster | None, candidate: Roster, signatures: Mapping[str, str], *, bank_id: str
) -> Roster:
    """Check that ``bank_id`` may pin ``candidate`` after ``pinned``; return it.

    Parameters
    ----------
    pinned
        The roster this bank holds now (None before the first).
    candidate
        The proposed next roster.
    signatures
        Bank id to base64 signature over ``candidate.to_bytes()``.
    bank_id
        The bank deciding.

    Raises
    ------
    RosterError
        The rule that the candidate breaks, in words.
    """
    candidate.check()
    document = candidate.to_bytes()
    if pinned is None:
        if candidate.member(bank_id) is None:
            raise RosterError(f"the first roster a bank pins must list it ({bank_id})")
        signed = valid_signers(document, signatures, candidate.signing_keys())
        if candidate.version == 1:
            missing = sorted(set(candidate.bank_ids) - signed)
            if missing:
                raise RosterError(f"the first roster needs every member's signature; missing or invalid: {missing}")
            return candidate
        if bank_id not in signed:
            raise RosterError(f"joining at roster version {candidate.version} needs this bank's own approval")
        others = len(candidate.members) - 1
        if len(signed - {bank_id}) < others // 2 + 1:
            raise RosterError(
                f"joining at roster version {candidate.version} needs {others // 2 + 1} signatures of the other "
                f"members; it has {len(signed - {bank_id})}"
            )
        return candidate
    if candidate.version <= pinned.version:
        raise RosterError(
            f"roster version {candidate.version} is not newer than the pinned version {pinned.version} (a replay)"
        )
    if candidate.version != pinned.version + 1:
        raise RosterError(f"roster version {candidate.version} skips versions; the next is {pinned.version + 1}")
    if candidate.previous != pinned.digest:
        raise RosterError(f"roster version {candidate.version} does not follow the pinned version {pinned.version}")
    for member in candidate.members:
        before = pinned.member(member.bank_id)
        if before is not None and (before.signing_key, before.box_key) != (member.signing_key, member.box_key):
            raise RosterError(
                f"roster version {candidate.version} changes the keys of {member.bank_id}; a bank with new keys "
                "is removed and added again under a new id"
            )
    old = valid_signers(document, signatures, pinned.signing_keys())
    needed = len(pinned.members) // 2 + 1
    if len(old) < needed:
        raise RosterError(
            f"roster version {candidate.version} needs {needed} signatures of the {len(pinned.members)} members "
            f"of version {pinned.version}; it has {len(old)} ({sorted(old)})"
        )
    added = {m.bank_id: m.signing_key for m in candidate.members if pinned.member(m.bank_id) is None}
    unsigned = sorted(set(added) - valid_signers(document, signatures, added))
    if unsigned:
        raise RosterError(f"roster version {candidate.version} adds banks that did not sign it: {unsigned}")
    return candidate
