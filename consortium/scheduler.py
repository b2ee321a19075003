"""The background jobs: the sweep of expired rounds and runs, and the nightly training schedule.

``serve`` starts only the sweep. The schedule runs in *one* dedicated process,
``fedfraud consortium scheduler`` (APScheduler's job stores cannot be shared between processes,
and threads started in a gunicorn master do not survive the fork). Even so, a second scheduler
by mistake opens no second run: every firing is claimed in the database (``consortium/schedule.py``).

With ``--metrics-port`` the scheduler process serves its own Prometheus metrics (it has no HTTP
service of its own; the runs it opens show in the consortium service's ``/metrics`` too):

- ``fedfraud_scheduler_firings_total{model,outcome}``: firing checks by outcome (opened, missed,
  overlap, refused, elsewhere, already_fired, none_due);
- ``fedfraud_scheduler_firing_errors_total{model}``: firings that raised (logged, retried next time);
- ``fedfraud_scheduler_last_opened_timestamp_seconds{model}``: when this process last opened a run;
- ``fedfraud_scheduler_next_firing_timestamp_seconds{model}``: the next firing, read at scrape time;
- ``fedfraud_scheduler_sweeps_total{outcome}``: sweeps of expired rounds and runs, ok or failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from flask import Flask
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily

from consortium.rounds import sweep_expired
from consortium.schedule import cron_trigger, ensure_schedules, fire_due
from consortium.storage.database import db

__all__ = ["SchedulerMetrics", "build_scheduler", "fire_job", "reload_schedules", "start_sweeper", "sweep_once"]

logger = logging.getLogger("consortium.scheduler")


class SchedulerMetrics:
    """The scheduler process's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.firings = Counter("fedfraud_scheduler_firings", "Firing checks, by family and outcome",
                               ["model", "outcome"], registry=self.registry)
        self.errors = Counter("fedfraud_scheduler_firing_errors", "Firings that raised, by family", ["model"],
                              registry=self.registry)
        self.last_opened = Gauge("fedfraud_scheduler_last_opened_timestamp_seconds",
                                 "When this process last opened a family's run", ["model"], registry=self.registry)
        self.sweeps = Counter("fedfraud_scheduler_sweeps", "Sweeps of expired rounds and runs, by outcome", ["outcome"],
                              registry=self.registry)
        self._scheduler: BaseScheduler | None = None
        self.registry.register(_NextFirings(self))

    def watch(self, scheduler: BaseScheduler) -> None:
        """Report the next firing of ``scheduler``'s training jobs at each scrape."""
        self._scheduler = scheduler

    def fired(self, model: str, kind: str) -> None:
        self.firings.labels(model=model, outcome=kind).inc()
        if kind == "opened":
            self.last_opened.labels(model=model).set(time.time())

    def serve(self, port: int, host: str = "127.0.0.1") -> Any:
        """Serve ``/metrics`` on ``host:port`` from a background thread."""
        return start_http_server(port, addr=host, registry=self.registry)


class _NextFirings:
    def __init__(self, metrics: SchedulerMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("fedfraud_scheduler_next_firing_timestamp_seconds",
                                   "The next firing of each enabled family's schedule", labels=["model"])
        scheduler = self._metrics._scheduler
        for job in scheduler.get_jobs() if scheduler is not None else []:
            if job.id.startswith("train-") and getattr(job, "next_run_time", None) is not None:
                family.add_metric([job.id.removeprefix("train-")], job.next_run_time.timestamp())
        yield family


def sweep_once(app: Flask, metrics: SchedulerMetrics | None = None) -> None:
    """One sweep; a failure is logged and left to the next tick (it must not end the loop)."""
    try:
        sweep_expired(app)
    except Exception:  # a failed sweep is retried at the next tick; it must not kill the thread
        logger.exception("sweep failed")
        if metrics is not None:
            metrics.sweeps.labels(outcome="failed").inc()
    else:
        if metrics is not None:
            metrics.sweeps.labels(outcome="ok").inc()


def _add_sweep(scheduler: BaseScheduler, app: Flask, metrics: SchedulerMetrics | None = None) -> None:
    scheduler.add_job(
        sweep_once, "interval", args=[app, metrics], seconds=int(app.config["SWEEP_INTERVAL_S"]),
        id="sweep-expired", max_instances=1, coalesce=True, replace_existing=True,
    )


def start_sweeper(app: Flask) -> BackgroundScheduler:
    """Start a daemon scheduler running :func:`sweep_expired` every ``SWEEP_INTERVAL_S`` seconds."""
    scheduler = BackgroundScheduler(daemon=True, timezone="UTC")
    _add_sweep(scheduler, app)
    scheduler.start()
    logger.info("sweeper started", extra={"interval_s": app.config["SWEEP_INTERVAL_S"]})
    return scheduler


def fire_job(app: Flask, model: str, metrics: SchedulerMetrics | None = None) -> None:
    """The cron job of one family: open its run if its firing is due (logged, never raised)."""
    try:
        for outcome in fire_due(app, models=(model,)):
            logger.info("scheduled firing", extra={"model": outcome.model, "outcome": outcome.message})
            if metrics is not None:
                metrics.fired(outcome.model, outcome.kind)
    except Exception:  # the next firing must still happen
        logger.exception("scheduled firing failed", extra={"model": model})
        if metrics is not None:
            metrics.errors.labels(model=model).inc()


def reload_schedules(app: Flask, scheduler: BaseScheduler, metrics: SchedulerMetrics | None = None) -> list[str]:
    """Make the scheduler's cron jobs those of the database's enabled schedules; return job ids."""
    zone = app.config["TIME_ZONE"]
    with app.app_context():
        schedules = [(s.model, s.cron, s.enabled) for s in ensure_schedules(db.session, app.config)]
    active = []
    for model, cron, enabled in schedules:
        job_id = f"train-{model}"
        job = scheduler.get_job(job_id)
        if not enabled:
            if job is not None:
                job.remove()
                logger.info("schedule disabled", extra={"model": model})
            continue
        trigger = cron_trigger(cron, zone)
        if job is None or str(job.trigger) != str(trigger):
            scheduler.add_job(
                fire_job, trigger, args=[app, model, metrics], id=job_id, replace_existing=True, coalesce=True,
                max_instances=1, misfire_grace_time=int(app.config["SCHEDULE_GRACE_S"]),
            )
            logger.info("schedule loaded", extra={"model": model, "cron": cron, "time_zone": zone})
        active.append(job_id)
    return active


def build_scheduler(app: Flask, scheduler: BaseScheduler | None = None,
                    metrics: SchedulerMetrics | None = None) -> BaseScheduler:
    """The scheduler process's jobs: the sweep, one cron job per enabled schedule, and a reload
    of schedule changes every ``SCHEDULE_RELOAD_S`` seconds. Not started."""
    scheduler = scheduler or BlockingScheduler(timezone=ZoneInfo(app.config["TIME_ZONE"]))
    _add_sweep(scheduler, app, metrics)
    scheduler.add_job(
        reload_schedules, "interval", args=[app, scheduler, metrics], seconds=int(app.config["SCHEDULE_RELOAD_S"]),
        id="reload-schedules", max_instances=1, coalesce=True, replace_existing=True,
    )
    reload_schedules(app, scheduler, metrics)
    if metrics is not None:
        metrics.watch(scheduler)
    return scheduler


def run_scheduler(app: Flask, metrics: SchedulerMetrics | None = None) -> None:
    """Catch up a firing missed while no scheduler ran (once, within the grace period), then
    fire on schedule until stopped."""
    for outcome in fire_due(app):
        logger.info("start-up firing check", extra={"model": outcome.model, "outcome": outcome.message})
        if metrics is not None:
            metrics.fired(outcome.model, outcome.kind)
    scheduler = build_scheduler(app, metrics=metrics)
    logger.info("scheduler started", extra={"jobs": [job.id for job in scheduler.get_jobs()]})
    scheduler.start()
