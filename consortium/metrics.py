"""Prometheus metrics of the aggregator, at ``GET /metrics`` for an operator or monitoring token.

Counted as they happen (per process; under gunicorn with ``PROMETHEUS_MULTIPROC_DIR`` set the
workers' files are added up at each scrape):

- ``fedfraud_contributions_total{outcome}``: contributions accepted or refused;
- ``fedfraud_contribution_bytes_total``: bytes of the contributions accepted;
- ``fedfraud_round_seconds{outcome}``: a round's life, opening to release or failure;
- ``flask_http_request_duration_seconds{endpoint,...}``: request latency (prometheus-flask-exporter).

Read from the database at each scrape (so every worker and the scheduler agree):

- ``fedfraud_runs{state}``: runs by state;
- ``fedfraud_rounds_open``: rounds waiting for contributions;
- ``fedfraud_current_model_version{family}``: the version each family serves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from flask import Flask, Response, current_app, has_app_context
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_flask_exporter import PrometheusMetrics
from sqlalchemy import func, select

__all__ = ["ConsortiumMetrics", "init_metrics", "observe"]

_EXTENSION = "fedfraud_metrics"
ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0)


@dataclass
class ConsortiumMetrics:
    """One app's metrics (an app of its own registry: tests build many apps in one process)."""

    registry: CollectorRegistry
    contributions: Counter
    contribution_bytes: Counter
    round_seconds: Histogram

    def contribution(self, outcome: str, size: int = 0) -> None:
        self.contributions.labels(outcome=outcome).inc()
        if outcome == "accepted":
            self.contribution_bytes.inc(size)

    def round_closed(self, outcome: str, opened_at: datetime, closed_at: datetime) -> None:
        self.round_seconds.labels(outcome=outcome).observe(max(0.0, (closed_at - opened_at).total_seconds()))


def observe() -> ConsortiumMetrics | None:
    """The current app's metrics (None outside an app, e.g. a command that needs none)."""
    if not has_app_context():
        return None
    metrics: ConsortiumMetrics | None = current_app.extensions.get(_EXTENSION)
    return metrics


class _DatabaseCollector(Collector):
    """What the database says at scrape time: runs by state, open rounds, current models."""

    def __init__(self, app: Flask) -> None:
        self._app = app

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # registering must not query the database

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from consortium.secure_sum import RoundState
        from consortium.storage.database import Database
        from consortium.storage.models import CurrentModel, RoundRow, Run

        runs = GaugeMetricFamily("fedfraud_runs", "Training runs by state", labels=["state"])
        rounds = GaugeMetricFamily("fedfraud_rounds_open", "Rounds waiting for contributions")
        current = GaugeMetricFamily("fedfraud_current_model_version", "The model version each family serves",
                                    labels=["family"])
        with Database.engine_for(self._app).connect() as connection:
            for state, count in connection.execute(select(Run.state, func.count()).group_by(Run.state)):
                runs.add_metric([str(state)], float(count))
            rounds.add_metric([], float(connection.execute(
                select(func.count()).select_from(RoundRow).where(RoundRow.state == RoundState.OPEN.value)).scalar_one()))
            for family, version in connection.execute(select(CurrentModel.family, CurrentModel.version)):
                current.add_metric([str(family)], float(version))
        yield runs
        yield rounds
        yield current


def init_metrics(app: Flask) -> ConsortiumMetrics:
    """Create the app's metrics and its ``/metrics`` route."""
    from consortium.auth import requires
    from consortium.storage.models import Role

    registry = CollectorRegistry(auto_describe=True)
    metrics = ConsortiumMetrics(
        registry=registry,
        contributions=Counter("fedfraud_contributions", "Contributions received, by outcome", ["outcome"],
                              registry=registry),
        contribution_bytes=Counter("fedfraud_contribution_bytes", "Bytes of the contributions accepted",
                                   registry=registry),
        round_seconds=Histogram("fedfraud_round_seconds", "A round's life, from opening to release or failure",
                                ["outcome"], buckets=ROUND_BUCKETS, registry=registry),
    )
    app.extensions[_EXTENSION] = metrics
    # Request latency per endpoint; exposed by the route below, not the exporter's own.
    PrometheusMetrics(app, path=None, registry=registry, group_by="endpoint",
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
    database = _DatabaseCollector(app)
    registry.register(database)

    @requires(Role.OPERATOR, Role.MONITORING)
    def scrape() -> Response:
        exposed = registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # gunicorn workers: add their files up
            exposed = CollectorRegistry()
            MultiProcessCollector(exposed)
            exposed.register(database)
        return Response(generate_latest(exposed), mimetype=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "metrics", scrape, methods=["GET"])
    return metrics
