"""gunicorn's access log as one JSON object per request, for every fedfraud service.

Who, what, outcome, size, time; never bodies or headers (so never the Authorization token, a
signature or a transaction).
"""

from __future__ import annotations

import json
from typing import Any, Final

from gunicorn.glogging import Logger

__all__ = ["ACCESS_LOG_FORMAT", "JsonAccessLogger"]

ACCESS_LOG_FORMAT: Final = (
    '{"type": "access", "remote": "%(h)s", "time": "%(t)s", "method": "%(m)s", "path": "%(U)s", '
    '"status": %(s)s, "bytes": "%(B)s", "duration_us": %(D)s}'
)


class JsonAccessLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger with string atoms escaped for JSON, so that each access line stays one
    valid JSON object whatever the request path holds. gunicorn escapes double quotes itself;
    this adds backslashes and control characters."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        return {k: _json_escaped(v) if isinstance(v, str) else v for k, v in atoms.items()}


def _json_escaped(text: str) -> str:
    return json.dumps(text)[1:-1].replace('\\"', '"')
