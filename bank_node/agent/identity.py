"""The bank's enrolment identity: its Ed25519 signing key and X25519 box key.

Generated once, kept in the state directory (0600), and loaded on every restart: the consortium
knows the public halves from registration, so a bank that lost them must be re-enrolled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bank_node.agent.state import StateDir
from crypto.signing import (
    BankKeys,
    context_message,
    contribution_message,
    generate_bank_keys,
    note_message,
    open_sealed,
    proposal_message,
    share_message,
    sign,
)
from crypto.roster import fingerprint, roster_message

__all__ = ["BankIdentity", "load_identity", "load_or_create_identity"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BankIdentity:
    """One bank's id and private keys; signs what it sends and opens what is sealed to it.

    Attributes
    ----------
    bank_id
        The id the consortium enrolled the bank under.
    keys
        The private key pairs.
    """

    bank_id: str
    keys: BankKeys

    def __repr__(self) -> str:
        return f"<BankIdentity {self.bank_id} signing={self.signing_key_b64[:8]}...>"

    @property
    def signing_key_b64(self) -> str:
        """Public Ed25519 key, base64 (``signing_key`` of the key registration)."""
        return self.keys.signing_public_b64

    @property
    def box_key_b64(self) -> str:
        """Public X25519 key, base64 (``box_key`` of the key registration)."""
        return self.keys.box_public_b64

    def sign_contribution(self, run_id: str, round_key: str, body: bytes) -> str:
        """Base64 signature of a contribution to ``round_key`` of ``run_id``."""
        return sign(self.keys.signing, contribution_message(run_id, round_key, self.bank_id, body))

    def sign_note(self, run_id: str, round_key: str, body: bytes) -> str:
        """Base64 signature of a note (a self-mask seed) to ``round_key`` of ``run_id``."""
        return sign(self.keys.signing, note_message(run_id, round_key, self.bank_id, body))

    @property
    def fingerprint(self) -> str:
        """What this bank's staff read out to the other members (see ``crypto.roster``)."""
        return fingerprint(self.signing_key_b64, self.box_key_b64)

    def sign_proposal(self, run_id: str, body: bytes) -> str:
        """Base64 signature of a model proposed for ``run_id``."""
        return sign(self.keys.signing, proposal_message(run_id, self.bank_id, body))

    def sign_assessment(self, run_id: str, document: bytes) -> str:
        """Base64 signature of this bank's assessment of ``run_id``'s candidate."""
        from schemas.assessment import assessment_message

        return sign(self.keys.signing, assessment_message(run_id, self.bank_id, document))

    def sign_roster(self, document: bytes) -> str:
        """Base64 signature approving a roster document."""
        return sign(self.keys.signing, roster_message(self.bank_id, document))

    def sign_context(self, roster_digest: str, body: bytes) -> str:
        """Base64 signature of a public HE context made for the roster ``roster_digest``."""
        return sign(self.keys.signing, context_message(self.bank_id, roster_digest, body))

    def sign_share(self, recipient: str, key_id: str, sealed: bytes) -> str:
        """Base64 signature of key ``key_id`` sealed to ``recipient``."""
        return sign(self.keys.signing, share_message(self.bank_id, recipient, key_id, sealed))

    def open_sealed(self, sealed: bytes) -> bytes:
        """Open a box sealed to this bank.

        Raises
        ------
        crypto.signing.SignatureError
            Not sealed to this bank's box key, or altered.
        """
        return open_sealed(self.keys.box, sealed)


def load_identity(state: StateDir, bank_id: str) -> BankIdentity:
    """Load the bank's stored keys.

    Raises
    ------
    FileNotFoundError
        No keys in the state directory yet (run ``enrol``).
    crypto.signing.SignatureError
        The key file is damaged.
    """
    raw = state.read_secret(StateDir.KEYS)
    if raw is None:
        raise FileNotFoundError(f"no bank keys in {state.root}: run `fedfraud bank enrol` first")
    return BankIdentity(bank_id=bank_id, keys=BankKeys.from_bytes(raw))


def load_or_create_identity(state: StateDir, bank_id: str) -> tuple[BankIdentity, bool]:
    """Load the stored keys, or generate and store them (0600) on first use.

    Returns
    -------
    identity, created
        The identity, and whether it was generated now.
    """
    try:
        return load_identity(state, bank_id), False
    except FileNotFoundError:
        pass
    keys = generate_bank_keys()
    state.write_secret(StateDir.KEYS, keys.to_bytes())
    log.info("generated bank keys: bank=%s state_dir=%s", bank_id, state.root)
    return BankIdentity(bank_id=bank_id, keys=keys), True

