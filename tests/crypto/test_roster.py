"""The rules a bank applies before pinning a roster (``crypto.roster.accept``)."""

from __future__ import annotations

import pytest

from crypto.roster import Member, Roster, RosterError, accept, fingerprint, roster_message
from crypto.signing import BankKeys, generate_bank_keys, sign


def _banks(n: int) -> dict[str, BankKeys]:
    return {f"bank-{i}": generate_bank_keys() for i in range(1, n + 1)}


def _member(bank_id: str, keys: BankKeys) -> Member:
    return Member(bank_id, keys.signing_public_b64, keys.box_public_b64)


def _signed(roster: Roster, keys: dict[str, BankKeys], signers: list[str]) -> dict[str, str]:
    document = roster.to_bytes()
    return {b: sign(keys[b].signing, roster_message(b, document)) for b in signers}


@pytest.fixture
def keys() -> dict[str, BankKeys]:
    return _banks(5)


@pytest.fixture
def first(keys: dict[str, BankKeys]) -> Roster:
    return Roster.create(version=1, previous="", members=[_member(b, keys[b]) for b in ("bank-1", "bank-2", "bank-3", "bank-4")])


def test_the_first_roster_needs_every_members_signature(keys: dict[str, BankKeys], first: Roster) -> None:
    with pytest.raises(RosterError, match=r"missing or invalid: \['bank-4'\]"):
        accept(None, first, _signed(first, keys, ["bank-1", "bank-2", "bank-3"]), bank_id="bank-1")
    assert accept(None, first, _signed(first, keys, list(first.bank_ids)), bank_id="bank-1") == first
    with pytest.raises(RosterError, match="must list it"):
        accept(None, first, _signed(first, keys, list(first.bank_ids)), bank_id="bank-5")


def test_a_change_needs_a_majority_of_the_pinned_members_and_every_bank_it_adds(
    keys: dict[str, BankKeys], first: Roster
) -> None:
    grown = Roster.create(version=2, previous=first.digest, members=[*first.members, _member("bank-5", keys["bank-5"])])
    with pytest.raises(RosterError, match="needs 3 signatures"):
        accept(first, grown, _signed(grown, keys, ["bank-1", "bank-2", "bank-5"]), bank_id="bank-1")
    with pytest.raises(RosterError, match=r"did not sign it: \['bank-5'\]"):
        accept(first, grown, _signed(grown, keys, ["bank-1", "bank-2", "bank-3"]), bank_id="bank-1")
    assert accept(first, grown, _signed(grown, keys, ["bank-1", "bank-2", "bank-3", "bank-5"]), bank_id="bank-4")


def test_a_change_may_not_swap_a_members_keys(keys: dict[str, BankKeys], first: Roster) -> None:
    other = generate_bank_keys()
    swapped = Roster.create(version=2, previous=first.digest,
                            members=[_member("bank-1", other), *first.members[1:]])
    with pytest.raises(RosterError, match="changes the keys of bank-1"):
        accept(first, swapped, _signed(swapped, {**keys, "bank-1": other}, ["bank-1", "bank-2", "bank-3"]),
               bank_id="bank-2")


def test_fewer_than_three_members_or_a_non_canonical_document_is_refused(keys: dict[str, BankKeys], first: Roster) -> None:
    with pytest.raises(RosterError, match="3 to"):
        Roster.create(version=1, previous="", members=[_member(b, keys[b]) for b in ("bank-1", "bank-2")])
    assert Roster.from_bytes(first.to_bytes()) == first
    with pytest.raises(RosterError, match="canonical"):
        Roster.from_bytes(first.to_bytes().replace(b'"version":1', b'"version": 1'))


def test_a_fingerprint_covers_both_keys(keys: dict[str, BankKeys]) -> None:
    one = keys["bank-1"]
    printed = fingerprint(one.signing_public_b64, one.box_public_b64)
    assert len(printed.replace(" ", "")) == 32 and printed == fingerprint(one.signing_public_b64, one.box_public_b64)
    assert printed != fingerprint(one.signing_public_b64, keys["bank-2"].box_public_b64)
    assert printed != fingerprint(keys["bank-2"].signing_public_b64, one.box_public_b64)
