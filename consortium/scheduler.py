"""The background jobs: the sweep of expired rounds and runs, and the nightly training schedule.

``serve`` starts only the sweep. The schedule runs in *one* dedicated process,
``fedfraud consortium scheduler`` (APScheduler's job stores cannot be shared between processes,
and threads started in a gunicorn master do not survive the fork). Even so, a second scheduler
by mistake opens no second run: every firing is claimed in the database (``consortium/schedule.py``).
"""

from __future__ import annotations

import logging
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from flask import Flask

from consortium.rounds import sweep_expired
from consortium.schedule import cron_trigger, ensure_schedules, fire_due
from consortium.storage.database import db

__all__ = ["build_scheduler", "fire_job", "reload_schedules", "start_sweeper", "sweep_once"]

logger = logging.getLogger("consortium.scheduler")


def sweep_once(app: Flask) -> None:
    """One sweep; a failure is logged and left to the next tick (it must not end the loop)."""
    try:
        sweep_expired(app)
    except Exception:  # a failed sweep is retried at the next tick; it must not kill the thread
        logger.exception("sweep failed")


def _add_sweep(scheduler: BaseScheduler, app: Flask) -> None:
    scheduler.add_job(
        sweep_once, "interval", args=[app], seconds=int(app.config["SWEEP_INTERVAL_S"]),
        id="sweep-expired", max_instances=1, coalesce=True, replace_existing=True,
    )


def start_sweeper(app: Flask) -> BackgroundScheduler:
    """Start a daemon scheduler running :func:`sweep_expired` every ``SWEEP_INTERVAL_S`` seconds."""
    scheduler = BackgroundScheduler(daemon=True, timezone="UTC")
    _add_sweep(scheduler, app)
    scheduler.start()
    logger.info("sweeper started", extra={"interval_s": app.config["SWEEP_INTERVAL_S"]})
    return scheduler


def fire_job(app: Flask, model: str) -> None:
    """The cron job of one family: open its run if its firing is due (logged, never raised)."""
    try:
        for outcome in fire_due(app, models=(model,)):
            logger.info("scheduled firing", extra={"model": outcome.model, "outcome": outcome.message})
    except Exception:  # the next firing must still happen
        logger.exception("scheduled firing failed", extra={"model": model})


def reload_schedules(app: Flask, scheduler: BaseScheduler) -> list[str]:
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
                fire_job, trigger, args=[app, model], id=job_id, replace_existing=True, coalesce=True,
                max_instances=1, misfire_grace_time=int(app.config["SCHEDULE_GRACE_S"]),
            )
            logger.info("schedule loaded", extra={"model": model, "cron": cron, "time_zone": zone})
        active.append(job_id)
    return active


def build_scheduler(app: Flask, scheduler: BaseScheduler | None = None) -> BaseScheduler:
    """The scheduler process's jobs: the sweep, one cron job per enabled schedule, and a reload
    of schedule changes every ``SCHEDULE_RELOAD_S`` seconds. Not started."""
    scheduler = scheduler or BlockingScheduler(timezone=ZoneInfo(app.config["TIME_ZONE"]))
    _add_sweep(scheduler, app)
    scheduler.add_job(
        reload_schedules, "interval", args=[app, scheduler], seconds=int(app.config["SCHEDULE_RELOAD_S"]),
        id="reload-schedules", max_instances=1, coalesce=True, replace_existing=True,
    )
    reload_schedules(app, scheduler)
    return scheduler


def run_scheduler(app: Flask) -> None:
    """Catch up a firing missed while no scheduler ran (once, within the grace period), then
    fire on schedule until stopped."""
    for outcome in fire_due(app):
        logger.info("start-up firing check", extra={"model": outcome.model, "outcome": outcome.message})
    scheduler = build_scheduler(app)
    logger.info("scheduler started", extra={"jobs": [job.id for job in scheduler.get_jobs()]})
    scheduler.start()
