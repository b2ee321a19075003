"""gunicorn settings for the consortium aggregator (production).

Run:  gunicorn -c ops/gunicorn.conf.py

Every setting can be overridden from the environment (values below are the defaults):
FEDFRAUD_BIND=127.0.0.1:8080, FEDFRAUD_WORKERS=2 (1 on SQLite), FEDFRAUD_THREADS=16, FEDFRAUD_TIMEOUT_S=120,
FEDFRAUD_MAX_REQUESTS=2000 (a worker is recycled after about that many requests, unless it is the only
one), FEDFRAUD_LOG_LEVEL=INFO. Threaded workers: a bank's long poll for a sum holds one thread (up to 30 s),
not a whole worker. The workers' metrics are added up at /metrics through PROMETHEUS_MULTIPROC_DIR.
The app itself reads FEDFRAUD_DATABASE_URL, FEDFRAUD_BLOB_DIR, ... (see consortium/config.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from fedfraud.gunicorn_logs import ACCESS_LOG_FORMAT, JsonAccessLogger

wsgi_app = "consortium.app:create_app()"

bind = os.environ.get("FEDFRAUD_BIND", "127.0.0.1:8080")
DEFAULT_WORKERS = 2
workers = int(os.environ.get("FEDFRAUD_WORKERS", str(DEFAULT_WORKERS)))
#: SQLite serves one process: the aggregator's lock on its rounds is a lock of the process (SQLite
#: has no row locks), and two workers both released the same round (the second one's sum then
#: found the payloads purged: a 500). One worker by default there; more asked for (by
#: FEDFRAUD_WORKERS or gunicorn's -w) are refused.
SQLITE_WORKERS_REFUSED = (
    "{asked}: the consortium's database is SQLite ({url}), which serves one worker "
    "process only; set FEDFRAUD_WORKERS=1, or FEDFRAUD_DATABASE_URL=postgresql://... for more workers"
)
worker_class = "gthread"
threads = int(os.environ.get("FEDFRAUD_THREADS", "16"))
# Summing a round of large CKKS payloads takes seconds, uploads can be tens of MiB.
timeout = int(os.environ.get("FEDFRAUD_TIMEOUT_S", "120"))
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then (bounded memory growth of the HE library), but never the only one:
# while a recycled worker drains its requests (a bank's long poll holds one up to 30 s), nobody
# accepts new ones, and every bank of a nightly run waited (a 100-tree run makes about 3,000
# requests; bench/nightly.py measured 47.0 s of training with the recycle, 27.7 s without). See on_starting.
max_requests = int(os.environ.get("FEDFRAUD_MAX_REQUESTS", "2000"))
max_requests_jitter = 200
limit_request_line = 4096
limit_request_fields = 50

loglevel = os.environ.get("FEDFRAUD_LOG_LEVEL", "INFO").lower()
# The app logs one JSON line per request itself (consortium/logs.py: route, the ids in the path,
# status, size, peer, time and the request id a bank's agent logs too); gunicorn's own access log
# would repeat it without the request id. Never bodies or headers (so never a token or signature).
accesslog = None
errorlog = "-"
logger_class = JsonAccessLogger
access_log_format = ACCESS_LOG_FORMAT

# Set here, in the master, before any worker imports prometheus_client: the workers' metrics are
# added up at /metrics (a fresh directory of its own unless set, emptied at start).
METRICS_DIR = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR",
                                          tempfile.mkdtemp(prefix="fedfraud-consortium-metrics-")))


def post_fork(server, worker) -> None:  # type: ignore[no-untyped-def]
    """Structured logs for the app's own loggers in every worker, before it loads the app (which
    logs too)."""
    from consortium.logs import configure_logging

    configure_logging(os.environ.get("FEDFRAUD_LOG_LEVEL", "INFO"))


def on_starting(server) -> None:  # type: ignore[no-untyped-def]
    """Migrate the database once, in the master, before any worker starts (and on SQLite, run
    one worker: see SQLITE_WORKERS_REFUSED).

    Workers would otherwise each see an empty database at their first start and race to
    create the same tables (one of them then fails to boot). The metric files start empty too:
    counts of an earlier run must not be added in.
    """
    METRICS_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    for entry in METRICS_DIR.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    from consortium.app import create_app
    from consortium.storage.database import Database
    from consortium.storage.migrate import upgrade

    app = create_app({"AUTO_MIGRATE": False})
    url = str(app.config["DATABASE_URL"])
    if url.startswith("sqlite") and server.num_workers > 1:
        if "FEDFRAUD_WORKERS" in os.environ:
            raise SystemExit(SQLITE_WORKERS_REFUSED.format(asked=f"FEDFRAUD_WORKERS={server.num_workers}", url=url))
        if server.num_workers != DEFAULT_WORKERS:  # gunicorn's own -w (or --workers)
            raise SystemExit(SQLITE_WORKERS_REFUSED.format(asked=f"{server.num_workers} workers", url=url))
        server.log.info("SQLite database: one worker (PostgreSQL for more; see ops/README.md)")
        server.num_workers = 1
    if server.num_workers == 1 and server.cfg.max_requests:
        server.log.info("one worker: not recycled after max_requests (it is the whole service)")
        server.cfg.set("max_requests", 0)
    engine = Database.engine_for(app)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def child_exit(server, worker) -> None:  # type: ignore[no-untyped-def]
    """A worker that exits stops counting in the per-worker gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
