"""gunicorn's access log as one JSON object per request, for every fedfraud service.

Who, what, outcome, size, time; never bodies or headers (so never the Authorization token, a
signature or a transaction).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Final

from gunicorn.glogging import Logger

__all__ = ["ACCESS_LOG_FORMAT", "JsonAccessLogger"]

ACCESS_LOG_FORMAT: Final = (
    '{"type": "access", "remote": "%(h)s", "time": "%(t)s", "method": "%(m)s", "path": "%(U)s", '
    '"status": %(s)s, "bytes": "%(B)s", "duration_us": %(D)s}'
)

_ATOM: Final = re.compile(r"%\(([^)]*)\)")


class JsonAccessLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger with string atoms escaped for JSON, so that each access line stays one
    valid JSON object whatever the request path holds. gunicorn escapes double quotes itself;
    this adds backslashes and control characters.

    Only the atoms the format names are escaped: gunicorn offers one per request header and
    environ entry too, and escaping them all doubled the logger's time (27 µs a request, 14 µs
    now)."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for name in _named_atoms(self.cfg.access_log_format or ""):
            key = name if name in atoms else name.lower()  # header atoms are kept lower-cased
            value = atoms.get(key)
            if isinstance(value, str):
                atoms[key] = _json_escaped(value)
        return atoms


@lru_cache(maxsize=8)
def _named_atoms(access_log_format: str) -> tuple[str, ...]:
    """The atoms an access log format names (read once per format: a reload may change it)."""
    return tuple(dict.fromkeys(_ATOM.findall(access_log_format)))


def _json_escaped(text: str) -> str:
    return json.dumps(text)[1:-1].replace('\\"', '"')
