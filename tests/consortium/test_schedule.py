"""The nightly schedule on a controlled clock (time-machine): local time across daylight-saving
changes, a missed firing caught up once, two schedulers making one run, a cadence that survives a
restart."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from apscheduler.schedulers.background import BackgroundScheduler
from flask import Flask
from prometheus_client import generate_latest
from sqlalchemy import select

from consortium.app import create_app
from consortium.schedule import fire_due
from consortium.scheduler import build_scheduler
from consortium.storage.database import Database, db
from consortium.storage.models import Run, RunState
from tests.consortium.conftest import Consortium, bearer


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """The service on the real clock function, which time-machine moves; Brussels time."""
    config = {k: v for k, v in app_config.items() if k != "CLOCK"}
    return {**config, "TIME_ZONE": "Europe/Brussels"}


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def _at(app: Flask, moment: datetime) -> list[Any]:
    with time_machine.travel(moment, tick=False):
        return fire_due(app)


def _runs(app: Flask) -> list[tuple[str, str]]:
    """(as_of, state) of every run, oldest first."""
    with app.app_context():
        rows = db.session.execute(select(Run).order_by(Run.created_at, Run.run_id)).scalars()
        return [((row.window or {}).get("as_of", ""), row.state) for row in rows]


def _finish_open_runs(app: Flask) -> None:
    with app.app_context():
        for run in db.session.execute(select(Run).where(Run.state == RunState.OPEN.value)).scalars():
            run.state = RunState.COMPLETED.value
        db.session.commit()


def _set(consortium: Consortium, model: str, **changes: Any) -> Any:
    response = consortium.client.put(f"/v1/schedules/{model}", json=changes, headers=bearer(consortium.operator))
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_nightly_at_two_local_time_across_the_spring_change(app: Flask, consortium: Consortium) -> None:
    """Brussels moves from +01:00 to +02:00 at 02:00 on 29 March 2026: 02:00 does not exist that
    night; the run of the 29th opens at the first instant after (03:00 CEST), once."""
    nights = [
        (_utc(2026, 3, 28, 0, 59), []),                      # 01:59 CET: not yet
        (_utc(2026, 3, 28, 1, 0, 5), ["2026-03-28"]),        # 02:00 CET
        (_utc(2026, 3, 29, 0, 59), []),                      # 01:59 CET
        (_utc(2026, 3, 29, 1, 0, 5), ["2026-03-29"]),        # 03:00 CEST, the first instant after 02:00
        (_utc(2026, 3, 29, 23, 59), []),                     # 01:59 CEST on the 30th
        (_utc(2026, 3, 30, 0, 0, 5), ["2026-03-30"]),        # 02:00 CEST = 00:00 UTC
    ]
    _at(app, _utc(2026, 3, 27, 1, 0, 5))  # the first firing ever (the 27th)
    _finish_open_runs(app)
    seen = len(_runs(app))
    for moment, expected in nights:
        _at(app, moment)
        runs = _runs(app)
        assert [as_of for as_of, _ in runs[seen:]] == expected, moment
        seen = len(runs)
        _finish_open_runs(app)


def test_the_repeated_hour_of_the_autumn_change_runs_once(app: Flask, consortium: Consortium) -> None:
    """02:30 happens twice in Brussels on 25 October 2026 (CEST, then CET): one run."""
    _set(consortium, "xgboost", cron="30 2 * * *")
    _at(app, _utc(2026, 10, 25, 0, 30, 5))  # 02:30 CEST
    _finish_open_runs(app)
    outcomes = _at(app, _utc(2026, 10, 25, 1, 30, 5))  # 02:30 CET, the same wall-clock time
    assert [o.message for o in outcomes if o.model == "xgboost"] == ["already fired"]
    assert [as_of for as_of, _ in _runs(app)] == ["2026-10-25"]


def test_a_missed_firing_runs_once_after_start_up_within_the_grace_period(app: Flask, consortium: Consortium) -> None:
    _at(app, _utc(2026, 6, 1, 0, 0, 5))  # 02:00 CEST on 1 June: the scheduler was up
    _finish_open_runs(app)
    # Down from before 02:00 on the 2nd until 05:00 (three hours late, grace six): caught up once.
    first = _at(app, _utc(2026, 6, 2, 3, 0))
    again = _at(app, _utc(2026, 6, 2, 3, 0, 30))
    assert [o.run_id is not None for o in first if o.model == "xgboost"] == [True]
    assert [o.message for o in again if o.model == "xgboost"] == ["already fired"]
    assert [as_of for as_of, _ in _runs(app)] == ["2026-06-01", "2026-06-02"]
    _finish_open_runs(app)
    # Down until 09:00 on the 3rd (seven hours late): skipped, not run late, and said so.
    late = _at(app, _utc(2026, 6, 3, 7, 0))
    assert "skipped, not run late" in [o.message for o in late if o.model == "xgboost"][0]
    assert len(_runs(app)) == 2


def test_a_run_still_open_is_not_overlapped(app: Flask, consortium: Consortium) -> None:
    _at(app, _utc(2026, 6, 1, 0, 0, 5))
    outcome = [o for o in _at(app, _utc(2026, 6, 2, 0, 0, 5)) if o.model == "xgboost"][0]
    assert outcome.run_id is None and "still open" in outcome.message
    assert _runs(app) == [("2026-06-01", "open")]


def test_two_schedulers_firing_at_once_open_one_run(app: Flask, consortium: Consortium, app_config: dict[str, Any]) -> None:
    other = create_app(app_config)  # a second scheduler process on the same database
    results: list[Any] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def fire(instance: Flask) -> None:
        barrier.wait()
        try:
            results.extend(fire_due(instance, models=("xgboost",)))
        except BaseException as exc:  # surfaced below: a thread's exception would be lost
            errors.append(exc)

    try:
        with time_machine.travel(_utc(2026, 6, 1, 0, 0, 5), tick=False):
            threads = [threading.Thread(target=fire, args=(instance,)) for instance in (app, other)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
    finally:
        Database.engine_for(other).dispose()
    assert errors == []
    assert sorted(o.run_id is not None for o in results) == [False, True]
    assert _runs(app) == [("2026-06-01", "open")]


def test_a_changed_cadence_survives_a_restart_and_reaches_the_scheduler(
    app: Flask, consortium: Consortium, app_config: dict[str, Any]
) -> None:
    changed = _set(consortium, "xgboost", cron="15 3 * * 1-5", params={"n_trees": 50, "max_depth": 4}, train_days=14)
    assert changed["cron"] == "15 3 * * 1-5" and changed["params"] == {"n_trees": 50, "max_depth": 4}
    restarted = create_app(app_config)
    try:
        listed = restarted.test_client().get("/v1/schedules", headers=bearer(consortium.operator)).get_json()
        xgb = next(s for s in listed if s["model"] == "xgboost")
        assert (xgb["cron"], xgb["train_days"], xgb["time_zone"]) == ("15 3 * * 1-5", 14, "Europe/Brussels")
        with time_machine.travel(_utc(2026, 6, 5, 12, 0), tick=False):  # a Friday
            scheduler = build_scheduler(restarted, BackgroundScheduler(timezone="Europe/Brussels"))
            job = scheduler.get_job("train-xgboost")
            assert job is not None
            fire = job.trigger.get_next_fire_time(None, datetime.now(UTC))
        assert fire.isoformat() == "2026-06-08T03:15:00+02:00"  # next Monday, local time
        assert scheduler.get_job("train-logreg") is None  # logreg is off by default
    finally:
        Database.engine_for(restarted).dispose()


def test_schedule_changes_are_checked_and_only_operators_make_them(
    consortium: Consortium, compliance_token: str
) -> None:
    operator = bearer(consortium.operator)
    bad_cron = consortium.client.put("/v1/schedules/xgboost", json={"cron": "61 2 * * *"}, headers=operator)
    assert bad_cron.status_code == 422 and "cron" in bad_cron.get_json()["errors"]
    for never in ("0 2 30 2 *", "0 0 31 4,6,9,11 *"):  # valid fields, no such date: enabled, it would never run
        refused = consortium.client.put("/v1/schedules/xgboost", json={"cron": never, "enabled": True}, headers=operator)
        assert refused.status_code == 422 and "never fire" in refused.get_json()["errors"]["cron"][0]
    leap = consortium.client.put("/v1/schedules/xgboost", json={"cron": "0 2 29 2 *"}, headers=operator)
    assert leap.status_code == 200 and leap.get_json()["next_fire_at"] is not None  # every four years is a date
    bad_params = consortium.client.put("/v1/schedules/xgboost", json={"params": {"n_trees": 0}}, headers=operator)
    assert bad_params.status_code == 422 and "params.n_trees" in bad_params.get_json()["errors"]
    unknown = consortium.client.put("/v1/schedules/forest", json={"enabled": True}, headers=operator)
    assert unknown.status_code == 422
    as_compliance = consortium.client.put("/v1/schedules/xgboost", json={"enabled": False},
                                          headers=bearer(compliance_token))
    assert as_compliance.status_code == 403
    assert consortium.client.get("/v1/schedules", headers=bearer(compliance_token)).status_code == 200


def test_a_running_scheduler_picks_up_a_change_at_its_next_reload(app: Flask, consortium: Consortium) -> None:
    from consortium.scheduler import reload_schedules

    scheduler = build_scheduler(app, BackgroundScheduler(timezone="Europe/Brussels"))
    assert scheduler.get_job("train-logreg") is None
    _set(consortium, "logreg", enabled=True, cron="45 4 * * *")
    _set(consortium, "xgboost", enabled=False)
    assert sorted(reload_schedules(app, scheduler)) == ["train-logreg"]
    assert scheduler.get_job("train-xgboost") is None
    job = scheduler.get_job("train-logreg")
    assert job is not None and "hour='4', minute='45'" in str(job.trigger)


def test_the_sweep_ends_runs_past_their_deadline(app: Flask, consortium: Consortium) -> None:
    from consortium.rounds import sweep_expired

    with time_machine.travel(_utc(2026, 6, 1, 0, 0), tick=False):
        run_id = consortium.open_run(run_timeout_s=3600)["run_id"]
    with time_machine.travel(_utc(2026, 6, 1, 1, 0, 1), tick=False):
        sweep_expired(app)
    with app.app_context():
        run = db.session.get(Run, run_id)
        assert run is not None and run.state == RunState.FAILED.value and "deadline" in (run.failure_reason or "")


def test_a_scheduled_run_carries_the_schedules_settings_and_the_consortiums_tolerance(
    app: Flask, consortium: Consortium
) -> None:
    app.config["PROMOTION_TOLERANCE"] = 0.02
    _set(consortium, "xgboost", params={"n_trees": 7}, train_days=10, validation_days=3, label_delay_days=5)
    [outcome] = [o for o in _at(app, _utc(2026, 6, 1, 0, 0, 5)) if o.model == "xgboost"]
    run = consortium.run(str(outcome.run_id))
    assert run["params"] == {"n_trees": 7} and run["promotion_tolerance"] == 0.02
    assert run["window"] == {"as_of": "2026-06-01", "train_days": 10, "validation_days": 3, "label_delay_days": 5}


def test_the_scheduler_process_serves_its_own_metrics(app: Flask, consortium: Consortium) -> None:
    """Firings by outcome, the next firing per family (what an operator alerts on when it did not
    move) and sweeps, from the scheduler process itself on the loopback."""
    import urllib.request

    from consortium.scheduler import SchedulerMetrics, fire_job, sweep_once
    from fedfraud.localnet import free_port

    metrics = SchedulerMetrics()
    scheduler = build_scheduler(app, BackgroundScheduler(timezone="Europe/Brussels"), metrics)
    with time_machine.travel(_utc(2026, 6, 10, 0, 0, 30), tick=False):  # 02:00:30 CEST
        fire_job(app, "xgboost", metrics)
        fire_job(app, "xgboost", metrics)  # the same firing again: nothing opened twice
        _finish_open_runs(app)
    with time_machine.travel(_utc(2026, 6, 11, 3, 0), tick=False):  # 05:00 CEST: an hour past the grace period
        app.config["SCHEDULE_GRACE_S"] = 3600
        fire_job(app, "xgboost", metrics)
    sweep_once(app, metrics)
    port = free_port()
    server, _ = metrics.serve(port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    finally:
        server.shutdown()
    assert 'fedfraud_scheduler_firings_total{model="xgboost",outcome="opened"} 1.0' in text
    assert 'fedfraud_scheduler_firings_total{model="xgboost",outcome="already_fired"} 1.0' in text
    assert 'fedfraud_scheduler_firings_total{model="xgboost",outcome="missed"} 1.0' in text
    assert 'fedfraud_scheduler_sweeps_total{outcome="ok"} 1.0' in text
    assert [as_of for as_of, _ in _runs(app)] == ["2026-06-10"]
    job = scheduler.get_job("train-xgboost")
    assert job is not None
    scheduler.start(paused=True)  # jobs get their next firing time when the scheduler starts
    try:
        job = scheduler.get_job("train-xgboost")
        assert job is not None and job.next_run_time is not None
        expected = job.next_run_time.timestamp()
        lines = [line for line in generate_latest(metrics.registry).decode().splitlines()
                 if line.startswith('fedfraud_scheduler_next_firing_timestamp_seconds{model="xgboost"}')]
        assert lines and float(lines[0].split()[-1]) == expected
    finally:
        scheduler.shutdown(wait=False)
