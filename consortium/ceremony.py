"""Enrolment and the key ceremony, as seen by the aggregator.

The aggregator keeps the banks' *public* keys, the *public* HE context and sealed shares of the
secret context that it cannot open. Anything that would let it decrypt is refused at the door.
"""

from __future__ import annotations

import logging
from typing import Final

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from consortium.auth import issue_token
from consortium.errors import BadRequest, Conflict, Forbidden, NotFound, Unprocessable
from consortium.extensions import blob_store, now, write_lock
from consortium.ledger import record
from consortium.roster import roster_by_digest
from consortium.storage.models import ID_PATTERN, Bank, KeyMaterial, KeyShare, Role

__all__ = ["BANK_ID_PATTERN", "enrol_bank", "get_bank", "post_share", "publish_context", "register_keys"]

logger = logging.getLogger("consortium.ceremony")

BANK_ID_PATTERN: Final = ID_PATTERN
_SEALED_BOX_OVERHEAD: Final = 48  # X25519 ephemeral public key + Poly1305 tag
_HE_MAGIC: Final = b"FFHE"


def get_bank(session: Session, bank_id: str) -> Bank:
    """The bank ``bank_id``, or 404."""
    bank = session.get(Bank, bank_id) if BANK_ID_PATTERN.match(bank_id) else None
    if bank is None:
        raise NotFound(f"no bank {bank_id!r}")
    return bank


def enrol_bank(session: Session, *, bank_id: str, name: str) -> tuple[Bank, str]:
    """Enrol a bank and issue its token (returned once, stored as a hash).

    Raises
    ------
    Conflict
        The bank id is taken.
    """
    with write_lock():
        if session.get(Bank, bank_id) is not None:
            raise Conflict(f"bank {bank_id!r} is already enrolled")
        bank = Bank(bank_id=bank_id, name=name, enrolled_at=now())
        session.add(bank)
        session.flush()
        token = issue_token(session, Role.BANK, bank_id)
        record(session, "bank.enrolled", bank_id=bank_id, details={"name": name})
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            raise Conflict(f"bank {bank_id!r} is already enrolled") from None
    logger.info("bank enrolled", extra={"bank_id": bank_id})
    return bank, token


def register_keys(session: Session, bank: Bank, *, signing_key: str, box_key: str) -> Bank:
    """Record a bank's Ed25519 and X25519 public keys, once.

    Raises
    ------
    Unprocessable
        A key is not base64 of 32 bytes.
    Conflict
        Keys were registered already.
    """
    from crypto.signing import SignatureError, load_box_key, load_signing_key

    errors: dict[str, list[str]] = {}
    for field, loader, value in (("signing_key", load_signing_key, signing_key), ("box_key", load_box_key, box_key)):
        try:
            loader(value)
        except SignatureError as exc:
            errors[field] = [str(exc)]
    if errors:
        raise Unprocessable("the public keys are invalid", errors)
    with write_lock():
        session.refresh(bank, with_for_update=True)
        if bank.signing_key is not None:
            session.rollback()
            raise Conflict(f"bank {bank.bank_id!r} registered its keys already; keys are registered once")
        bank.signing_key = signing_key
        bank.box_key = box_key
        bank.keys_registered_at = now()
        record(session, "bank.keys_registered", bank_id=bank.bank_id,
               details={"signing_key": signing_key, "box_key": box_key})
        session.commit()
    logger.info("bank keys registered", extra={"bank_id": bank.bank_id})
    return bank


def key_material(session: Session) -> KeyMaterial | None:
    """The current key generation's public context record, if the ceremony happened."""
    return session.execute(select(KeyMaterial).order_by(KeyMaterial.id.desc()).limit(1)).scalar_one_or_none()


def key_material_by_id(session: Session, key_id: str) -> KeyMaterial | None:
    """The public context record of key ``key_id`` (any generation)."""
    return session.execute(select(KeyMaterial).where(KeyMaterial.key_id == key_id)).scalar_one_or_none()


def publish_context(
    session: Session, bank: Bank, *, body: bytes, signature: str | None, roster_digest: str | None
) -> KeyMaterial:
    """Accept a public HE context from the bank that generated the key, for a roster.

    The first context starts generation 1; a later one rotates the key, and is accepted only for
    a newer roster than the current key's (the banks rotate when a member leaves).

    Raises
    ------
    Conflict
        The bank has no signing key, this key was published already, or the roster is not newer.
    BadRequest
        Missing or wrong signature.
    Unprocessable
        An unknown roster, a publisher outside it, not an intact public context, or the secret key.
    """
    from crypto.registry import load_context
    from crypto.roster import Roster
    from crypto.scheme import CryptoError, UnexpectedSecretKeyError
    from crypto.signing import SignatureError, context_message, verify

    if not bank.signing_key:
        raise Conflict(f"bank {bank.bank_id!r} must register its keys before publishing a context")
    relayed = roster_by_digest(session, roster_digest or "")
    if relayed is None:
        message = "name the roster the key is made for (X-Fedfraud-Roster: its SHA-256 digest, as relayed here)"
        raise Unprocessable(message, {"X-Fedfraud-Roster": [message]})
    roster = Roster.from_bytes(relayed.document.encode("utf-8"))
    if roster.member(bank.bank_id) is None:
        message = f"bank {bank.bank_id!r} is not a member of roster version {roster.version}"
        raise Unprocessable(message, {"X-Fedfraud-Roster": [message]})
    try:
        verify(bank.signing_key, context_message(bank.bank_id, relayed.digest, body), signature)
    except SignatureError as exc:
        raise BadRequest(f"context refused: {exc}", {"X-Fedfraud-Signature": [str(exc)]}) from None
    try:
        context = load_context(body, require_public=True)
    except UnexpectedSecretKeyError:
        message = "refused: this context holds the secret key; publish the public context only"
        raise Unprocessable(message, {"body": [message]}) from None
    except CryptoError as exc:
        raise Unprocessable(f"not a public HE context: {exc}", {"body": [str(exc)]}) from None
    if context.has_secret_key:  # pragma: no cover - load_context(require_public=True) refuses it
        raise Unprocessable("refused: this context holds the secret key")
    if context.name == "plain" and not current_app.config["DEVELOPMENT_MODE"]:
        message = (
            "refused: the 'plain' scheme encrypts nothing; use ckks or paillier, or start the "
            "service in development mode (FEDFRAUD_DEVELOPMENT_MODE=true) for tests only"
        )
        raise Unprocessable(message, {"body": [message]})

    with write_lock():
        current = key_material(session)
        if current is not None and current.key_id == context.key_id:
            session.rollback()
            raise Conflict("this HE context was published already")
        if current is not None and roster.version <= current.roster_version:
            session.rollback()
            raise Conflict(
                f"the current key was made for roster version {current.roster_version}; a new key is published "
                "only for a newer roster (when a member leaves, the key rotates)"
            )
        digest = blob_store().put(body)
        material = KeyMaterial(
            id=1 if current is None else current.id + 1,
            context_digest=digest,
            context_size=len(body),
            scheme=context.name,
            key_id=context.key_id,
            publisher_bank_id=bank.bank_id,
            signature=signature or "",
            published_at=now(),
            roster_version=roster.version,
            roster_digest=relayed.digest,
        )
        record(session, "key.published", bank_id=bank.bank_id,
               details={"key_id": context.key_id, "scheme": context.name, "generation": material.id,
                        "context_sha256": digest, "context_size": len(body), "roster_version": roster.version,
                        "roster_digest": relayed.digest, "signature": signature or ""})
        _commit_with_blob(session, material, digest, "another HE context was published concurrently")
    logger.info("public context published", extra={"bank_id": bank.bank_id, "scheme": context.name,
                                                   "key_id": context.key_id, "generation": material.id})
    return material


def post_share(
    session: Session, publisher: Bank, recipient: Bank, *, body: bytes, signature: str | None
) -> KeyShare:
    """Relay the current key's secret context sealed to ``recipient`` (opaque to the aggregator).

    Raises
    ------
    Conflict
        No context yet, the recipient has no box key, or its share was posted already.
    Forbidden
        The caller did not publish the current context.
    BadRequest
        Missing or wrong signature.
    Unprocessable
        A recipient outside the key's roster, too short to be a sealed box, or an *unsealed* HE
        context (which would hand the aggregator the secret key).
    """
    from crypto.roster import Roster
    from crypto.signing import SignatureError, share_message, verify

    material = key_material(session)
    if material is None:
        raise Conflict("no HE context has been published yet")
    if material.publisher_bank_id != publisher.bank_id:
        raise Forbidden(f"only the bank that published the context ({material.publisher_bank_id!r}) posts shares")
    if not recipient.box_key:
        raise Conflict(f"bank {recipient.bank_id!r} has not registered its box key; nothing can be sealed to it")
    relayed = roster_by_digest(session, material.roster_digest)
    if relayed is None or Roster.from_bytes(relayed.document.encode("utf-8")).member(recipient.bank_id) is None:
        message = f"bank {recipient.bank_id!r} is not a member of the roster this key was made for"
        raise Unprocessable(message, {"bank_id": [message]})
    if body.startswith(_HE_MAGIC):
        message = "refused: this is an unsealed HE context; seal it to the bank's box key (X25519 sealed box)"
        raise Unprocessable(message, {"body": [message]})
    if len(body) <= _SEALED_BOX_OVERHEAD:
        message = f"a sealed share is longer than {_SEALED_BOX_OVERHEAD} bytes; got {len(body)}"
        raise Unprocessable(message, {"body": [message]})
    try:
        assert publisher.signing_key is not None  # it published the context
        verify(publisher.signing_key, share_message(publisher.bank_id, recipient.bank_id, material.key_id, body),
               signature)
    except SignatureError as exc:
        raise BadRequest(f"share refused: {exc}", {"X-Fedfraud-Signature": [str(exc)]}) from None
    with write_lock():
        if share_of(session, material.key_id, recipient.bank_id) is not None:
            session.rollback()
            raise Conflict(f"the share for bank {recipient.bank_id!r} was posted already")
        digest = blob_store().put(body)
        share = KeyShare(
            key_id=material.key_id,
            bank_id=recipient.bank_id,
            share_digest=digest,
            share_size=len(body),
            posted_by=publisher.bank_id,
            signature=signature or "",
            posted_at=now(),
        )
        record(session, "key.share_posted", bank_id=recipient.bank_id,
               details={"key_id": material.key_id, "posted_by": publisher.bank_id, "share_sha256": digest,
                        "share_size": len(body)})
        _commit_with_blob(session, share, digest, f"the share for bank {recipient.bank_id!r} was posted already")
    logger.info("sealed share relayed", extra={"bank_id": recipient.bank_id, "size": len(body)})
    return share


def share_of(session: Session, key_id: str, bank_id: str) -> KeyShare | None:
    """The share of key ``key_id`` sealed to ``bank_id``, if posted."""
    query = select(KeyShare).where(KeyShare.key_id == key_id, KeyShare.bank_id == bank_id)
    return session.execute(query).scalar_one_or_none()


def get_share(session: Session, bank_id: str) -> tuple[KeyShare, bytes]:
    """The current key's share sealed to ``bank_id`` and its bytes, or 404."""
    material = key_material(session)
    share = None if material is None else share_of(session, material.key_id, bank_id)
    if share is None:
        raise NotFound(f"no sealed share of the current key has been posted for bank {bank_id!r} yet")
    return share, blob_store().get(share.share_digest)


def banks(session: Session) -> list[Bank]:
    """Every enrolled bank, by id."""
    return list(session.execute(select(Bank).order_by(Bank.bank_id)).scalars())


def _commit_with_blob(session: Session, row: KeyMaterial | KeyShare, digest: str, conflict: str) -> None:
    """Commit the row that refers to a stored blob; if another request won the race, drop the
    blob unless some committed row uses the same bytes (a concurrent identical upload)."""
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        if not _blob_referenced(session, digest):
            blob_store().delete(digest)
        raise Conflict(conflict) from None


def _blob_referenced(session: Session, digest: str) -> bool:
    as_context = select(KeyMaterial.id).where(KeyMaterial.context_digest == digest)
    as_share = select(KeyShare.bank_id).where(KeyShare.share_digest == digest)
    return session.execute(as_context).first() is not None or session.execute(as_share).first() is not None
