"""Structured (JSON lines) logging for the aggregator, with the request id of each line's request.

Log records carry ids, digests (shortened), sizes and counts as ``extra`` fields; never tokens,
signatures' keys, payload bytes or request bodies (:mod:`schemas.logs`).
"""

from __future__ import annotations

import logging
import sys
import time

from flask import Flask, Response, g, has_request_context, request

from schemas.logs import REQUEST_ID_HEADER, JsonFormatter, new_request_id, well_formed_request_id

__all__ = ["JsonFormatter", "RequestIdFilter", "configure_logging", "init_request_logging"]


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to a record logged while a request is served."""

    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context() and not hasattr(record, "request_id"):
            request_id = g.get("request_id")
            if request_id is not None:
                record.request_id = request_id
        return True


def configure_logging(level: str = "INFO", names: tuple[str, ...] = ("consortium",)) -> None:
    """Send the loggers ``names`` (and theirs below) to stderr as JSON lines (idempotent)."""
    for name in names:
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        if not any(getattr(handler, "_fedfraud", False) for handler in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(JsonFormatter())
            handler.addFilter(RequestIdFilter())
            handler._fedfraud = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
            logger.propagate = False


def init_request_logging(app: Flask) -> None:
    """Name every request (the caller's well-formed ``X-Request-ID``, or a new one), answer with
    the name, and log one access line per request: method, route template, the ids in its path,
    status, size, peer and duration (under gunicorn this replaces its access log). Bodies, queries
    and headers are never logged."""
    access = logging.getLogger("consortium.access")

    @app.before_request
    def name_the_request() -> None:
        g.request_id = well_formed_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
        g.request_started = time.perf_counter()

    @app.after_request
    def answer_with_the_name(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id is None:  # a response made before the request was named
            return response
        response.headers[REQUEST_ID_HEADER] = request_id
        ids = {k: str(v)[:120] for k, v in (request.view_args or {}).items() if k in _PATH_IDS}
        access.info("request", extra={
            "method": request.method, "route": request.url_rule.rule if request.url_rule else "(no route)",
            "status": response.status_code, "bytes": response.content_length, "remote": request.remote_addr,
            "duration_ms": round((time.perf_counter() - g.get("request_started", time.perf_counter())) * 1e3, 2),
            **ids})
        return response


#: Path parameters that name things (never secrets), logged with each request.
_PATH_IDS = frozenset({"run_id", "round_key", "bank_id", "version", "model", "index"})
