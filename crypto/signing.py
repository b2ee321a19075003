"""Ed25519 signatures over the consortium's canonical messages, and the banks' enrolment keys.

Each bank holds two key pairs: an Ed25519 *signing* key, whose public half the aggregator uses
to check every contribution and proposal, and an X25519 *box* key, to which the key ceremony
seals the shared HE secret context. Public keys travel base64-encoded (standard alphabet).

The canonical messages are those of ``docs/consortium-api.md``::

    fedfraud-contribution-v1\\n{run_id}\\n{round_key}\\n{bank_id}\\n{sha256 hex of the body}
    fedfraud-proposal-v1\\n{run_id}\\n{bank_id}\\n{sha256 hex of the body}
    fedfraud-note-v1\\n{run_id}\\n{round_key}\\n{bank_id}\\n{sha256 hex of the body}
    fedfraud-context-v1\\n{publisher}\\n{roster digest}\\n{sha256 hex of the public context}
    fedfraud-share-v1\\n{publisher}\\n{recipient}\\n{key_id}\\n{sha256 hex of the sealed share}

A public HE context is bound to the roster it was made for; a sealed share names its recipient and
key, so the aggregator can neither re-bind a context nor hand one bank's share to another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Final

from nacl.exceptions import BadSignatureError
from nacl.exceptions import CryptoError as NaClCryptoError
from nacl.public import PrivateKey, PublicKey, SealedBox
from nacl.signing import SigningKey, VerifyKey

__all__ = [
    "CONTRIBUTION_PREFIX",
    "PROPOSAL_PREFIX",
    "SIGNATURE_HEADER",
    "BankKeys",
    "SignatureError",
    "b64decode_key",
    "b64encode",
    "body_sha256",
    "contribution_message",
    "generate_bank_keys",
    "load_box_key",
    "load_signing_key",
    "open_sealed",
    "context_message",
    "note_message",
    "share_message",
    "proposal_message",
    "seal_to",
    "sign",
    "verify",
]

CONTRIBUTION_PREFIX: Final = "fedfraud-contribution-v1"
PROPOSAL_PREFIX: Final = "fedfraud-proposal-v1"
NOTE_PREFIX: Final = "fedfraud-note-v1"
CONTEXT_PREFIX: Final = "fedfraud-context-v1"
SHARE_PREFIX: Final = "fedfraud-share-v1"
SIGNATURE_HEADER: Final = "X-Fedfraud-Signature"
"""HTTP header carrying the base64 signature of a request body."""
KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64


class SignatureError(ValueError):
    """A signature or public key that cannot be accepted; the message says what is wrong."""


def body_sha256(body: bytes) -> str:
    """Hex SHA-256 of a request body, as the canonical messages quote it."""
    return hashlib.sha256(body).hexdigest()


def _message(*fields: str) -> bytes:
    for value in fields:
        if "\n" in value:
            raise SignatureError(f"a signed field may not contain a newline: {value!r}")
    return "\n".join(fields).encode("utf-8")


def contribution_message(run_id: str, round_key: str, bank_id: str, body: bytes) -> bytes:
    """The bytes a bank signs when it contributes ``body`` to a round.

    Parameters
    ----------
    run_id, round_key, bank_id
        Where the payload goes and who sends it.
    body
        The ciphertext payload exactly as uploaded.

    Returns
    -------
    bytes
        UTF-8 of ``fedfraud-contribution-v1\\n{run_id}\\n{round_key}\\n{bank_id}\\n{sha256 hex}``.
    """
    return _message(CONTRIBUTION_PREFIX, run_id, round_key, bank_id, body_sha256(body))


def note_message(run_id: str, round_key: str, bank_id: str, body: bytes) -> bytes:
    """The bytes a bank signs when it posts a note (its self-mask seed) to a released round."""
    return _message(NOTE_PREFIX, run_id, round_key, bank_id, body_sha256(body))


def context_message(publisher: str, roster_digest: str, body: bytes) -> bytes:
    """The bytes the publishing bank signs over a public HE context made for a roster."""
    return _message(CONTEXT_PREFIX, publisher, roster_digest, body_sha256(body))


def share_message(publisher: str, recipient: str, key_id: str, body: bytes) -> bytes:
    """The bytes the publishing bank signs over the secret context sealed to ``recipient``."""
    return _message(SHARE_PREFIX, publisher, recipient, key_id, body_sha256(body))


def proposal_message(run_id: str, bank_id: str, body: bytes) -> bytes:
    """The bytes a bank signs when it proposes a model.

    Parameters
    ----------
    run_id, bank_id
        The run the proposal is for, and who proposes.
    body
        The model file exactly as uploaded.

    Returns
    -------
    bytes
        UTF-8 of ``fedfraud-proposal-v1\\n{run_id}\\n{bank_id}\\n{sha256 hex}``.
    """
    return _message(PROPOSAL_PREFIX, run_id, bank_id, body_sha256(body))


def b64encode(raw: bytes) -> str:
    """Standard base64 text of ``raw``."""
    return base64.b64encode(raw).decode("ascii")


def b64decode_key(text: str, *, what: str = "key", length: int = KEY_BYTES) -> bytes:
    """Decode base64 ``text`` that must hold exactly ``length`` bytes.

    Raises
    ------
    SignatureError
        Not base64, or of the wrong length; the message names ``what``.
    """
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SignatureError(f"{what} is not valid base64") from None
    if len(raw) != length:
        raise SignatureError(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


def load_signing_key(public_key_b64: str) -> VerifyKey:
    """An Ed25519 public key from base64; raises :class:`SignatureError` if malformed."""
    return VerifyKey(b64decode_key(public_key_b64, what="Ed25519 signing key"))


def load_box_key(public_key_b64: str) -> PublicKey:
    """An X25519 public key from base64; raises :class:`SignatureError` if malformed."""
    return PublicKey(b64decode_key(public_key_b64, what="X25519 box key"))


def sign(private_key: SigningKey, message: bytes) -> str:
    """Sign ``message`` with an Ed25519 private key; return the base64 signature."""
    return b64encode(private_key.sign(message).signature)


def verify(public_key_b64: str, message: bytes, signature_b64: str | None) -> None:
    """Check an Ed25519 signature.

    Parameters
    ----------
    public_key_b64
        The signer's registered public key, base64.
    message
        The canonical message the signature should cover.
    signature_b64
        The base64 signature as received (``None`` or empty if none was sent).

    Raises
    ------
    SignatureError
        The signature is missing, malformed, or does not match the message and key.
    """
    if not signature_b64:
        raise SignatureError(f"missing signature: send it base64 in the {SIGNATURE_HEADER} header")
    key = load_signing_key(public_key_b64)
    signature = b64decode_key(signature_b64.strip(), what="signature", length=SIGNATURE_BYTES)
    try:
        key.verify(message, signature)
    except BadSignatureError:
        raise SignatureError(
            "signature does not match: it was not made by this bank's signing key over this body"
        ) from None


@dataclass(frozen=True)
class BankKeys:
    """A bank's enrolment key pairs (kept by the bank; only the public halves are sent).

    Attributes
    ----------
    signing
        Ed25519 private key.
    box
        X25519 private key.
    """

    signing: SigningKey
    box: PrivateKey

    @property
    def signing_public_b64(self) -> str:
        """The Ed25519 public key, base64: ``signing_key`` of the key registration."""
        return b64encode(bytes(self.signing.verify_key))

    @property
    def box_public_b64(self) -> str:
        """The X25519 public key, base64: ``box_key`` of the key registration."""
        return b64encode(bytes(self.box.public_key))

    def to_bytes(self) -> bytes:
        """64 bytes: the two private seeds, for the bank's own key file (keep it secret)."""
        return bytes(self.signing) + bytes(self.box)

    @classmethod
    def from_bytes(cls, raw: bytes) -> BankKeys:
        """Inverse of :meth:`to_bytes`."""
        if len(raw) != 2 * KEY_BYTES:
            raise SignatureError(f"a bank key file holds {2 * KEY_BYTES} bytes, got {len(raw)}")
        return cls(signing=SigningKey(raw[:KEY_BYTES]), box=PrivateKey(raw[KEY_BYTES:]))


def generate_bank_keys() -> BankKeys:
    """Fresh Ed25519 and X25519 key pairs for a bank."""
    return BankKeys(signing=SigningKey.generate(), box=PrivateKey.generate())


def seal_to(box_key_b64: str, plaintext: bytes) -> bytes:
    """Seal ``plaintext`` (e.g. the secret HE context) to a bank's X25519 public key."""
    return SealedBox(load_box_key(box_key_b64)).encrypt(plaintext)


def open_sealed(box: PrivateKey, sealed: bytes) -> bytes:
    """Open a sealed box with the recipient's X25519 private key.

    Raises
    ------
    SignatureError
        The box was not sealed to this key, or was altered.
    """
    try:
        return SealedBox(box).decrypt(sealed)
    except NaClCryptoError:
        raise SignatureError("cannot open the sealed share: not sealed to this bank's box key, or altered") from None
