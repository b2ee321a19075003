"""The roster this bank pinned, and the steps that change it: propose, approve, sync.

A bank takes other banks' keys from its pinned roster only, never from ``GET /v1/banks`` (which the
operator controls). People check keys the way they compare SSH or Signal fingerprints: each bank
reads out its :func:`~crypto.roster.fingerprint` (``fedfraud bank fingerprint``) to the others over
a channel they trust, and a bank approves a roster only when every key it adds matches the
fingerprint its staff typed in. The rules of what may be pinned are in :mod:`crypto.roster`.

``roster.json`` in the state directory holds the pinned document, the signatures that made it
acceptable, and the digests and members of every version pinned before (to tell whether the HE
key predates a removal, which makes it unusable until it rotates).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bank_node.agent.client import ConsortiumClient
from bank_node.agent.errors import CeremonyError
from bank_node.agent.identity import BankIdentity
from bank_node.agent.state import StateDir
from crypto.roster import Member, Roster, RosterError, accept, normalise_fingerprint

__all__ = [
    "PinnedRoster",
    "approve_roster",
    "load_pinned",
    "propose_roster",
    "require_roster",
    "sync_roster",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PinnedRoster:
    """The pinned roster and the history of the versions pinned before it.

    Attributes
    ----------
    roster
        The current membership.
    history
        Digest to ``(version, member ids)`` of every version this bank pinned, current included.
    """

    roster: Roster
    history: Mapping[str, tuple[int, tuple[str, ...]]]

    def removed_since(self, digest: str) -> tuple[str, ...]:
        """Banks of the pinned version ``digest`` that are no longer members.

        Raises
        ------
        CeremonyError
            ``digest`` is not a roster this bank ever pinned.
        """
        entry = self.history.get(digest)
        if entry is None:
            raise CeremonyError(f"roster {digest[:16]} is not one this bank pinned")
        return tuple(sorted(set(entry[1]) - set(self.roster.bank_ids)))


def load_pinned(state: StateDir) -> PinnedRoster | None:
    """The pinned roster, or None before the first."""
    raw = state.read_secret(StateDir.ROSTER)
    if raw is None:
        return None
    stored = json.loads(raw)
    try:
        roster = Roster.from_bytes(stored["document"].encode("utf-8"))
    except (RosterError, KeyError, AttributeError) as exc:
        raise CeremonyError(f"{state.path(StateDir.ROSTER)} is damaged: {exc}") from None
    history = {digest: (int(entry[0]), tuple(entry[1])) for digest, entry in stored.get("history", {}).items()}
    return PinnedRoster(roster=roster, history=history)


def _pin(state: StateDir, pinned: PinnedRoster | None, roster: Roster, signatures: Mapping[str, str]) -> PinnedRoster:
    history = dict(pinned.history) if pinned else {}
    history[roster.digest] = (roster.version, roster.bank_ids)
    document = {
        "document": roster.to_bytes().decode("utf-8"),
        "signatures": dict(signatures),
        "history": {digest: [version, list(ids)] for digest, (version, ids) in history.items()},
    }
    state.write_secret(StateDir.ROSTER, json.dumps(document, indent=2, sort_keys=True).encode())
    log.info("pinned roster version %d: %s", roster.version, ", ".join(roster.bank_ids))
    return PinnedRoster(roster=roster, history=history)


def sync_roster(client: ConsortiumClient, identity: BankIdentity, state: StateDir) -> PinnedRoster | None:
    """Pin every relayed roster that follows the pinned one under the rules; return the result.

    Candidates that break a rule (forged, replayed, not signed by enough members) are skipped
    with a log line; they never replace what is pinned.
    """
    pinned = load_pinned(state)
    while True:
        since = pinned.roster.version if pinned else 0
        relayed = client.list_rosters(since=since)
        if pinned is None:  # a founder pins version 1; a bank that joined later, the newest it approved
            candidates = sorted(relayed, key=lambda c: -c.version)
        else:
            candidates = [c for c in relayed if c.version == since + 1]
        chosen = None
        for candidate in candidates:
            try:
                roster = Roster.from_bytes(candidate.document)
                accept(pinned.roster if pinned else None, roster, candidate.signatures, bank_id=identity.bank_id)
            except RosterError as exc:
                log.info("roster candidate %s not pinned: %s", candidate.digest[:16], exc)
                continue
            chosen = (roster, candidate.signatures)
            break
        if chosen is None:
            return pinned
        pinned = _pin(state, pinned, *chosen)


def require_roster(client: ConsortiumClient, identity: BankIdentity, state: StateDir) -> PinnedRoster:
    """The pinned roster after a sync, in which this bank must be a member.

    Raises
    ------
    CeremonyError
        Nothing pinned yet, or this bank is no longer a member.
    """
    pinned = sync_roster(client, identity, state)
    if pinned is None:
        raise CeremonyError(
            "this bank has pinned no roster yet: compare fingerprints with the other banks, then "
            "`fedfraud bank roster propose` / `fedfraud bank roster approve`"
        )
    if pinned.roster.member(identity.bank_id) is None:
        raise CeremonyError(f"this bank was removed from the consortium in roster version {pinned.roster.version}")
    return pinned


def _checked_member(bank_id: str, signing_key: str | None, box_key: str | None, expected: str) -> Member:
    if not signing_key or not box_key:
        raise CeremonyError(f"bank {bank_id!r} has not registered its keys yet")
    member = Member(bank_id=bank_id, signing_key=signing_key, box_key=box_key)
    if normalise_fingerprint(expected) != member.fingerprint:
        raise CeremonyError(
            f"bank {bank_id!r}'s keys have fingerprint {member.fingerprint}, not the {normalise_fingerprint(expected)} "
            "you were given: do not add it; ask that bank, over a channel you trust, to read its fingerprint again"
        )
    return member


def propose_roster(
    client: ConsortiumClient,
    identity: BankIdentity,
    state: StateDir,
    *,
    add: Mapping[str, str],
    remove: Iterable[str] = (),
) -> Roster:
    """Draft the next roster (pinned members, minus ``remove``, plus ``add``), sign and post it.

    Parameters
    ----------
    add
        Bank id to the fingerprint its staff read out; their keys are taken from the consortium
        and must match. For the first roster, every other founding bank.
    remove
        Members to drop (the key then rotates).

    Raises
    ------
    CeremonyError
        A fingerprint that does not match, an unknown bank, or a roster that breaks a rule.
    """
    pinned = sync_roster(client, identity, state)
    registered = {bank.bank_id: bank for bank in client.list_banks()}
    members: dict[str, Member] = {}
    if pinned is None:
        members[identity.bank_id] = Member(identity.bank_id, identity.signing_key_b64, identity.box_key_b64)
    else:
        members.update({m.bank_id: m for m in pinned.roster.members})
    for bank_id in remove:
        if bank_id not in members:
            raise CeremonyError(f"bank {bank_id!r} is not a member of the pinned roster")
        del members[bank_id]
    for bank_id, expected in add.items():
        if bank_id in members:
            raise CeremonyError(f"bank {bank_id!r} is a member already")
        info = registered.get(bank_id)
        if info is None:
            raise CeremonyError(f"the consortium has no bank {bank_id!r}")
        members[bank_id] = _checked_member(bank_id, info.signing_key, info.box_key, expected)
    try:
        roster = Roster.create(
            version=1 if pinned is None else pinned.roster.version + 1,
            previous="" if pinned is None else pinned.roster.digest,
            members=members.values(),
        )
    except RosterError as exc:
        raise CeremonyError(str(exc)) from None
    client.sign_roster(roster.to_bytes(), signature=identity.sign_roster(roster.to_bytes()))
    log.info("proposed roster version %d (%s)", roster.version, roster.digest[:16])
    sync_roster(client, identity, state)
    return roster


def approve_roster(
    client: ConsortiumClient,
    identity: BankIdentity,
    state: StateDir,
    *,
    digest: str,
    fingerprints: Mapping[str, str],
) -> Roster:
    """Sign a relayed roster after checking it follows the pinned one and every key it adds.

    Parameters
    ----------
    digest
        The candidate's digest (a prefix of at least 8 hex digits is enough).
    fingerprints
        Bank id to the fingerprint its staff read out, for every bank the roster adds (for a
        bank that pinned nothing yet, founding or joining: every member but itself).

    Raises
    ------
    CeremonyError
        No such candidate, a key without a confirmed fingerprint, or a mismatch.
    """
    pinned = sync_roster(client, identity, state)
    since = pinned.roster.version if pinned else 0
    if len(digest) < 8:
        raise CeremonyError("give at least 8 hex digits of the roster digest")
    found = [c for c in client.list_rosters(since=since) if c.digest.startswith(digest.lower())]
    if len(found) != 1:
        raise CeremonyError(f"{len(found)} relayed rosters newer than version {since} match {digest!r}")
    roster = Roster.from_bytes(found[0].document)
    if pinned is not None and (roster.version != since + 1 or roster.previous != pinned.roster.digest):
        raise CeremonyError(f"roster {roster.digest[:16]} does not follow the pinned roster (version {since})")
    for member in roster.members:
        if member.bank_id == identity.bank_id:
            if (member.signing_key, member.box_key) != (identity.signing_key_b64, identity.box_key_b64):
                raise CeremonyError("this roster lists this bank with keys that are not its own")
            continue
        if pinned is not None and pinned.roster.member(member.bank_id) is not None:
            continue  # checked when it was added; accept() refuses a change of its keys
        if member.bank_id not in fingerprints:
            raise CeremonyError(
                f"roster adds bank {member.bank_id!r} (fingerprint {member.fingerprint}): confirm it with "
                f"--member {member.bank_id}=FINGERPRINT after comparing it with that bank"
            )
        _checked_member(member.bank_id, member.signing_key, member.box_key, fingerprints[member.bank_id])
    if pinned is not None:
        removed = sorted(set(pinned.roster.bank_ids) - set(roster.bank_ids))
        if removed:
            log.info("roster version %d removes %s", roster.version, ", ".join(removed))
    client.sign_roster(roster.to_bytes(), signature=identity.sign_roster(roster.to_bytes()))
    log.info("approved roster version %d (%s)", roster.version, roster.digest[:16])
    sync_roster(client, identity, state)
    return roster
