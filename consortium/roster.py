"""Roster documents and their signatures, relayed for the banks.

The aggregator does not decide membership: each bank pins the rosters its members signed
(``crypto.roster.accept``). The aggregator stores what banks post, refuses what is plainly not a
roster approval (a malformed document, a signature that does not verify, a version that follows
no stored roster), and serves every candidate so that a bank can pin the one its rules accept.
Several candidates may exist for one version: a bank cannot block a change by posting first.
"""

from __future__ import annotations

import logging
from typing import Final

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from consortium.errors import BadRequest, Conflict, Unprocessable
from consortium.extensions import now, write_lock
from consortium.ledger import record
from consortium.storage.models import Bank, RosterDocument, RosterSignature
from crypto.roster import Roster, RosterError, roster_message
from crypto.signing import SignatureError, verify

__all__ = ["MAX_ROSTER_BYTES", "candidates", "roster_by_digest", "sign_roster"]

logger = logging.getLogger("consortium.roster")

MAX_ROSTER_BYTES: Final = 512 * 1024


def sign_roster(session: Session, bank: Bank, *, body: bytes, signature: str | None) -> RosterDocument:
    """Record ``bank``'s approval of a roster document (storing the document if new).

    Raises
    ------
    Conflict
        The bank has no registered keys.
    BadRequest
        Missing or wrong signature.
    Unprocessable
        Not a canonical roster document, or a version > 1 whose predecessor is not stored.
    """
    if not bank.signing_key:
        raise Conflict(f"bank {bank.bank_id!r} must register its keys before signing a roster")
    if len(body) > MAX_ROSTER_BYTES:
        raise Unprocessable(f"a roster document is at most {MAX_ROSTER_BYTES} bytes", {"body": ["too large"]})
    try:
        roster = Roster.from_bytes(body)
    except RosterError as exc:
        raise Unprocessable(f"not a roster: {exc}", {"body": [str(exc)]}) from None
    try:
        verify(bank.signing_key, roster_message(bank.bank_id, body), signature)
    except SignatureError as exc:
        raise BadRequest(f"roster signature refused: {exc}", {"X-Fedfraud-Signature": [str(exc)]}) from None
    with write_lock():
        stored = session.get(RosterDocument, roster.digest)
        if stored is None:
            if roster.version > 1:
                predecessor = session.get(RosterDocument, roster.previous)
                if predecessor is None or predecessor.version != roster.version - 1:
                    session.rollback()
                    message = f"roster version {roster.version} names a predecessor this consortium never relayed"
                    raise Unprocessable(message, {"body": [message]})
            stored = RosterDocument(
                digest=roster.digest, version=roster.version, document=body.decode("utf-8"),
                proposed_by=bank.bank_id, proposed_at=now(),
            )
            session.add(stored)
            session.flush()
        existing = session.execute(
            select(RosterSignature).where(
                RosterSignature.roster_digest == stored.digest, RosterSignature.bank_id == bank.bank_id
            )
        ).scalar_one_or_none()
        if existing is None:
            session.add(RosterSignature(roster_digest=stored.digest, bank_id=bank.bank_id, signature=signature or "",
                                        signed_at=now()))
            record(session, "roster.signed", bank_id=bank.bank_id,
                   details={"version": roster.version, "roster_digest": roster.digest, "signature": signature or "",
                            "members": list(roster.bank_ids)})
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            raise Conflict("the roster changed concurrently; post the signature again") from None
    logger.info("roster signed", extra={"bank_id": bank.bank_id, "version": roster.version,
                                         "digest": roster.digest[:16]})
    session.refresh(stored)
    return stored


def candidates(session: Session, *, since: int = 0) -> list[RosterDocument]:
    """Every relayed roster document newer than version ``since``, oldest first."""
    query = select(RosterDocument).where(RosterDocument.version > since)
    return list(session.execute(query.order_by(RosterDocument.version, RosterDocument.proposed_at)).scalars())


def roster_by_digest(session: Session, digest: str) -> RosterDocument | None:
    """The relayed roster with this digest, if any."""
    return session.get(RosterDocument, digest) if len(digest) == 64 else None
