"""Bank signatures over the contract's canonical messages, and sealed key shares."""

from __future__ import annotations

import hashlib

import pytest

from crypto.signing import (
    BankKeys,
    SignatureError,
    contribution_message,
    generate_bank_keys,
    open_sealed,
    proposal_message,
    seal_to,
    sign,
    verify,
)

BODY = b"\x00ciphertext bytes\xff"


def test_messages_follow_the_contract_byte_for_byte() -> None:
    digest = hashlib.sha256(BODY).hexdigest()
    assert contribution_message("run-1", "gbdt/tree-0/level-1", "bank-2", BODY) == (
        f"fedfraud-contribution-v1\nrun-1\ngbdt/tree-0/level-1\nbank-2\n{digest}".encode()
    )
    assert proposal_message("ceremony", "bank-1", BODY) == f"fedfraud-proposal-v1\nceremony\nbank-1\n{digest}".encode()


def test_a_signature_verifies_with_the_banks_public_key_only() -> None:
    keys, other = generate_bank_keys(), generate_bank_keys()
    message = contribution_message("run-1", "r", "bank-1", BODY)
    signature = sign(keys.signing, message)
    verify(keys.signing_public_b64, message, signature)
    with pytest.raises(SignatureError, match="does not match"):
        verify(other.signing_public_b64, message, signature)


@pytest.mark.parametrize(
    ("run_id", "round_key", "bank_id", "body"),
    [
        ("run-2", "r", "bank-1", BODY),  # another run
        ("run-1", "r2", "bank-1", BODY),  # another round: no replay into a later round
        ("run-1", "r", "bank-3", BODY),  # another bank
        ("run-1", "r", "bank-1", BODY + b"!"),  # another body
    ],
)
def test_a_signature_covers_run_round_bank_and_body(run_id: str, round_key: str, bank_id: str, body: bytes) -> None:
    keys = generate_bank_keys()
    signature = sign(keys.signing, contribution_message("run-1", "r", "bank-1", BODY))
    with pytest.raises(SignatureError):
        verify(keys.signing_public_b64, contribution_message(run_id, round_key, bank_id, body), signature)


def test_a_contribution_signature_is_not_a_proposal_signature() -> None:
    keys = generate_bank_keys()
    signature = sign(keys.signing, contribution_message("run-1", "r", "bank-1", BODY))
    with pytest.raises(SignatureError):
        verify(keys.signing_public_b64, proposal_message("run-1", "bank-1", BODY), signature)


@pytest.mark.parametrize(
    ("signature", "problem"),
    [(None, "missing signature"), ("", "missing signature"), ("not base64!", "not valid base64"), ("AAAA", "64 bytes")],
)
def test_malformed_signatures_are_named(signature: str | None, problem: str) -> None:
    keys = generate_bank_keys()
    with pytest.raises(SignatureError, match=problem):
        verify(keys.signing_public_b64, b"message", signature)


def test_a_malformed_public_key_is_named() -> None:
    with pytest.raises(SignatureError, match="Ed25519 signing key must be 32 bytes"):
        verify("AAAA", b"message", "A" * 88)


def test_fields_with_newlines_cannot_forge_another_message() -> None:
    with pytest.raises(SignatureError, match="newline"):
        contribution_message("run-1\nx", "r", "bank-1", BODY)


def test_keys_round_trip_through_their_file_form() -> None:
    keys = generate_bank_keys()
    again = BankKeys.from_bytes(keys.to_bytes())
    assert again.signing_public_b64 == keys.signing_public_b64
    assert again.box_public_b64 == keys.box_public_b64
    with pytest.raises(SignatureError):
        BankKeys.from_bytes(b"short")


def test_a_sealed_share_opens_only_with_the_recipients_private_key() -> None:
    recipient, stranger = generate_bank_keys(), generate_bank_keys()
    sealed = seal_to(recipient.box_public_b64, b"secret context")
    assert b"secret context" not in sealed
    assert open_sealed(recipient.box, sealed) == b"secret context"
    with pytest.raises(SignatureError, match="cannot open"):
        open_sealed(stranger.box, sealed)
