"""The key ceremony over HTTP: one secret key for all banks, never readable by the aggregator."""

from __future__ import annotations

import stat
from collections.abc import Callable

import numpy as np
import pytest

import crypto
from bank_node.agent.ceremony import (
    check_consortium_key,
    fetch_share,
    load_secret_scheme,
    publish_keys,
)
from bank_node.agent.errors import AuthError, CeremonyError
from bank_node.agent.membership import approve_roster, propose_roster
from bank_node.agent.state import StateDir
from crypto.signing import SignatureError
from tests.bank_node.agent.conftest import Bank
from tests.bank_node.agent.fake_consortium import FakeConsortium


@pytest.mark.parametrize("scheme", ["plain", "ckks"])
def test_three_banks_end_with_the_same_secret_key(fake: FakeConsortium, banks: list[Bank], scheme: str) -> None:
    first, second, third = banks

    published = publish_keys(first.client, first.identity, first.state, scheme=scheme)
    received = [fetch_share(b.client, b.identity, b.state) for b in (second, third)]

    assert published.shared_with == ("bank-2", "bank-3")
    assert {r.key_id for r in received} == {published.key_id}
    public = crypto.load_context(fake.public_context or b"", require_public=True)
    assert public.key_id == published.key_id and not public.has_secret_key
    for bank in banks:
        context = load_secret_scheme(bank.state)
        assert context.has_secret_key and context.key_id == published.key_id
        assert stat.S_IMODE(bank.state.path(StateDir.SECRET_CONTEXT).stat().st_mode) == 0o600
        check_consortium_key(bank.client, bank.identity, bank.state, context)
    # What one bank encrypts, another decrypts: the key really is shared.
    # integers, as the protocol's masked words are: recovered exactly after rounding
    values = crypto.load_context(fake.public_context or b"", require_public=True).encrypt([15, 2**30])
    assert list(np.rint(load_secret_scheme(third.state).decrypt(values))) == [15, 2**30]


def test_a_bank_cannot_open_another_banks_share(fake: FakeConsortium, keyed_banks: list[Bank]) -> None:
    _, second, third = keyed_banks
    with pytest.raises(AuthError):
        second.client.get_share("bank-3")
    # Even holding the sealed bytes (as the aggregator does), only the recipient's key opens them.
    with pytest.raises(SignatureError, match="cannot open"):
        second.identity.open_sealed(fake.shares["bank-3"][0])
    assert crypto.load_context(third.identity.open_sealed(fake.shares["bank-3"][0])).has_secret_key


def test_shares_hold_no_readable_key_material(fake: FakeConsortium, keyed_banks: list[Bank]) -> None:
    secret = keyed_banks[0].state.load_secret_context() or b""
    for sealed, _ in fake.shares.values():
        with pytest.raises(crypto.PayloadError):
            crypto.load_context(sealed)
        assert secret not in sealed


def test_fetching_before_the_ceremony_says_so(banks: list[Bank]) -> None:
    bank = banks[1]
    with pytest.raises(CeremonyError, match="not reached bank 'bank-2' yet"):
        fetch_share(bank.client, bank.identity, bank.state)
    with pytest.raises(CeremonyError, match="run `fedfraud bank ceremony` first"):
        load_secret_scheme(bank.state)


def test_waiting_for_the_share_until_it_is_posted(banks: list[Bank]) -> None:
    first, second, _ = banks
    pauses: list[float] = []

    def post_after_first_pause(pause: float) -> None:
        pauses.append(pause)
        if len(pauses) == 1:
            publish_keys(first.client, first.identity, first.state, scheme="plain")

    result = fetch_share(second.client, second.identity, second.state, wait_s=60.0, sleep=post_after_first_pause)

    assert len(pauses) == 1 and result.key_id == load_secret_scheme(first.state).key_id


def test_publishing_again_reuses_the_key_and_shares_it_with_members_added_since(
    fake: FakeConsortium, keyed_banks: list[Bank], make_bank: Callable[[str], Bank]
) -> None:
    first, second, third = keyed_banks
    key_id = load_secret_scheme(first.state).key_id
    late = make_bank("bank-4")
    # Enrolled by the operator, but no member pinned it yet: it gets nothing.
    assert publish_keys(first.client, first.identity, first.state, scheme="plain").shared_with == ()
    with pytest.raises(CeremonyError, match="pinned no roster"):
        fetch_share(late.client, late.identity, late.state)

    added = propose_roster(first.client, first.identity, first.state, add={"bank-4": late.identity.fingerprint})
    approve_roster(second.client, second.identity, second.state, digest=added.digest,
                   fingerprints={"bank-4": late.identity.fingerprint})
    founders = {b.bank_id: b.identity.fingerprint for b in keyed_banks}
    approve_roster(late.client, late.identity, late.state, digest=added.digest, fingerprints=founders)

    again = publish_keys(first.client, first.identity, first.state, scheme="plain")

    assert again.key_id == key_id and again.shared_with == ("bank-4",)
    assert fetch_share(late.client, late.identity, late.state).key_id == key_id


def test_a_second_generating_bank_is_told_the_consortium_holds_a_key(keyed_banks: list[Bank]) -> None:
    rival = keyed_banks[2]
    rival.state.path(StateDir.SECRET_CONTEXT).unlink()
    with pytest.raises(CeremonyError, match="already holds another HE context"):
        publish_keys(rival.client, rival.identity, rival.state, scheme="plain")


def test_a_stale_local_key_is_detected(keyed_banks: list[Bank]) -> None:
    bank = keyed_banks[1]
    bank.state.save_secret_context(crypto.generate("plain").secret_context())
    with pytest.raises(CeremonyError, match="run `fedfraud bank ceremony` again"):
        check_consortium_key(bank.client, bank.identity, bank.state, load_secret_scheme(bank.state))
