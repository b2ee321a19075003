"""The scoring service's Flask application factory (``fedfraud bank serve``; gunicorn in production).

It runs beside the bank's agent on the bank's own node and reads what the agent keeps: the
verified models in the state directory and the transaction store (with the pooled consortium
terminal history). Transactions to score never leave the bank.

Under gunicorn with several workers (``ops/gunicorn-scoring.conf.py``), each worker keeps its own
model and recent transactions, kept in step with the store (:mod:`bank_node.recent`), and the
metrics of all workers are added up at ``/metrics`` through ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import os

import orjson
from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider
from flask_smorest import Api
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

from bank_node.agent.state import StateDir
from bank_node.online import ConsortiumTerminals, OnlineFeatures
from bank_node.scoring import DEFAULT_EXACT_REASONS_MAX
from bank_node.service.auth import create_tables
from bank_node.service.models import ModelHolder
from bank_node.store import TransactionStore
from bank_node.terminal_history import PooledHistory

__all__ = ["DEFAULTS", "ScoringNode", "create_app"]

log = logging.getLogger(__name__)

DEFAULTS: Mapping[str, Any] = {
    "MODEL_FAMILY": "xgboost",
    "DECISION_THRESHOLD": 0.5,
    "MAX_BATCH": 1000,
    "MAX_BODY_BYTES": 1 << 20,
    "TOP_REASONS": 3,
    "EXACT_REASONS_MAX": DEFAULT_EXACT_REASONS_MAX,
    "MODEL_RELOAD_S": 30.0,
    # Transactions are timestamped in the bank's local time; a day covers any zone confusion.
    "MAX_CLOCK_AHEAD_S": 86_400,
    # How late a transaction may come to be scored, before the newest the node holds: older ones
    # are history to ingest, and each would be featured by reading the store back to its day.
    "MAX_LATE_DAYS": 30,
}


@dataclass
class ScoringNode:
    """What the requests share: the store, the online features, the model holder, the metrics."""

    state: StateDir
    store: TransactionStore
    online: OnlineFeatures
    holder: ModelHolder
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.decisions = Counter("fedfraud_scores", "Transactions scored, by decision", ["decision"],
                                 registry=self.registry)
        # Per worker process ("liveall": one series per live worker, labelled by pid, when several run).
        self.model_version = Gauge("fedfraud_model_version", "Version of the model in use (0: none)",
                                   registry=self.registry, multiprocess_mode="liveall")
        self.model_load_failures = Gauge("fedfraud_model_load_failing",
                                         "1 while the newest promoted model could not be loaded", registry=self.registry,
                                         multiprocess_mode="liveall")

    def refresh(self) -> bool:
        """Take up a newly promoted model (or a new night's pooled history); the gauges say what serves."""
        changed = self.holder.refresh()
        serving = self.holder.serving
        if changed and serving is not None and serving.consortium is not None:
            self.learn_terminals(serving.consortium)
        version = serving.model.version if serving is not None else ""
        self.model_version.set(float(version) if version.isdigit() else 0.0)
        self.model_load_failures.set(1.0 if self.holder.last_error else 0.0)
        return changed

    def learn_terminals(self, consortium: ConsortiumTerminals) -> None:
        """Make the consortium tags of the terminals of the recent transactions held, off the
        request path: each would otherwise cost its first request a keyed hash."""
        made = consortium.learn(self.online.recent.terminal_ids())
        if made:
            log.info("made the consortium tags of %d terminals", made)

    @property
    def engine(self) -> Any:
        """The node's database (tokens live there too)."""
        return self.store.engine

    def count(self, alerts: int, scored: int) -> None:
        """Count decisions (for metrics)."""
        if alerts:
            self.decisions.labels(decision="alert").inc(alerts)
        if scored - alerts:
            self.decisions.labels(decision="pass").inc(scored - alerts)


class _FastJSON(DefaultJSONProvider):
    """Answers encoded by orjson (a scored batch's answer is 1,000 objects with their reasons:
    33 ms with the standard library's encoder, 3 ms with orjson); parsing stays the standard
    library's, whose error messages the service reports."""

    # Keys sorted and dates as Flask writes them (through its ``default``), as before.
    _OPTIONS: Final = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, default=self.default, option=self._OPTIONS).decode("utf-8")

    def response(self, *args: Any, **kwargs: Any) -> Response:
        # What ``flask.json.jsonify`` documents: one argument as is, several as a list, keywords as
        # an object (read here rather than through the provider's private helper).
        if args and kwargs:
            raise TypeError("a JSON answer takes either arguments or keyword arguments, not both")
        obj: Any = kwargs or (args[0] if len(args) == 1 else list(args)) if (args or kwargs) else None
        body = orjson.dumps(obj, default=self.default, option=self._OPTIONS | orjson.OPT_APPEND_NEWLINE)
        return Response(body, mimetype=self.mimetype)


def create_app(state_dir: str | Path, *, store_url: str | None = None,
               config: Mapping[str, Any] | None = None, watch: bool = False) -> Flask:
    """Build the scoring service of the node whose state directory is ``state_dir``.

    Parameters
    ----------
    state_dir
        The agent's state directory (models, HE secret, by default the store).
    store_url
        The node's store, when not the SQLite file of the state directory.
    config
        Overrides of :data:`DEFAULTS` (and Flask keys).
    watch
        Run as a long-lived server: look for a newly promoted model every ``MODEL_RELOAD_S``
        seconds, and checkpoint the store's write-ahead log, in background threads.
    """
    from bank_node.service.api import blp
    from consortium.errors import register_error_handlers

    app = Flask("fedfraud_scoring")
    app.json = _FastJSON(app)
    app.config.update(DEFAULTS)
    app.config.update({
        "API_TITLE": "fedfraud bank scoring service", "API_VERSION": "1.0.0", "OPENAPI_VERSION": "3.0.3",
        "OPENAPI_URL_PREFIX": "/", "OPENAPI_JSON_PATH": "openapi.json",
        "API_SPEC_OPTIONS": {"security": [{"bearerAuth": []}],
                             "components": {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}}},
    })
    app.config.update(dict(config or {}))
    # Werkzeug's own bound too, so that a chunked body (no length given) is not buffered whole: it
    # stops reading one byte past the limit (silently), and that byte makes the body check a 413.
    app.config["MAX_CONTENT_LENGTH"] = int(app.config["MAX_BODY_BYTES"]) + 1
    state = StateDir(state_dir)
    store = TransactionStore(store_url) if store_url else TransactionStore.in_state_dir(state_dir)
    if watch:
        store.checkpoint_in_background()
    create_tables(store.engine)
    holder = ModelHolder(state, family=str(app.config["MODEL_FAMILY"]), history=PooledHistory(store.engine),
                         exact_reasons_max=int(app.config["EXACT_REASONS_MAX"]))
    node = ScoringNode(state=state, store=store, online=OnlineFeatures(store), holder=holder)
    node.online.recent.load()  # before the first request, not during it; and before the model,
    node.refresh()  # which makes the tags of the terminals held
    app.extensions["fedfraud_scoring"] = node
    api = Api(app)
    api.register_blueprint(blp)
    register_error_handlers(app)
    # Request latency histogram per endpoint and status, at /metrics (scraped from inside the bank).
    options: dict[str, Any] = {"group_by": "endpoint",
                               "buckets": (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)}
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several gunicorn workers: add theirs up
        GunicornInternalPrometheusMetrics(app, **options)
    else:
        PrometheusMetrics(app, registry=node.registry, **options)
    if watch:
        _watch(node, float(app.config["MODEL_RELOAD_S"]))
    return app


def _watch(node: ScoringNode, every_s: float) -> threading.Thread:
    def loop() -> None:
        while True:
            threading.Event().wait(every_s)
            try:
                node.refresh()
            except Exception:  # the watcher must survive anything; the old model keeps serving
                log.exception("looking for a new model failed")

    thread = threading.Thread(target=loop, name="model-watch", daemon=True)
    thread.start()
    return thread
