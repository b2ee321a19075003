"""The background sweep that closes expired rounds (started by ``serve``, never by tests)."""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask

from consortium.rounds import sweep_expired

__all__ = ["start_sweeper", "sweep_once"]

logger = logging.getLogger("consortium.scheduler")


def sweep_once(app: Flask) -> None:
    """One sweep; a failure is logged and left to the next tick (it must not end the loop)."""
    try:
        sweep_expired(app)
    except Exception:  # a failed sweep is retried at the next tick; it must not kill the thread
        logger.exception("sweep failed")


def start_sweeper(app: Flask) -> BackgroundScheduler:
    """Start a daemon scheduler running :func:`sweep_expired` every ``SWEEP_INTERVAL_S`` seconds."""
    scheduler = BackgroundScheduler(daemon=True, timezone="UTC")
    scheduler.add_job(
        sweep_once,
        "interval",
        args=[app],
        seconds=int(app.config["SWEEP_INTERVAL_S"]),
        id="sweep-expired-rounds",
        max_instances=1,
        coalesce=True,
        replace_existing=True,
    )
    scheduler.start()
    logger.info("sweeper started", extra={"interval_s": app.config["SWEEP_INTERVAL_S"]})
    return scheduler
