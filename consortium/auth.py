"""Bearer tokens: issued once, stored as SHA-256 only, checked by role on every request."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from flask import g, request
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from consortium.errors import Conflict, Forbidden, NotFound, Unauthorized
from consortium.extensions import now
from consortium.storage.database import db
from consortium.storage.models import Role, Token

__all__ = ["Principal", "current_principal", "hash_token", "issue_token", "require_bank", "requires", "revoke_token"]

F = TypeVar("F", bound=Callable[..., Any])
TOKEN_BYTES = 32


def hash_token(token: str) -> str:
    """Hex SHA-256 of a token: the only form in which tokens are stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_token(session: Session, role: Role | str, bank_id: str | None = None) -> str:
    """Create a token and add its hash to ``session`` (the caller commits).

    Parameters
    ----------
    session
        Database session.
    role
        ``operator``, ``bank`` or ``compliance``.
    bank_id
        The bank a ``bank`` token acts for (required for that role, refused for the others).

    Returns
    -------
    str
        The token itself: shown to its holder once, never stored.
    """
    role = Role(role)
    if (role is Role.BANK) != (bank_id is not None):
        raise ValueError("a bank token needs a bank id, and only a bank token may have one")
    from consortium.ledger import record

    token = secrets.token_urlsafe(TOKEN_BYTES)
    row = Token(token_sha256=hash_token(token), role=role.value, bank_id=bank_id)
    session.add(row)
    session.flush()
    record(session, "token.issued", bank_id=bank_id, details={"token_id": row.id, "role": role.value})
    return token


def revoke_token(session: Session, token_id: int) -> Token:
    """Revoke token ``token_id`` from now on, with its ``token.revoked`` ledger entry (the caller
    commits both together). Its holder's next request is refused, and a compliance session
    signed in with it ends.

    Raises
    ------
    NotFound
        No token has that id.
    Conflict
        It was revoked already (the first revocation stands, with its time).
    """
    from consortium.ledger import record

    row = session.get(Token, token_id)
    if row is None:
        raise NotFound(f"no token has id {token_id}")
    if row.revoked_at is not None:
        raise Conflict(f"token {token_id} was revoked already, at {row.revoked_at.isoformat(timespec='seconds')}Z")
    row.revoked_at = now()
    record(session, "token.revoked", bank_id=row.bank_id, details={"token_id": row.id, "role": row.role})
    return row


@dataclass(frozen=True)
class Principal:
    """Who is calling: a role, and for bank tokens the bank id."""

    role: Role
    bank_id: str | None


def _authenticate() -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthorized("missing Authorization header: send 'Authorization: Bearer <token>'")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    digest = hash_token(token.strip())
    # Four columns, no object: every request of every bank asks this.
    row = db.session.connection().execute(_TOKEN_LOOKUP, {"digest": digest}).first()
    # The lookup is by hash already; compare again in constant time for good measure.
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.token_sha256, digest):
        raise Unauthorized("unknown or revoked token")
    return Principal(role=Role(row.role), bank_id=row.bank_id)


_TOKEN_LOOKUP: Final = select(Token.token_sha256, Token.role, Token.bank_id, Token.revoked_at).where(
    Token.token_sha256 == bindparam("digest"))


def current_principal() -> Principal:
    """The authenticated caller of this request (authenticating on first use)."""
    if "principal" not in g:
        g.principal = _authenticate()
    return g.principal  # type: ignore[no-any-return]


def requires(*roles: Role) -> Callable[[F], F]:
    """Decorate a view: 401 without a valid token, 403 unless its role is one of ``roles``.

    With no roles, any valid token passes but a monitoring one (which scrapes metrics only).
    """
    allowed = roles or tuple(role for role in Role if role is not Role.MONITORING)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = current_principal()
            if principal.role not in allowed:
                names = " or ".join(role.value for role in allowed)
                raise Forbidden(f"this needs a {names} token; this token's role is {principal.role.value}")
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def require_bank(bank_id: str, *, what: str) -> Principal:
    """403 unless the caller's token is bank ``bank_id``'s."""
    principal = current_principal()
    if principal.role is not Role.BANK or principal.bank_id != bank_id:
        raise Forbidden(f"only bank {bank_id!r} may {what}")
    return principal
