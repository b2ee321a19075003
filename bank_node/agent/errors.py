"""What can go wrong between a bank agent and the consortium, as exceptions that say which.

The consortium answers every error with one JSON shape, ``{code, status, message, errors}``;
:func:`error_from_response` turns it into the subclass a caller can act on: a 409 is often
expected (a replay after a restart), a 404 means "not yet", 401/403 need an operator, a 422 is
a bug or a key mismatch, and only :class:`UnavailableError` (5xx, network) is worth retrying.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from bank_node.federated.rounds import RoundFailedError as _ProtocolRoundFailed

__all__ = [
    "AuthError",
    "CeremonyError",
    "ConflictError",
    "ConsortiumError",
    "NotFoundError",
    "RoundFailedError",
    "RoundTimeoutError",
    "UnavailableError",
    "ValidationError",
    "error_from_response",
]


class ConsortiumError(Exception):
    """The consortium refused a request, or could not be reached.

    Parameters
    ----------
    message
        The server's message (or ours, when there was no answer).
    status
        HTTP status, or None when no answer arrived.
    code
        The error document's ``code`` (the status again, by the contract) or None.
    errors
        Field name to messages (validation errors).
    document
        The whole JSON error document, for fields beyond the common shape (a failed round's
        ``state`` and ``reason``).
    """

    #: Whether repeating the same request later may succeed.
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        errors: Mapping[str, Any] | None = None,
        document: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.errors: dict[str, Any] = dict(errors or {})
        self.document: dict[str, Any] = dict(document or {})
        #: The ``X-Request-ID`` the request was sent with (the consortium's log lines carry it).
        self.request_id: str | None = None

    def __str__(self) -> str:
        prefix = f"consortium answered {self.status}: " if self.status is not None else ""
        return f"{prefix}{self.message}"


class ConflictError(ConsortiumError):
    """409: a replay, a closed or failed round, or something registered once only."""


class NotFoundError(ConsortiumError):
    """404: no such resource, or not yet (a key share before the ceremony posted it)."""


class AuthError(ConsortiumError):
    """401/403: the token is missing, unknown, or not allowed to do this."""


class ValidationError(ConsortiumError):
    """422: the server refused the body (wrong scheme, key, length, or a field)."""


class UnavailableError(ConsortiumError):
    """5xx or no answer at all (connection refused, timeout): try again later."""

    retryable = True


class RoundFailedError(ConsortiumError, _ProtocolRoundFailed):
    """A secure-sum round ended without a released sum (and its run with it)."""


class RoundTimeoutError(ConsortiumError):
    """The agent stopped waiting for a round's sum; the round may still be released later."""

    retryable = True


class CeremonyError(ConsortiumError):
    """The key ceremony cannot go on (no public context yet, a share that does not open, ...)."""


_BY_STATUS: dict[int, type[ConsortiumError]] = {
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
}


def error_from_response(status: int, body: bytes, *, fallback: str = "") -> ConsortiumError:
    """Build the exception for an error answer.

    Parameters
    ----------
    status
        The HTTP status (>= 400).
    body
        The answer's bytes; the contract's JSON error document, or anything else (a proxy's
        HTML page), in which case ``fallback`` or the status is the message.
    fallback
        Message to use when the body is not the JSON error document.

    Returns
    -------
    ConsortiumError
        The most specific subclass for ``status``.
    """
    message, code, errors = fallback or f"HTTP {status}", None, None
    document = _json_object(body)
    if document is not None:
        message = str(document.get("message") or document.get("reason") or message)
        raw_code = document.get("code")
        code = raw_code if isinstance(raw_code, int) else None
        raw_errors = document.get("errors")
        errors = raw_errors if isinstance(raw_errors, Mapping) else None
    cls = UnavailableError if status >= 500 else _BY_STATUS.get(status, ConsortiumError)
    return cls(message, status=status, code=code, errors=errors, document=document)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return document if isinstance(document, dict) else None
