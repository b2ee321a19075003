"""``fedfraud consortium ...``: run and administer the aggregator.

The lead mounts :data:`consortium_cli` under the ``fedfraud`` command. Each command builds the
app with :func:`consortium.app.create_app`, so settings come from the instance config file and
``FEDFRAUD_*`` environment variables (e.g. ``FEDFRAUD_DATABASE_URL``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

__all__ = ["consortium_cli"]


@click.group("consortium")
def consortium_cli() -> None:
    """Run and administer the consortium aggregator."""


@consortium_cli.command("init-db")
def init_db() -> None:
    """Create or upgrade the database schema (Alembic migrations)."""
    from consortium.app import create_app
    from consortium.storage.database import Database
    from consortium.storage.migrate import upgrade

    app = create_app({"AUTO_MIGRATE": False})
    upgrade(Database.engine_for(app))
    click.echo(f"database ready: {Database.engine_for(app).url.render_as_string(hide_password=True)}")


@consortium_cli.command("create-token")
@click.option("--role", type=click.Choice(["operator", "compliance", "monitoring"]), required=True,
              help="What the token may do (monitoring: scrape /metrics only).")
def create_token(role: str) -> None:
    """Issue an operator or compliance token; it is printed once and stored only as a hash."""
    from consortium.app import create_app
    from sqlalchemy import select

    from consortium.auth import hash_token, issue_token
    from consortium.storage.database import db
    from consortium.storage.models import Token

    app = create_app()
    with app.app_context():
        token = issue_token(db.session, role)
        db.session.commit()
        token_id = db.session.execute(select(Token.id).where(Token.token_sha256 == hash_token(token))).scalar_one()
    click.echo(f"token id {token_id} ({role}); revoke it with: fedfraud consortium revoke-token {token_id}", err=True)
    click.echo(token)


@consortium_cli.command("tokens")
def list_tokens() -> None:
    """List the tokens issued: id, role, bank, when issued and revoked (never the tokens, which
    are stored only as hashes)."""
    from sqlalchemy import select

    from consortium.app import create_app
    from consortium.storage.database import db
    from consortium.storage.models import Token

    app = create_app()
    with app.app_context():
        rows = db.session.execute(select(Token).order_by(Token.id)).scalars().all()
        click.echo(f"{'id':>5}  {'role':<10}  {'bank':<24}  {'issued (UTC)':<19}  revoked (UTC)")
        for row in rows:
            revoked = "-" if row.revoked_at is None else row.revoked_at.isoformat(sep=" ", timespec="seconds")
            click.echo(f"{row.id:>5}  {row.role:<10}  {row.bank_id or '-':<24}  "
                       f"{row.created_at.isoformat(sep=' ', timespec='seconds'):<19}  {revoked}")


@consortium_cli.command("revoke-token")
@click.argument("token_id", type=click.IntRange(min=1))
def revoke_token(token_id: int) -> None:
    """Revoke token TOKEN_ID (see `fedfraud consortium tokens`): refused from its next request on,
    recorded in the contribution ledger."""
    from consortium.app import create_app
    from consortium.auth import revoke_token as revoke
    from consortium.errors import ConsortiumError
    from consortium.storage.database import db

    app = create_app()
    with app.app_context():
        try:
            row = revoke(db.session, token_id)
            db.session.commit()
        except ConsortiumError as exc:
            db.session.rollback()
            raise click.ClickException(exc.message) from None
        click.echo(f"token {token_id} ({row.role}{', bank ' + row.bank_id if row.bank_id else ''}) revoked")


@consortium_cli.command("rotate-ledger-key")
def rotate_ledger_key() -> None:
    """Replace the ledger's signing key: a ledger.key_rotated entry endorsed by the old key and
    signed by the new one. Running services follow it at their next entry; banks' agents follow it
    at their next poll, from the key they pinned. Take a backup afterwards: it holds the new key."""
    from consortium.app import create_app
    from consortium.errors import ConsortiumError
    from consortium.ledger import rotate_key
    from consortium.storage.database import db

    app = create_app()
    with app.app_context():
        try:
            old, new = rotate_key(db.session)
        except ConsortiumError as exc:
            raise click.ClickException(exc.message) from None
    click.echo(f"ledger signing key rotated: {old} -> {new}")


@consortium_cli.command("enrol-bank")
@click.argument("bank_id")
@click.argument("name")
def enrol_bank(bank_id: str, name: str) -> None:
    """Enrol bank BANK_ID called NAME; prints its token once."""
    from consortium.app import create_app
    from consortium.ceremony import BANK_ID_PATTERN
    from consortium.ceremony import enrol_bank as enrol
    from consortium.errors import ConsortiumError
    from consortium.storage.database import db

    if not BANK_ID_PATTERN.match(bank_id):
        raise click.BadParameter(f"bank ids match {BANK_ID_PATTERN.pattern}", param_hint="BANK_ID")
    app = create_app()
    with app.app_context():
        try:
            _, token = enrol(db.session, bank_id=bank_id, name=name)
        except ConsortiumError as exc:
            raise click.ClickException(exc.message) from None
    click.echo(token)


@consortium_cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="TCP port.")
@click.option("--no-sweep", is_flag=True, help="Do not start the background sweep of expired rounds.")
def serve(host: str, port: int, no_sweep: bool) -> None:
    """Run the aggregator on werkzeug's server (development; use gunicorn in production)."""
    from werkzeug.serving import run_simple

    from consortium.app import create_app
    from consortium.logs import configure_logging
    from consortium.scheduler import start_sweeper

    app = create_app()
    configure_logging(app.config["LOG_LEVEL"])
    # The access log (consortium.access, one JSON line a request) says what werkzeug's own line
    # would; werkzeug keeps its warnings and errors.
    logging.getLogger("werkzeug").setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    logging.getLogger("consortium").info("aggregator serving", extra={"url": f"http://{host}:{port}"})
    scheduler = None if no_sweep else start_sweeper(app)
    try:
        run_simple(host, port, app, threaded=True, use_reloader=False)
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)


@consortium_cli.command("sweep")
@click.option("--once", is_flag=True, help="Close expired rounds once and exit (e.g. from cron).")
def sweep(once: bool) -> None:
    """Close expired rounds periodically (run beside gunicorn; ``serve`` does it itself)."""
    import time

    from consortium.app import create_app
    from consortium.logs import configure_logging
    from consortium.rounds import sweep_expired
    from consortium.scheduler import sweep_once

    app = create_app()
    configure_logging(app.config["LOG_LEVEL"])
    if once:
        click.echo(f"closed {sweep_expired(app)} expired round(s)")
        return
    interval = int(app.config["SWEEP_INTERVAL_S"])
    while True:
        sweep_once(app)
        time.sleep(interval)


@consortium_cli.command("scheduler")
@click.option("--metrics-port", type=click.IntRange(min=1, max=65535), default=None, metavar="PORT",
              help="Serve Prometheus metrics on --metrics-host:PORT (firings by outcome, the next firing per "
                   "family, sweeps).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, metavar="HOST",
              help="Address the metrics listen on (0.0.0.0 inside a container).")
def scheduler(metrics_port: int | None, metrics_host: str) -> None:
    """Run the nightly training schedule (one such process per consortium), and the sweep."""
    from consortium.app import create_app
    from consortium.logs import configure_logging
    from consortium.scheduler import SchedulerMetrics, run_scheduler

    app = create_app()
    configure_logging(app.config["LOG_LEVEL"])
    metrics = None
    if metrics_port is not None:
        metrics = SchedulerMetrics()
        try:
            metrics.serve(metrics_port, metrics_host)
        except OSError as exc:
            raise click.UsageError(f"--metrics-port {metrics_port}: cannot listen on {metrics_host} "
                                   f"({exc.strerror})") from None
        click.echo(f"metrics on http://{metrics_host}:{metrics_port}/metrics", err=True)
    click.echo(f"scheduler running in time zone {app.config['TIME_ZONE']}", err=True)
    try:
        run_scheduler(app, metrics)
    except (KeyboardInterrupt, SystemExit):
        click.echo("scheduler stopped", err=True)


@consortium_cli.group("schedule")
def schedule_group() -> None:
    """Show or change when each model family trains by itself."""


def _echo_schedule(view: dict[str, object]) -> None:
    state = "on " if view["enabled"] else "off"
    upcoming = view["next_fire_local"] or "-"
    click.echo(f"{view['model']:<8} {state} cron '{view['cron']}' ({view['time_zone']})  next: {upcoming}  "
               f"window: {view['train_days']}d train, {view['validation_days']}d validation, "
               f"{view['label_delay_days']}d label delay  last: {view['last_outcome'] or '-'}")


@schedule_group.command("show")
def schedule_show() -> None:
    """Every family's schedule and its next firing."""
    from consortium.api.schedules import schedule_view
    from consortium.app import create_app
    from consortium.schedule import ensure_schedules
    from consortium.storage.database import db

    app = create_app()
    with app.test_request_context(), app.app_context():
        for row in ensure_schedules(db.session, app.config):
            _echo_schedule(schedule_view(row))


@schedule_group.command("set")
@click.argument("model", type=click.Choice(["xgboost", "logreg"]))
@click.option("--cron", help="5-field crontab line in the consortium's time zone, e.g. '0 2 * * *'.")
@click.option("--enable/--disable", "enabled", default=None, help="Turn the schedule on or off.")
@click.option("--params", "params_json", metavar="JSON", help="The runs' params, e.g. '{\"n_trees\": 100}'.")
@click.option("--train-days", type=click.IntRange(1, 366))
@click.option("--validation-days", type=click.IntRange(0, 92))
@click.option("--label-delay-days", type=click.IntRange(0, 92))
def schedule_set(model: str, cron: str | None, enabled: bool | None, params_json: str | None,
                 train_days: int | None, validation_days: int | None, label_delay_days: int | None) -> None:
    """Change MODEL's schedule; a running scheduler picks it up within SCHEDULE_RELOAD_S."""
    import json

    from consortium.api.schedules import schedule_view
    from consortium.app import create_app
    from consortium.errors import ConsortiumError
    from consortium.schedule import set_schedule
    from consortium.storage.database import db

    changes: dict[str, object] = {}
    for name, value in (("cron", cron), ("enabled", enabled), ("train_days", train_days),
                        ("validation_days", validation_days), ("label_delay_days", label_delay_days)):
        if value is not None:
            changes[name] = value
    if params_json is not None:
        try:
            changes["params"] = json.loads(params_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc.msg}", param_hint="--params") from None
    if not changes:
        raise click.UsageError("nothing to change: give --cron, --enable/--disable, --params or a window option")
    app = create_app()
    with app.test_request_context(), app.app_context():
        try:
            row = set_schedule(db.session, app.config, model, changes)
        except ConsortiumError as exc:
            details = "; ".join(f"{k}: {' '.join(v)}" for k, v in (exc.errors or {}).items())
            raise click.ClickException(f"{exc.message}{f' ({details})' if details else ''}") from None
        _echo_schedule(schedule_view(row))


def _storage_locations() -> tuple[str, Any, Any]:
    """The database URL, blob folder and ledger key file the settings name (no app is built: an
    app would create a signing key where a restore must find none)."""
    from flask import Flask

    from consortium.config import load_config
    from consortium.ledger import key_path

    settings = load_config(Flask("consortium", instance_relative_config=True).instance_path)
    return settings.DATABASE_URL, Path(settings.BLOB_DIR), key_path(settings.LEDGER_KEY_FILE, settings.BLOB_DIR)


def _storage_step(step: Callable[[Any, Path, Path], Any]) -> Any:
    """``step(engine, blob_dir, key_file)`` on the configured storage, a backup error made readable."""
    from consortium.backup import BackupError
    from consortium.storage.database import make_engine

    url, blob_dir, key_file = _storage_locations()
    engine = make_engine(url)
    try:
        return step(engine, blob_dir, key_file)
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()


@consortium_cli.command("backup")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def backup_command(folder: Path) -> None:
    """Back up the database, the blob store and the ledger's signing key into a new FOLDER (one
    consistent snapshot; the service may keep running)."""
    from consortium.backup import backup

    manifest = _storage_step(lambda engine, blob_dir, key_file: backup(
        engine, blob_dir, key_file, folder, progress=lambda line: click.echo(line, err=True)))
    click.echo(f"backup written to {folder}: {sum(t['rows'] for t in manifest.tables.values())} rows, "
               f"{manifest.blobs} blobs, a ledger of {manifest.ledger_size} entries")


@consortium_cli.command("restore")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
def restore_command(folder: Path) -> None:
    """Restore the backup in FOLDER into an empty database, blob store and key location, then
    verify the restored ledger from its first entry."""
    from consortium.app import create_app
    from consortium.backup import restore
    from consortium.ledger import verify_database
    from consortium.storage.database import db

    manifest = _storage_step(lambda engine, blob_dir, key_file: restore(
        engine, blob_dir, key_file, folder, progress=lambda line: click.echo(line, err=True)))
    app = create_app({"AUTO_MIGRATE": False})
    with app.app_context():
        verification = verify_database(db.session)
    if not verification.ok:
        raise click.ClickException(f"the restored ledger does not verify: {verification.to_json()}")
    click.echo(f"restored from {folder}: a ledger of {manifest.ledger_size} entries, verified")
