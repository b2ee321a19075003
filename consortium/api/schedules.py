"""Schedules: when each model family trains by itself (read by anyone, changed by the operator)."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app
from flask_smorest import Blueprint

from consortium import schedule
from consortium.api.bodies import json_body
from consortium.api.schemas import ScheduleChangeSchema, ScheduleSchema
from consortium.auth import requires
from consortium.extensions import now
from consortium.storage.database import db
from consortium.storage.models import Role, Schedule

blp = Blueprint("schedules", __name__, url_prefix="/v1/schedules",
                description="Nightly training cadence per model family (cron, consortium time zone)")


def schedule_view(row: Schedule) -> dict[str, Any]:
    """A schedule as the API shows it, with its next firing."""
    zone = current_app.config["TIME_ZONE"]
    upcoming = schedule.next_fire(row.cron, zone, now()) if row.enabled else None
    return {
        "model": row.model, "cron": row.cron, "time_zone": zone, "enabled": row.enabled, "params": row.params,
        "train_days": row.train_days, "validation_days": row.validation_days,
        "label_delay_days": row.label_delay_days, "min_banks": row.min_banks, "run_timeout_s": row.run_timeout_s,
        "next_fire_at": None if upcoming is None else upcoming.astimezone(ZoneInfo("UTC")).replace(tzinfo=None),
        "next_fire_local": None if upcoming is None else upcoming.astimezone(ZoneInfo(zone)).isoformat(),
        "last_fired_local": None if row.last_fired_local is None else row.last_fired_local.isoformat(),
        "last_run_id": row.last_run_id, "last_outcome": row.last_outcome, "updated_at": row.updated_at,
    }


@blp.route("", methods=["GET"])
@requires()
@blp.response(200, ScheduleSchema(many=True))
def list_schedules() -> Any:
    """Every model family's schedule (xgboost nightly at 02:00 and logreg off, until changed)."""
    return [schedule_view(row) for row in schedule.ensure_schedules(db.session, current_app.config)]


@blp.route("/<string:model>", methods=["PUT"])
@requires(Role.OPERATOR)
@json_body
@blp.arguments(ScheduleChangeSchema)
@blp.response(200, ScheduleSchema)
@blp.alt_response(422, description="unknown family, invalid cron expression or params")
def change_schedule(data: dict[str, Any], model: str) -> Any:
    """Change a family's schedule; the scheduler process picks it up within SCHEDULE_RELOAD_S."""
    return schedule_view(schedule.set_schedule(db.session, current_app.config, model, dict(data)))
