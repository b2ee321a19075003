"""The one JSON error shape, ``{code, status, message, errors}``, for every error the service returns.

Service code raises :class:`ConsortiumError` subclasses (transport-free: a status number and a
message); werkzeug's own errors (404 unknown URL, 405, 413, ...) and flask-smorest's validation
errors arrive as :class:`~werkzeug.exceptions.HTTPException`; anything else is a JSON 500 whose
body says nothing about the cause (the log has the traceback).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

__all__ = [
    "BadRequest",
    "Conflict",
    "ConsortiumError",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "UnsupportedMediaType",
    "error_response",
    "register_error_handlers",
]

logger = logging.getLogger("consortium.errors")

# webargs nests validation messages under the request location; the contract wants field names.
_LOCATIONS = frozenset({"json", "query", "path", "headers", "form", "files", "cookies", "view_args"})


class ConsortiumError(Exception):
    """A request the service refuses.

    Parameters
    ----------
    message
        One sentence naming the problem.
    errors
        Field name to messages (validation problems).
    **extra
        Further members of the JSON body (e.g. a failed round's ``state``).
    """

    status: int = 400

    def __init__(self, message: str, errors: Mapping[str, Sequence[str]] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.errors = {name: list(messages) for name, messages in (errors or {}).items()}
        self.extra = extra


class BadRequest(ConsortiumError):
    """400: the request cannot be understood (malformed JSON, bad signature)."""

    status = 400


class Unauthorized(ConsortiumError):
    """401: no token, or an unknown one."""

    status = 401


class Forbidden(ConsortiumError):
    """403: the token's role or bank may not do this."""

    status = 403


class NotFound(ConsortiumError):
    """404: no such bank, run, round, model or key material."""

    status = 404


class Conflict(ConsortiumError):
    """409: the state forbids it (replay, closed round, already registered)."""

    status = 409


class PayloadTooLarge(ConsortiumError):
    """413: the body is larger than the endpoint takes."""

    status = 413


class UnsupportedMediaType(ConsortiumError):
    """415: the body's content type is not the one the endpoint takes."""

    status = 415


class Unprocessable(ConsortiumError):
    """422: well-formed but invalid (validation errors, a payload of another key)."""

    status = 422


class Unavailable(ConsortiumError):
    """503: the service cannot change state now (its ledger no longer holds)."""

    status = 503


def error_response(
    status: int,
    message: str,
    errors: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Build the JSON error response."""
    body: dict[str, Any] = dict(extra or {})
    body.update(
        {
            "code": status,
            "status": HTTPStatus(status).phrase,
            "message": message,
            "errors": dict(errors or {}),
        }
    )
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _flatten_validation(messages: Any) -> dict[str, Any]:
    if not isinstance(messages, Mapping):
        return {"_request": messages if isinstance(messages, list) else [str(messages)]}
    if messages and set(messages) <= _LOCATIONS:
        merged: dict[str, Any] = {}
        for location, fields in messages.items():
            if isinstance(fields, Mapping):
                merged.update(fields)
            else:
                merged[location] = fields
        return merged
    return dict(messages)


def _handle_consortium_error(exc: ConsortiumError) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="fedfraud"'} if exc.status == 401 else None
    return error_response(exc.status, exc.message, exc.errors, exc.extra, headers)


def _handle_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    data = getattr(exc, "data", None) or {}
    errors: dict[str, Any] = {}
    if "errors" in data:
        errors = _flatten_validation(data["errors"])
    elif "messages" in data:
        errors = _flatten_validation(data["messages"])
    message = data.get("message")
    if not message:
        if status == 422 and errors:
            message = "the request failed validation: " + ", ".join(sorted(errors)) + " invalid"
        else:
            message = exc.description or HTTPStatus(status).description
    headers: dict[str, str] = {}
    if status == 405:
        allow = dict(exc.get_headers()).get("Allow")
        if allow:
            headers["Allow"] = allow
    headers.update(data.get("headers") or {})
    if status >= 500:
        logger.error("http error %s: %s", status, message)
    return error_response(status, message, errors, None, headers)


def _handle_unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error: %s", type(exc).__name__)
    return error_response(500, "internal server error; the incident was logged")


def register_error_handlers(app: Flask) -> None:
    """Make every error a JSON body of the one shape (call after flask-smorest's ``init_app``)."""
    app.register_error_handler(ConsortiumError, _handle_consortium_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)
