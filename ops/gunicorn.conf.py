"""gunicorn settings for the consortium aggregator (production).

Run:  gunicorn -c ops/gunicorn.conf.py

Every setting can be overridden from the environment (values below are the defaults):
FEDFRAUD_BIND=127.0.0.1:8080, FEDFRAUD_WORKERS=2, FEDFRAUD_THREADS=16, FEDFRAUD_TIMEOUT_S=120,
FEDFRAUD_LOG_LEVEL=INFO. Threaded workers: a bank's long poll for a sum holds one thread (up to 30 s),
not a whole worker.
The app itself reads FEDFRAUD_DATABASE_URL, FEDFRAUD_BLOB_DIR, ... (see consortium/config.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

from gunicorn.glogging import Logger

wsgi_app = "consortium.app:create_app()"

bind = os.environ.get("FEDFRAUD_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("FEDFRAUD_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("FEDFRAUD_THREADS", "16"))
# Summing a round of large CKKS payloads takes seconds, uploads can be tens of MiB.
timeout = int(os.environ.get("FEDFRAUD_TIMEOUT_S", "120"))
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then (bounded memory growth of the HE library).
max_requests = 2000
max_requests_jitter = 200
limit_request_line = 4096
limit_request_fields = 50

loglevel = os.environ.get("FEDFRAUD_LOG_LEVEL", "INFO").lower()
accesslog = "-"
errorlog = "-"
# One JSON object per request: who, what, outcome, size, time. Never bodies or headers
# (so never the Authorization token or the signature).


class JsonAccessLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger with string atoms escaped for JSON, so that each access line stays one
    valid JSON object whatever the request path holds. gunicorn escapes double quotes itself;
    this adds backslashes and control characters."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        return {k: _json_escaped(v) if isinstance(v, str) else v for k, v in atoms.items()}


def _json_escaped(text: str) -> str:
    return json.dumps(text)[1:-1].replace('\\"', '"')


logger_class = JsonAccessLogger
access_log_format = (
    '{"type": "access", "remote": "%(h)s", "time": "%(t)s", "method": "%(m)s", "path": "%(U)s", '
    '"status": %(s)s, "bytes": "%(B)s", "duration_us": %(D)s}'
)


def post_worker_init(worker) -> None:  # type: ignore[no-untyped-def]
    """Structured logs for the app's own loggers in every worker."""
    from consortium.logs import configure_logging

    configure_logging(os.environ.get("FEDFRAUD_LOG_LEVEL", "INFO"))


def on_starting(server) -> None:  # type: ignore[no-untyped-def]
    """Migrate the database once, in the master, before any worker starts.

    Workers would otherwise each see an empty database at their first start and race to
    create the same tables (one of them then fails to boot).
    """
    from consortium.app import create_app
    from consortium.storage.database import Database
    from consortium.storage.migrate import upgrade

    engine = Database.engine_for(create_app({"AUTO_MIGRATE": False}))
    try:
        upgrade(engine)
    finally:
        engine.dispose()
