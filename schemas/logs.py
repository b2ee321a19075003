"""What every fedfraud process logs the same way: JSON lines, and the request id that ties a bank's
request to the consortium's log lines about it.

A bank agent names each request it sends (``X-Request-ID``); the consortium takes the name when it
is well formed (or makes one), answers with it, and adds it to every log line of that request.
Lines carry ids, digests (shortened), sizes and counts as ``extra`` fields; never tokens, keys,
payload bytes, request bodies or transactions.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any, Final

__all__ = ["REQUEST_ID_HEADER", "JsonFormatter", "new_request_id", "well_formed_request_id"]

REQUEST_ID_HEADER: Final = "X-Request-ID"
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._-]{8,64}")
_STANDARD: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


def new_request_id() -> str:
    """A fresh request id (32 hex digits)."""
    return uuid.uuid4().hex


def well_formed_request_id(value: str | None) -> str | None:
    """``value`` if it can name a request in a log line (8 to 64 of ``A-Za-z0-9._-``), else None:
    anything else (a header used to inject log lines or to carry a secret) is not echoed."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
