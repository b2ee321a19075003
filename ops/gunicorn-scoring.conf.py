"""gunicorn settings for a bank node's scoring service (production).

Run:  FEDFRAUD_STATE_DIR=/var/lib/fedfraud-bank/node gunicorn -c ops/gunicorn-scoring.conf.py

Every setting can be overridden from the environment (values below are the defaults):
FEDFRAUD_SCORING_BIND=127.0.0.1:8081, FEDFRAUD_SCORING_WORKERS=2, FEDFRAUD_SCORING_THREADS=1,
FEDFRAUD_SCORING_KEEPALIVE_S=0, FEDFRAUD_SCORING_WORKER_CLASS=fedfraud.gunicorn_workers.IdleLimitedSyncWorker
(gunicorn's sync worker with FEDFRAUD_IDLE_TIMEOUT_S=5; gthread with threads or keep-alive),
FEDFRAUD_LOG_LEVEL=INFO; the app reads FEDFRAUD_STATE_DIR, FEDFRAUD_BANK_STORE and
FEDFRAUD_DECISION_THRESHOLD (see bank_node/service/wsgi.py).

Scoring is CPU work: one worker process per core. Each worker holds the model and the recent
transactions in memory and keeps them in step with the store, so workers can be added freely.
Their metrics are added up at /metrics through PROMETHEUS_MULTIPROC_DIR (a fresh directory of
its own unless set, emptied at start).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from fedfraud.gunicorn_logs import ACCESS_LOG_FORMAT, JsonAccessLogger

wsgi_app = "bank_node.service.wsgi:app"

bind = os.environ.get("FEDFRAUD_SCORING_BIND", "127.0.0.1:8081")
workers = int(os.environ.get("FEDFRAUD_SCORING_WORKERS", "2"))
# One thread a worker: scoring is CPU work, and threads of one process only queue for its GIL.
threads = int(os.environ.get("FEDFRAUD_SCORING_THREADS", "1"))
timeout = 30
graceful_timeout = 15
# No keep-alive by default: a kept connection stays with the worker that accepted it, and a few
# busy connections then pile on one worker while the other idles (measured: 92% against 7% CPU).
# A new connection per request lets the kernel spread requests over the workers.
keepalive = int(os.environ.get("FEDFRAUD_SCORING_KEEPALIVE_S", "0"))
# One request at a time on a fresh connection is what the sync worker does, with no thread pool
# or selector in between; threads or kept connections need gthread. This one also drops a
# connection silent for FEDFRAUD_IDLE_TIMEOUT_S (5 s): a sync worker would otherwise wait on it
# until the timeout below killed it, and two idle connections would stop the service.
worker_class = os.environ.get("FEDFRAUD_SCORING_WORKER_CLASS",
                              "fedfraud.gunicorn_workers.IdleLimitedSyncWorker" if threads == 1 and keepalive == 0
                              else "gthread")
limit_request_line = 4096
limit_request_fields = 50

loglevel = os.environ.get("FEDFRAUD_LOG_LEVEL", "INFO").lower()
accesslog = "-"
errorlog = "-"
# One JSON object per request; never bodies or headers (no token, no transaction).
logger_class = JsonAccessLogger
access_log_format = ACCESS_LOG_FORMAT

# Set here, in the master, before any worker imports prometheus_client.
METRICS_DIR = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR",
                                         tempfile.mkdtemp(prefix="fedfraud-scoring-metrics-")))


def on_starting(server) -> None:  # type: ignore[no-untyped-def]
    """Start from empty metric files: counts of an earlier run must not be added in."""
    METRICS_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    for entry in METRICS_DIR.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def post_fork(server, worker) -> None:  # type: ignore[no-untyped-def]
    """Structured logs for the app's own loggers in every worker, before it loads the app (which
    logs the model it takes up, or why it could not)."""
    from consortium.logs import configure_logging
    from fedfraud.gunicorn_workers import quiet_idle_timeouts

    # The service's packages: the bank node's (model swaps, load failures, the store) and the
    # errors module it shares with the consortium service.
    configure_logging(os.environ.get("FEDFRAUD_LOG_LEVEL", "INFO"), ("consortium", "bank_node", "fedfraud"))
    quiet_idle_timeouts(worker.log.error_log)


def post_worker_init(worker) -> None:  # type: ignore[no-untyped-def]
    """What the app loaded (the model, the recent transactions) is put out of the garbage
    collector's sight: it lives as long as the worker, and full collections walking it paused
    the requests in flight."""
    import gc

    gc.collect()
    gc.freeze()


def child_exit(server, worker) -> None:  # type: ignore[no-untyped-def]
    """A worker that exits stops counting in the per-worker gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
