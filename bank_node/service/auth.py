"""Tokens of the scoring service, stored hashed in the node's database, each with one role.

- ``scorer``: the risk team's systems; score transactions and read the model in use.
- ``admin``: the node's operators; also record confirmed outcomes (labels).
"""

from __future__ import annotations

import enum
import functools
import hmac
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, TypeVar

from flask import current_app, request
from sqlalchemy import Column, DateTime, Engine, MetaData, String, Table, delete, insert, select

from consortium.auth import hash_token
from consortium.storage.database import create_tables as create_all_tables
from consortium.errors import Forbidden, Unauthorized

__all__ = ["Role", "issue_token", "list_tokens", "requires", "revoke_token"]

F = TypeVar("F", bound=Callable[..., Any])

_metadata = MetaData()
service_tokens = Table(
    "scoring_tokens", _metadata,
    Column("token_sha256", String(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("created_at", DateTime, nullable=False),
)


class Role(enum.StrEnum):
    """What a token may do."""

    SCORER = "scorer"
    ADMIN = "admin"


def issue_token(engine: Engine, role: Role | str) -> str:
    """A new random token of ``role``; only its SHA-256 is stored."""
    role = Role(role)
    create_all_tables(_metadata, engine)
    token = secrets.token_urlsafe(32)
    with engine.begin() as connection:
        connection.execute(insert(service_tokens).values(token_sha256=hash_token(token), role=role.value,
                                                         created_at=datetime.now().replace(microsecond=0)))
    return token


def list_tokens(engine: Engine) -> list[dict[str, Any]]:
    """The tokens in force: an id (the first 12 hex digits of the stored SHA-256, which tells
    nothing of the token), the role, when issued."""
    create_all_tables(_metadata, engine)
    with engine.connect() as connection:
        rows = connection.execute(select(service_tokens).order_by(service_tokens.c.created_at)).all()
    return [{"id": row.token_sha256[:12], "role": row.role, "created_at": row.created_at} for row in rows]


def revoke_token(engine: Engine, token_id: str) -> str:
    """Revoke the token whose id (see :func:`list_tokens`) is ``token_id``; its role.

    Every service process stops taking it within :data:`ROLE_CACHE_S` seconds.

    Raises
    ------
    ValueError
        No token, or more than one, has that id.
    """
    token_id = token_id.strip().lower()
    if len(token_id) < 8 or any(c not in "0123456789abcdef" for c in token_id):
        raise ValueError(f"a token id is at least 8 hex digits (from `fedfraud bank tokens`), not {token_id!r}")
    with engine.begin() as connection:
        found = connection.execute(select(service_tokens.c.token_sha256, service_tokens.c.role)
                                   .where(service_tokens.c.token_sha256.startswith(token_id))).all()
        if len(found) != 1:
            raise ValueError(f"{len(found)} tokens have the id {token_id}; give the one `fedfraud bank tokens` shows")
        connection.execute(delete(service_tokens).where(service_tokens.c.token_sha256 == found[0][0]))
    _known.pop(found[0][0], None)
    return str(found[0][1])


#: Seconds a known token's role is taken from memory before the database is asked again.
ROLE_CACHE_S: Final = 10.0
_known: dict[str, tuple[Role, float]] = {}


def _role_of(engine: Engine, token: str) -> Role | None:
    """The token's role; a known token is looked up in the database at most every
    :data:`ROLE_CACHE_S` seconds (a query per request cost more than scoring)."""
    digest = hash_token(token)
    cached = _known.get(digest)
    if cached is not None and time.monotonic() < cached[1]:
        return cached[0]
    with engine.connect() as connection:
        row = connection.execute(select(service_tokens.c.token_sha256, service_tokens.c.role)
                                 .where(service_tokens.c.token_sha256 == digest)).first()
    if row is None or not hmac.compare_digest(row[0], digest):
        _known.pop(digest, None)
        return None
    role = Role(row[1])
    if len(_known) > 10_000:  # tokens are few; never let the cache grow without bound
        _known.clear()
    _known[digest] = (role, time.monotonic() + ROLE_CACHE_S)
    return role


def requires(*roles: Role) -> Callable[[F], F]:
    """401 without a known bearer token, 403 for a token of another role."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("send a bearer token (Authorization: Bearer ...)")
            role = _role_of(current_app.extensions["fedfraud_scoring"].engine, token.strip())
            if role is None:
                raise Unauthorized("unknown token")
            if role not in roles:
                raise Forbidden(f"a {role.value} token may not do this; it takes {' or '.join(r.value for r in roles)}")
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def create_tables(engine: Engine) -> None:
    """Create the tokens table if it is missing."""
    create_all_tables(_metadata, engine)
