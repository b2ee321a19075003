"""Request bodies: content-type checks (415), readable JSON errors (400), binary body docs."""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from flask import request

from consortium.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

__all__ = ["BINARY", "BINARY_REQUEST", "ROSTER_PARAMETER", "SIGNATURE_PARAMETER", "binary_body", "binary_response", "json_body", "json_bytes", "parse_json", "parse_json_body"]

F = TypeVar("F", bound=Callable[..., Any])

BINARY = "application/octet-stream"
MAX_JSON_BYTES = 256 * 1024
"""JSON bodies are small (enrolments, run requests): a larger one is refused before parsing."""
_BINARY_SCHEMA = {"type": "string", "format": "binary"}
BINARY_REQUEST = {"required": True, "content": {BINARY: {"schema": _BINARY_SCHEMA}}}
SIGNATURE_PARAMETER = {
    "in": "header",
    "name": "X-Fedfraud-Signature",
    "required": True,
    "description": "base64 Ed25519 signature over the canonical message (see docs/consortium-api.md)",
    "schema": {"type": "string"},
}

ROSTER_PARAMETER = {
    "in": "header",
    "name": "X-Fedfraud-Roster",
    "required": True,
    "description": "SHA-256 hex digest of the roster (as relayed by GET /v1/roster) the key is made for",
    "schema": {"type": "string"},
}


def binary_response(description: str) -> dict[str, Any]:
    """OpenAPI response object of raw bytes."""
    return {"description": description, "content": {BINARY: {"schema": _BINARY_SCHEMA}}}


def parse_json_body(limit: int = MAX_JSON_BYTES) -> Any:
    """The request's JSON document: 415 unless the body is JSON, 413 over ``limit`` bytes (before
    parsing), 400 naming the problem if it does not parse."""
    return parse_json(json_bytes(limit))


def json_bytes(limit: int = MAX_JSON_BYTES) -> bytes:
    """The request's JSON body, unparsed: 415 unless it is JSON, 413 over ``limit`` bytes."""
    if not request.is_json:
        raise UnsupportedMediaType(
            f"this endpoint takes application/json, not {request.mimetype or 'a body without content type'}"
        )
    if (request.content_length or 0) > limit:
        raise PayloadTooLarge(f"a JSON body is at most {limit} bytes; got {request.content_length}")
    raw = request.get_data(cache=True)
    if len(raw) > limit:
        raise PayloadTooLarge(f"a JSON body is at most {limit} bytes; got {len(raw)}")
    return raw


#: A \\u escape of a UTF-16 surrogate: the standard library reads a lone one into a string that
#: cannot be written as UTF-8 (to the database, into a ledger entry) later.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_json(raw: bytes) -> Any:
    """A JSON document, 400 naming the problem if it does not parse or holds a lone surrogate."""
    document = _parsed(raw)
    if _SURROGATE_ESCAPE.search(raw) is not None:  # rare: only then is the document written out to check
        try:
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        except RecursionError:
            raise BadRequest("malformed JSON body: nested too deeply") from None
        except UnicodeEncodeError:
            raise BadRequest("malformed JSON body: a \\u escape of half a UTF-16 surrogate pair "
                             "(\\ud800-\\udfff) stands alone") from None
    return document


def _parsed(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise BadRequest("malformed JSON body: nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise BadRequest(f"malformed JSON body: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError:  # the only other refusal of the parser: an integer of too many digits
        raise BadRequest(f"malformed JSON body: a number has more than {sys.get_int_max_str_digits()} "
                         "digits") from None


def json_body(view: F) -> F:
    """:func:`parse_json_body` before the view (put it above flask-smorest's ``@blp.arguments``)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        parse_json_body()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def binary_body(view: F) -> F:
    """415 unless the body is ``application/octet-stream``."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if request.mimetype != BINARY:
            raise UnsupportedMediaType(
                f"this endpoint takes {BINARY} (raw bytes), not {request.mimetype or 'a body without content type'}"
            )
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def read_binary() -> bytes:
    """The raw request body (413 if it exceeds MAX_CONTENT_LENGTH)."""
    return request.get_data(cache=False)
