"""The bank's identity and enrolment files: private (0600), created once, reloaded on restart."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from bank_node.agent.enrolment import enrol, register_keys
from bank_node.agent.errors import ConsortiumError
from bank_node.agent.identity import load_identity, load_or_create_identity
from bank_node.agent.state import StateDir
from crypto.signing import proposal_message, verify
from tests.bank_node.agent.conftest import Bank
from tests.bank_node.agent.fake_consortium import FakeConsortium


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_enrol_writes_private_files_and_registers_the_public_keys(fake: FakeConsortium, banks: list[Bank]) -> None:
    bank = banks[0]

    for name in (StateDir.CONFIG, StateDir.TOKEN, StateDir.KEYS):
        assert mode(bank.state.path(name)) == 0o600, name
    assert mode(bank.state.root) == 0o700
    assert bank.state.load_token() == bank.token
    assert bank.state.load_config().bank_id == "bank-1"
    registered = fake.banks["bank-1"]
    assert (registered["signing_key"], registered["box_key"]) == (bank.identity.signing_key_b64,
                                                                   bank.identity.box_key_b64)


def test_keys_are_reloaded_not_regenerated(banks: list[Bank]) -> None:
    bank = banks[0]

    reloaded, created = load_or_create_identity(bank.state, "bank-1")

    assert not created
    assert reloaded.keys.to_bytes() == bank.identity.keys.to_bytes()
    message = proposal_message("run-1", "bank-1", b"model")
    verify(bank.identity.signing_key_b64, message, reloaded.sign_proposal("run-1", b"model"))


def test_enrolling_again_with_the_same_keys_is_fine(url: str, banks: list[Bank]) -> None:
    bank = banks[0]
    again = enrol(bank.state, url=url, bank_id=bank.bank_id, token=bank.token, client=bank.client)
    assert again.keys.to_bytes() == bank.identity.keys.to_bytes()
    assert register_keys(bank.client, again) is False


def test_other_keys_for_an_enrolled_bank_are_refused(banks: list[Bank], tmp_path: Path) -> None:
    bank = banks[0]
    stranger, _ = load_or_create_identity(StateDir(tmp_path / "elsewhere"), bank.bank_id)
    with pytest.raises(ConsortiumError, match="already holds other keys"):
        register_keys(bank.client, stranger)


def test_secret_files_are_never_logged_or_shown(url: str, banks: list[Bank], caplog: pytest.LogCaptureFixture) -> None:
    bank = banks[0]
    caplog.set_level(logging.DEBUG)
    enrol(bank.state, url=url, bank_id=bank.bank_id, token=bank.token, client=bank.client)
    assert caplog.records, "enrolment logs what it did"
    secret = bank.identity.keys.to_bytes().hex()
    for record in caplog.records:
        assert bank.token not in record.getMessage() and secret not in record.getMessage()
    assert bank.token not in repr(bank.client) and bank.token not in repr(bank.state)
    assert secret not in repr(bank.identity)


def test_missing_keys_say_to_enrol(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="fedfraud bank enrol"):
        load_identity(StateDir(tmp_path), "bank-1")
