"""Nightly training: each model family's cadence, and the one firing that opens its run.

A schedule is a cron expression read in the consortium's ``TIME_ZONE`` (APScheduler's
``CronTrigger``), kept in the database so that a change made through the API or the CLI survives
restarts. :func:`fire_due` is the only thing that opens a scheduled run, and it is safe to call from
anywhere at any time:

- it opens the run of the *latest* firing due at ``now`` (a firing missed while nothing was
  running is caught up once, if it is less than ``SCHEDULE_GRACE_S`` old; older ones are skipped);
- it claims the firing with a compare-and-set on the firing's local wall-clock time, so two
  scheduler processes, or a retry, or the repeated 02:30 of an autumn daylight-saving night,
  produce one run;
- it opens nothing while a run of the same family is still open (runs never overlap).

APScheduler only decides *when* to call it (``consortium/scheduler.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from flask import Flask
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from consortium.errors import ConsortiumError, Unprocessable
from consortium.extensions import now, write_lock
from consortium.ledger import record
from consortium.runs import open_run
from consortium.storage.database import db
from consortium.storage.models import Run, RunState, Schedule
from schemas.errors import FedfraudInputError
from schemas.run import MODEL_FAMILIES, RunWindow, load_run_params

__all__ = [
    "DEFAULT_CRON",
    "FireOutcome",
    "cron_trigger",
    "ensure_schedules",
    "fire_due",
    "latest_due",
    "next_fire",
    "set_schedule",
]

logger = logging.getLogger("consortium.schedule")

DEFAULT_CRON: Final = "0 2 * * *"
"""Nightly at 02:00 local time."""
_LOOKBACK: Final = timedelta(days=8)


_WEEKDAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _cron_weekdays(field: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday) as APScheduler weekday names.

    APScheduler 3 numbers weekdays from Monday = 0, so ``from_crontab("... 1-5")`` would run
    Tuesday to Saturday; names mean the same to both.
    """
    if field == "*":
        return field
    days: set[int] = set()
    for part in field.lower().split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"weekday step must be positive: {part!r}")
        if base == "*":
            low, high = 0, 6
        elif "-" in base:
            low_text, high_text = base.split("-", 1)
            low, high = _weekday_number(low_text), _weekday_number(high_text)
            if high == 0 and low > 0:
                high = 7  # "5-7" or "fri-sun": through Sunday
        else:
            low = _weekday_number(base)
            high = 6 if step_text else low
        if low > high:
            raise ValueError(f"weekday range {base!r} runs backwards")
        days.update(day % 7 for day in range(low, high + 1, step))
    return ",".join(_WEEKDAYS[day] for day in sorted(days))


def _weekday_number(text: str) -> int:
    if text in _WEEKDAYS:
        return _WEEKDAYS.index(text)
    if text.isdigit() and 0 <= int(text) <= 7:
        return int(text) % 7 if int(text) != 7 else 7
    raise ValueError(f"{text!r} is not a weekday (0-7 or sun-sat)")


class SteadyCronTrigger(CronTrigger):
    """APScheduler's cron trigger, made to move forward across an autumn clock change.

    On the night a wall-clock time happens twice, APScheduler 3.11's trigger answers the second
    occurrence again and again when asked for the next firing after it (which would fire a job
    in a loop for an hour); this one then asks again from an hour later.
    """

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        fire = super().get_next_fire_time(previous_fire_time, now)
        after = now
        while fire is not None and previous_fire_time is not None and fire <= previous_fire_time:
            after = max(after, previous_fire_time) + timedelta(hours=1)
            fire = super().get_next_fire_time(None, after)
        return fire


def cron_trigger(cron: str, time_zone: str) -> CronTrigger:
    """APScheduler's trigger for a standard 5-field crontab line in ``time_zone`` (weekdays as
    cron counts them: 0 or 7 is Sunday).

    Raises
    ------
    ValueError
        Not a valid crontab expression (the message says why).
    """
    fields_ = cron.split()
    if len(fields_) != 5:
        raise ValueError(f"a cron expression has 5 fields (minute hour day month weekday), got {len(fields_)}")
    minute, hour, day, month, weekday = fields_
    try:
        return SteadyCronTrigger(minute=minute, hour=hour, day=day, month=month,
                                 day_of_week=_cron_weekdays(weekday), timezone=ZoneInfo(time_zone))
    except ValueError as exc:
        raise ValueError(f"invalid cron expression {cron!r}: {exc}") from None


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def latest_due(cron: str, time_zone: str, at: datetime) -> datetime | None:
    """The last firing of ``cron`` at or before ``at`` (naive UTC) within eight days, aware."""
    trigger = cron_trigger(cron, time_zone)
    moment = _utc(at)
    fire = trigger.get_next_fire_time(None, moment - _LOOKBACK)
    latest = None
    while fire is not None and fire <= moment:
        latest = fire
        fire = trigger.get_next_fire_time(fire, fire + timedelta(seconds=1))
    return latest


def next_fire(cron: str, time_zone: str, at: datetime) -> datetime | None:
    """The next firing of ``cron`` after ``at`` (naive UTC), aware."""
    return cron_trigger(cron, time_zone).get_next_fire_time(None, _utc(at) + timedelta(microseconds=1))


@dataclass(frozen=True)
class FireOutcome:
    """What one schedule did at one call of :func:`fire_due`."""

    model: str
    fired_local: datetime | None
    run_id: str | None
    message: str
    kind: str
    """The outcome in one word, for metrics: opened, none_due, already_fired, elsewhere (claimed by
    another scheduler), missed (past the grace period: not run late), overlap (a run of the family
    still open) or refused (the run could not be opened)."""


DEFAULT_SCHEDULE_PARAMS: Final = {"consortium_features": True}


def ensure_schedules(session: Session, config: Any) -> list[Schedule]:
    """Every family's schedule, creating the defaults (xgboost nightly at 02:00, logreg off; both
    with consortium terminal features, which is what the nightly run is for)."""
    missing = [model for model in MODEL_FAMILIES if session.get(Schedule, model) is None]
    for model in missing:
        with write_lock():
            session.add(Schedule(
                model=model, cron=config.get("SCHEDULE_DEFAULT_CRON", DEFAULT_CRON), enabled=model == "xgboost",
                params=dict(DEFAULT_SCHEDULE_PARAMS), train_days=config["DEFAULT_TRAIN_DAYS"], validation_days=config["DEFAULT_VALIDATION_DAYS"],
                label_delay_days=config["DEFAULT_LABEL_DELAY_DAYS"], updated_at=now(),
            ))
            try:
                session.commit()
            except IntegrityError:  # another process created it first: theirs is as good
                session.rollback()
    return list(session.execute(select(Schedule).order_by(Schedule.model)).scalars())


def set_schedule(session: Session, config: Any, model: str, changes: dict[str, Any]) -> Schedule:
    """Change a family's schedule (cron, enabled, params, window days, quorum, run timeout).

    Raises
    ------
    Unprocessable
        An unknown family, an invalid cron expression or invalid params.
    """
    if model not in MODEL_FAMILIES:
        raise Unprocessable(f"no model family {model!r}", {"model": [f"one of {', '.join(MODEL_FAMILIES)}"]})
    if "cron" in changes:
        try:
            trigger = cron_trigger(changes["cron"], config["TIME_ZONE"])
        except ValueError as exc:
            raise Unprocessable(str(exc), {"cron": [str(exc)]}) from None
        if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:  # e.g. 30 February: shown enabled, never run
            problem = f"cron expression {changes['cron']!r} names no date that exists: it would never fire"
            raise Unprocessable(problem, {"cron": [problem]})
    if "params" in changes:
        try:
            changes["params"] = load_run_params(model, changes["params"])
        except FedfraudInputError as exc:
            raise Unprocessable(exc.message, exc.errors) from None
    ensure_schedules(session, config)
    with write_lock():
        schedule = session.get(Schedule, model)
        assert schedule is not None
        for name, value in changes.items():
            setattr(schedule, name, value)
        schedule.updated_at = now()
        record(session, "schedule.changed", details={"model": model, "changes": changes})
        session.commit()
    logger.info("schedule changed", extra={"model": model, "fields": sorted(changes)})
    return schedule


def fire_due(app: Flask, *, models: tuple[str, ...] = MODEL_FAMILIES) -> list[FireOutcome]:
    """Open the run of every enabled schedule whose latest firing is due and unclaimed.

    Safe to call concurrently from several processes: each firing opens at most one run.
    """
    with app.app_context():
        session = db.session
        config = app.config
        moment = now()
        outcomes = []
        for schedule in ensure_schedules(session, config):
            if schedule.model in models and schedule.enabled:
                outcomes.append(_fire_one(session, config, schedule, moment))
        return outcomes


def _fire_one(session: Session, config: Any, schedule: Schedule, moment: datetime) -> FireOutcome:
    zone = ZoneInfo(config["TIME_ZONE"])
    due = latest_due(schedule.cron, config["TIME_ZONE"], moment)
    if due is None:
        return FireOutcome(schedule.model, None, None, "no firing in the last 8 days", "none_due")
    local = due.astimezone(zone).replace(tzinfo=None)
    if schedule.last_fired_local is not None and local <= schedule.last_fired_local:
        return FireOutcome(schedule.model, local, None, "already fired", "already_fired")
    late = _utc(moment) - due
    grace = timedelta(seconds=int(config["SCHEDULE_GRACE_S"]))
    claimed = _claim(session, schedule.model, local, moment)
    if not claimed:
        return FireOutcome(schedule.model, local, None, "fired by another scheduler", "elsewhere")
    if late > grace:
        message = f"missed by {late} (more than the {grace} grace period): skipped, not run late"
        return _record(session, schedule.model, None, message, local, "missed")
    still_open = session.execute(
        select(Run.run_id).where(Run.model == schedule.model, Run.state == RunState.OPEN.value)
    ).scalar()
    if still_open is not None:
        return _record(session, schedule.model, None, f"skipped: run {still_open} is still open", local, "overlap")
    window = RunWindow(as_of=local.date(), train_days=schedule.train_days, validation_days=schedule.validation_days,
                       label_delay_days=schedule.label_delay_days)
    try:
        run = open_run(
            session, model=schedule.model, params=load_run_params(schedule.model, schedule.params),
            min_banks=schedule.min_banks or config["DEFAULT_MIN_BANKS"],
            round_timeout_s=config["DEFAULT_ROUND_TIMEOUT_S"], participants=None, window=window,
            run_timeout_s=schedule.run_timeout_s or config["DEFAULT_RUN_TIMEOUT_S"],
            promotion_tolerance=float(config["PROMOTION_TOLERANCE"]),
        )
    except (ConsortiumError, FedfraudInputError) as exc:
        session.rollback()
        return _record(session, schedule.model, None, f"could not open the run: {exc}", local, "refused")
    return _record(session, schedule.model, run.run_id, f"opened run {run.run_id} for {window.as_of}", local, "opened")


def _claim(session: Session, model: str, local: datetime, moment: datetime) -> bool:
    """Compare-and-set the schedule's last firing: True for exactly one caller per firing."""
    with write_lock():
        result = session.execute(
            update(Schedule)
            .where(Schedule.model == model)
            .where(or_(Schedule.last_fired_local.is_(None), Schedule.last_fired_local < local))
            .values(last_fired_local=local, last_fired_at=moment)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def _record(session: Session, model: str, run_id: str | None, message: str, local: datetime, kind: str) -> FireOutcome:
    with write_lock():
        session.execute(
            update(Schedule).where(Schedule.model == model)
            .values(last_run_id=run_id, last_outcome=message).execution_options(synchronize_session=False)
        )
        session.commit()
    session.expire_all()
    logger.info("schedule fired", extra={"model": model, "fired_local": local.isoformat(), "outcome": message})
    return FireOutcome(model, local, run_id, message, kind)
