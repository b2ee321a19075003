"""``fedfraud bank ...``: enrol a bank node, take part in the key ceremony, run the agent.

The group :func:`bank_cli` is mounted on the ``fedfraud`` command. Progress goes to stderr as log
lines; every expected failure (an unreachable consortium, a refused token, bad input) ends the
command with one readable line and a non-zero status, never a traceback. The bearer token is
read from ``FEDFRAUD_BANK_TOKEN`` or a hidden prompt (not the command line, where ``ps`` shows it)
and is never printed.
"""

from __future__ import annotations

import logging
import os
import time
import sys
from collections.abc import Callable
from contextlib import closing
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from schemas.cli import dask_options, readable_errors

__all__ = ["bank_cli"]

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("bank_node.agent.cli")




def _state_dir_option(func: F) -> F:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="FEDFRAUD_STATE_DIR",
        required=True,
        help="The bank node's private state (keys, token, HE secret key, models). Env: FEDFRAUD_STATE_DIR.",
    )(func)


def _development_option(func: F) -> F:
    def warn(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        if value:
            log.warning("DEVELOPMENT MODE: the unencrypted 'plain' HE scheme is accepted; never use this with real data")
        return value

    return click.option(
        "--development", is_flag=True, callback=warn,
        help="Accept the unencrypted 'plain' HE scheme (tests only; logged).",
    )(func)


def _url_option(required: bool) -> Callable[[F], F]:
    return click.option(
        "--url",
        envvar="FEDFRAUD_CONSORTIUM_URL",
        required=required,
        default=None,
        help="The consortium service root, e.g. https://consortium.example:8443"
        + ("." if required else " (default: the one stored by `enrol`)."),
    )


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Log lines to whatever ``sys.stderr`` is when they are written (it may be swapped)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        return None


def _setup_logging(verbose: bool, json_lines: bool = False) -> None:
    from schemas.logs import JsonFormatter

    logger = logging.getLogger("bank_node")
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        logger.addHandler(handler)
    handler.setFormatter(JsonFormatter() if json_lines
                         else logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


_RETRY_META = "fedfraud.bank.retry"


def _new_client(url: str, token: str) -> Any:
    from bank_node.agent.client import ConsortiumClient
    from bank_node.agent.retry import RetryPolicy

    options = click.get_current_context().meta[_RETRY_META]
    retry = RetryPolicy(max_attempts=options["retry_attempts"], total_timeout_s=options["retry_timeout"])
    return ConsortiumClient(base_url=url, token=token, retry=retry, client_cert=_client_certificate())


def _client_certificate() -> tuple[str, str] | None:
    """The TLS client certificate and key for a consortium front that asks for one
    (``FEDFRAUD_CLIENT_CERT`` and ``FEDFRAUD_CLIENT_KEY``, PEM files; both or neither)."""
    from pathlib import Path

    from schemas.errors import FedfraudInputError

    cert, key = os.environ.get("FEDFRAUD_CLIENT_CERT"), os.environ.get("FEDFRAUD_CLIENT_KEY")
    if not cert and not key:
        return None
    if not (cert and key):
        raise FedfraudInputError("set both FEDFRAUD_CLIENT_CERT and FEDFRAUD_CLIENT_KEY (mutual TLS), or neither",
                                 {"FEDFRAUD_CLIENT_CERT" if not cert else "FEDFRAUD_CLIENT_KEY": ["missing"]})
    for name, path in (("FEDFRAUD_CLIENT_CERT", cert), ("FEDFRAUD_CLIENT_KEY", key)):
        if not Path(path).is_file():
            raise FedfraudInputError(f"{name}: no such file {path}", {name: ["no such file"]})
    return cert, key


def _client(state: Any, url: str | None) -> tuple[Any, Any]:
    config = state.load_config()
    return _new_client(url or config.url, state.load_token()), config


@click.group(name="bank", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log every round on stderr.")
@click.option("--retry-attempts", type=click.IntRange(min=1), default=6, show_default=True,
              help="Most tries of one request when the consortium is unreachable or answers 5xx.")
@click.option("--retry-timeout", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="Seconds after which a failing request is given up.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              envvar="FEDFRAUD_LOG_FORMAT", help="json: one JSON object a line, with the request id of each "
                                                 "consortium request (for a log shipper; env FEDFRAUD_LOG_FORMAT).")
def bank_cli(verbose: bool, retry_attempts: int, retry_timeout: float, log_format: str) -> None:
    """The bank node: enrol with the consortium, share the HE key, take part in training runs."""
    _setup_logging(verbose, json_lines=log_format == "json")
    # Kept in the context's meta, which every subcommand sees whether this group is the root
    # command or mounted under ``fedfraud``.
    click.get_current_context().meta[_RETRY_META] = {"retry_attempts": retry_attempts, "retry_timeout": retry_timeout}


@bank_cli.command()
@_state_dir_option
@_url_option(required=True)
@click.option("--bank-id", required=True, help="The id the consortium operator enrolled this bank under.")
@click.option("--token", envvar="FEDFRAUD_BANK_TOKEN", prompt="Bank token", hide_input=True,
              help="The bank's token from the operator. Env: FEDFRAUD_BANK_TOKEN (else prompted).")
@readable_errors
def enrol(state_dir: Path, url: str, bank_id: str, token: str) -> None:
    """Store the consortium URL and token, create this bank's keys, and register them."""
    from bank_node.agent.enrolment import enrol as run_enrol
    from bank_node.agent.state import StateDir

    with closing(_new_client(url, token)) as client:
        identity = run_enrol(StateDir(state_dir), url=url, bank_id=bank_id, token=token, client=client)
    click.echo(f"bank {bank_id} enrolled at {url}; signing key {identity.signing_key_b64}")


@bank_cli.command()
@_state_dir_option
@_url_option(required=False)
@click.option("--generate", is_flag=True,
              help="This is the designated bank: generate the HE key, publish it, share it with the others.")
@click.option("--scheme", type=click.Choice(["ckks", "paillier", "plain"]), default="ckks", show_default=True,
              help="HE scheme to generate (with --generate).")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds to wait for the designated bank's share (without --generate).")
@click.option("--rotate", is_flag=True,
              help="With --generate: make a new key for the pinned roster (after a member left).")
@_development_option
@readable_errors
def ceremony(state_dir: Path, url: str | None, generate: bool, scheme: str, wait_s: float, rotate: bool,
             development: bool) -> None:
    """Key ceremony: publish and share the HE key with the pinned roster's members (--generate),
    or fetch and verify this bank's share."""
    if scheme == "plain" and generate and not development:
        raise click.UsageError("--scheme plain encrypts nothing; it is for tests, with --development")
    from bank_node.agent.ceremony import fetch_share, publish_keys
    from bank_node.agent.identity import load_identity
    from bank_node.agent.state import StateDir

    state = StateDir(state_dir)
    client, config = _client(state, url)
    identity = load_identity(state, config.bank_id)
    with closing(client):
        if generate:
            result = publish_keys(client, identity, state, scheme=scheme, rotate=rotate)
            shared = ", ".join(result.shared_with) or "no new bank"
            click.echo(f"HE key {result.key_id} ({result.scheme}) published; shares posted to {shared}")
        else:
            result = fetch_share(client, identity, state, wait_s=wait_s)
            click.echo(f"HE key {result.key_id} ({result.scheme}) received and stored in {state_dir}")


def _store_option(func: F) -> F:
    return click.option(
        "--store", "store_url", envvar="FEDFRAUD_BANK_STORE", default=None, metavar="URL",
        help="The node's transaction store: a SQLAlchemy URL (e.g. postgresql://...); default "
             "transactions.db (SQLite) in the state directory. Env: FEDFRAUD_BANK_STORE.",
    )(func)


def _open_store(state_dir: Path, url: str | None) -> Any:
    from bank_node.store import TransactionStore

    return TransactionStore(url) if url else TransactionStore.in_state_dir(state_dir)


@bank_cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--columns", default="", metavar="FIELD=COLUMN,...",
              help="Your column names for the canonical fields, where they differ.")
@click.option("--retention-days", type=click.IntRange(min=1), default=400, show_default=True,
              help="Then delete transactions older than this many days before the newest.")
@_state_dir_option
@_store_option
@readable_errors
def ingest(path: Path, columns: str, retention_days: int, state_dir: Path, store_url: str | None) -> None:
    """Load a file of transactions (Parquet or CSV; labels optional) into the node's store.

    A file ingested before adds nothing; a file that fails validation changes nothing."""
    from bank_node.data import load_transactions
    from bank_node.store import file_sha256
    from schemas.transaction import parse_column_mapping

    frame = load_transactions(path, parse_column_mapping(columns)).frame
    store = _open_store(state_dir, store_url)
    try:
        result = store.ingest(frame, name=str(path), sha256=file_sha256(path), retention_days=retention_days)
        summary = store.summary()
    finally:
        store.close()
    if result.file_seen_before:
        click.echo(f"{path}: ingested before; nothing added")
    else:
        click.echo(f"{path}: {result.added} transactions added, {result.already_stored} already stored, "
                   f"{result.deleted_by_retention} removed by retention")
    click.echo(f"store: {summary['transactions']} transactions ({summary['labelled']} labelled) "
               f"from {summary['first']} to {summary['last']}")


@bank_cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--columns", default="", metavar="FIELD=COLUMN,...",
              help="Your column names for transaction_id and label, where they differ.")
@click.option("--skip-unknown", is_flag=True, help="Ignore labels of transactions the store does not hold.")
@_state_dir_option
@_store_option
@readable_errors
def labels(path: Path, columns: str, skip_unknown: bool, state_dir: Path, store_url: str | None) -> None:
    """Record confirmed outcomes (transaction_id, label: 1 fraud, 0 genuine) that arrived later."""
    from bank_node.data import load_labels
    from bank_node.store import file_sha256
    from schemas.transaction import parse_column_mapping

    frame = load_labels(path, parse_column_mapping(columns))
    store = _open_store(state_dir, store_url)
    try:
        result = store.record_labels(frame, name=str(path), sha256=file_sha256(path), skip_unknown=skip_unknown)
    finally:
        store.close()
    if result.file_seen_before:
        click.echo(f"{path}: this file's labels were recorded before (same SHA-256): nothing changed; to set labels "
                   "again after a correction, give them in a new file")
        return
    click.echo(f"{path}: {result.updated} labels recorded, {result.unchanged} unchanged, {result.unknown} skipped")


@bank_cli.command()
@_state_dir_option
@readable_errors
def fingerprint(state_dir: Path) -> None:
    """Print this bank's key fingerprint, to read out to the other banks over a trusted channel."""
    from bank_node.agent.identity import load_identity
    from bank_node.agent.state import StateDir

    state = StateDir(state_dir)
    identity = load_identity(state, state.load_config().bank_id)
    click.echo(f"{identity.bank_id}  {identity.fingerprint}")


def _fingerprints(values: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for value in values:
        bank_id, sep, expected = value.partition("=")
        if not sep or not bank_id.strip() or not expected.strip():
            raise click.BadParameter(f"expected BANK_ID=FINGERPRINT, got {value!r}", param_hint="--member")
        pairs[bank_id.strip()] = expected
    return pairs


_member_option = click.option(
    "--member", "members", multiple=True, metavar="BANK_ID=FINGERPRINT",
    help="A bank the roster adds, with the fingerprint its staff read out to yours (repeat).",
)


@bank_cli.group()
def roster() -> None:
    """The membership this bank pins: propose, approve and show rosters."""


@roster.command(name="propose")
@_state_dir_option
@_url_option(required=False)
@_member_option
@click.option("--remove", multiple=True, metavar="BANK_ID", help="A member to remove (repeat); the key then rotates.")
@readable_errors
def roster_propose(state_dir: Path, url: str | None, members: tuple[str, ...], remove: tuple[str, ...]) -> None:
    """Propose the next roster (the first: this bank and every --member) and sign it."""
    from bank_node.agent.identity import load_identity
    from bank_node.agent.membership import load_pinned, propose_roster
    from bank_node.agent.state import StateDir

    state = StateDir(state_dir)
    client, config = _client(state, url)
    with closing(client):
        proposed = propose_roster(client, load_identity(state, config.bank_id), state,
                                  add=_fingerprints(members), remove=remove)
    pinned = load_pinned(state)
    click.echo(f"roster version {proposed.version} proposed: {proposed.digest}")
    click.echo(f"members: {', '.join(proposed.bank_ids)}")
    if pinned is None or pinned.roster.digest != proposed.digest:
        click.echo("not pinned yet: the other banks approve it with `fedfraud bank roster approve "
                   f"{proposed.digest[:16]} --member ...`")


@roster.command(name="approve")
@_state_dir_option
@_url_option(required=False)
@click.argument("digest")
@_member_option
@readable_errors
def roster_approve(state_dir: Path, url: str | None, digest: str, members: tuple[str, ...]) -> None:
    """Sign the relayed roster DIGEST after checking every key it adds against its fingerprint."""
    from bank_node.agent.identity import load_identity
    from bank_node.agent.membership import approve_roster, load_pinned
    from bank_node.agent.state import StateDir

    state = StateDir(state_dir)
    client, config = _client(state, url)
    with closing(client):
        approved = approve_roster(client, load_identity(state, config.bank_id), state, digest=digest,
                                  fingerprints=_fingerprints(members))
    pinned = load_pinned(state)
    status = "pinned" if pinned and pinned.roster.digest == approved.digest else "signed; waiting for more signatures"
    click.echo(f"roster version {approved.version} {status}: {', '.join(approved.bank_ids)}")


@roster.command(name="show")
@_state_dir_option
@_url_option(required=False)
@readable_errors
def roster_show(state_dir: Path, url: str | None) -> None:
    """Pin what the members signed since, then show the pinned roster and pending candidates."""
    from bank_node.agent.identity import load_identity
    from bank_node.agent.membership import sync_roster
    from bank_node.agent.state import StateDir

    state = StateDir(state_dir)
    client, config = _client(state, url)
    with closing(client):
        pinned = sync_roster(client, load_identity(state, config.bank_id), state)
        since = pinned.roster.version if pinned else 0
        pending = client.list_rosters(since=since)
    if pinned is None:
        click.echo("no roster pinned yet")
    else:
        click.echo(f"pinned roster version {pinned.roster.version} ({pinned.roster.digest[:16]}):")
        for member in pinned.roster.members:
            click.echo(f"  {member.bank_id:<24} {member.fingerprint}")
    for candidate in pending:
        signers = ", ".join(sorted(candidate.signatures)) or "nobody"
        click.echo(f"candidate version {candidate.version} {candidate.digest[:16]}: signed by {signers}")


@bank_cli.command()
@click.option("--data", "data_path", type=click.Path(path_type=Path), default=None,
              help="This bank's transactions with fraud labels (Parquet or CSV; with --dask a Parquet file or folder "
                   "of Parquet files); default: the node's store (`fedfraud bank ingest`).")
@click.option("--columns", default="", metavar="FIELD=COLUMN,...",
              help="Your column names for the canonical fields, where they differ.")
@click.option("--train-start", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="First training day (YYYY-MM-DD) of runs that carry no window (each run's own window wins).")
@click.option("--train-days", type=click.IntRange(min=1), default=7, show_default=True,
              help="Days of training data.")
@_state_dir_option
@_store_option
@_url_option(required=False)
@click.option("--once", is_flag=True, help="Take part in the runs open now, then exit.")
@click.option("--poll-interval", "poll_interval_s", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds between looks at the open runs.")
@click.option("--round-wait", "round_wait_s", type=click.FloatRange(min=1), default=None,
              help="Longest wait for one round's sum (default: the run's round timeout + 2 minutes).")
@click.option("--ledger-key", default=None, metavar="BASE64",
              help="The consortium's ledger public key, as read out of band; pinned if none is, refused if another "
                   "is (default: pinned the first time the ledger is read).")
@click.option("--without-ledger", is_flag=True,
              help="Take part with a consortium that keeps no contribution ledger (no checkpoint is watched, no "
                   "receipt kept). By default the agent stops when it cannot watch the ledger.")
@click.option("--dp-budget", "dp_budget", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="EPSILON",
              help="This bank's differential-privacy budget: the epsilon its transactions may spend over "
                   "--dp-budget-days, composed over its private runs. With it the agent takes part only in private "
                   "runs (params dp_epsilon) that keep the spend within it, and tells the consortium why otherwise.")
@click.option("--dp-budget-delta", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=1e-5,
              show_default=True, help="The delta the budget's epsilon is stated at.")
@click.option("--dp-budget-days", type=click.IntRange(min=1), default=30, show_default=True,
              help="The rolling period the budget covers.")
@click.option("--metrics-port", type=click.IntRange(min=1, max=65535), default=None, metavar="PORT",
              help="Serve Prometheus metrics on 127.0.0.1:PORT (polls, runs by outcome, contributions and bytes "
                   "sent, the model version followed, the privacy spend).")
@dask_options("Feature and train on Dask, for a history larger than memory: --data a Parquet file or folder of "
              "Parquet files, its rows kept on the cluster's workers")
@_development_option
@readable_errors
def agent(data_path: Path | None, columns: str, train_start: datetime | None, train_days: int, state_dir: Path,
          store_url: str | None, url: str | None, once: bool, poll_interval_s: float, round_wait_s: float | None,
          ledger_key: str | None, without_ledger: bool, dp_budget: float | None, dp_budget_delta: float,
          dp_budget_days: int, metrics_port: int | None, on_dask: bool, dask_scheduler: str | None, dask_workers: int,
          development: bool) -> None:
    """Poll the consortium for training runs and take part in them, on each run's window of the
    node's store (or of --data)."""
    on_dask = on_dask or dask_scheduler is not None
    if on_dask and data_path is None:
        raise click.UsageError("--dask trains on --data (a Parquet file or folder), not on the node's store")
    if data_path is not None and data_path.is_dir() and not on_dask:
        raise click.UsageError(f"--data {data_path} is a folder: a folder of Parquet files is trained on with --dask")
    from bank_node.agent.ceremony import check_consortium_key, load_secret_scheme
    from bank_node.agent.errors import ConsortiumError
    from bank_node.agent.identity import load_identity
    from bank_node.agent.privacy_budget import PrivacyBudget
    from bank_node.agent.runner import FAILED, AgentSettings, BankAgent
    from bank_node.agent.state import StateDir
    from bank_node.agent.training import DaskSource, StoreSource, TransactionSource
    from bank_node.terminal_history import PooledHistory
    from schemas.errors import FedfraudInputError
    from schemas.transaction import parse_column_mapping

    state = StateDir(state_dir)
    budget = None if dp_budget is None else PrivacyBudget(dp_budget, dp_budget_delta, dp_budget_days)
    client, config = _client(state, url)
    identity = load_identity(state, config.bank_id)
    start = None if train_start is None else date.fromordinal(train_start.toordinal())
    source: Any
    if data_path is not None:
        mapping = parse_column_mapping(columns)
        if on_dask:
            from bank_node.scale import dask_client

            where = f"the Dask cluster at {dask_scheduler}" if dask_scheduler else f"{dask_workers} local Dask workers"
            click.echo(f"bank {config.bank_id}: featuring and training on {where}", err=True)
            dask = click.get_current_context().with_resource(dask_client(dask_scheduler, n_workers=dask_workers))
            source = DaskSource(data_path, dask, train_start=start, train_days=train_days, mapping=mapping)
            source.check()  # unreadable files or missing fields are reported now (each run reads the rows)
        else:
            source = TransactionSource(data_path, train_start=start, train_days=train_days, mapping=mapping)
            if start is not None:
                source.rows()  # bad data is reported now, not at the first run
        terminal_history = PooledHistory.in_state_dir(state_dir)
    else:
        store = _open_store(state_dir, store_url)
        source = StoreSource(store, train_start=start, train_days=train_days)
        terminal_history = PooledHistory(store.engine)
    with closing(client):
        while True:  # a long-running agent waits for a consortium that is down (maintenance, restart)
            try:
                check_consortium_key(client, identity, state, load_secret_scheme(state))
                break
            except ConsortiumError as exc:
                if once or not exc.retryable:
                    raise
                pause = max(poll_interval_s, 5.0)
                click.echo(f"bank {config.bank_id}: the consortium is not reachable now ({exc.message}); "
                           f"trying again in {pause:g}s", err=True)
                time.sleep(pause)
        metrics = None
        if metrics_port is not None:
            from bank_node.agent.metrics import AgentMetrics

            metrics = AgentMetrics()
            try:
                metrics.serve(metrics_port)
            except OSError as exc:
                raise FedfraudInputError(f"--metrics-port {metrics_port}: cannot listen on 127.0.0.1 ({exc.strerror})",
                                         {"metrics_port": [str(exc.strerror)]}) from None
        node = BankAgent(
            client=client, identity=identity, state=state, training_rows=source.rows,
            transactions=source.transactions, terminal_history=terminal_history,
            settings=AgentSettings(poll_interval_s=poll_interval_s, round_wait_s=round_wait_s, development=development,
                                   require_ledger=not without_ledger, privacy_budget=budget),
            metrics=metrics,
        )
        if ledger_key is not None:
            from crypto.signing import b64decode_key

            b64decode_key(ledger_key, what="--ledger-key")
            node.ledger.pin(ledger_key, origin="")
        if not once:
            click.echo(f"bank {config.bank_id}: polling {client.base_url} every {poll_interval_s:g}s", err=True)
            node.run_forever()
            return
        outcomes = node.run_once()
    for outcome in outcomes:
        click.echo(f"{outcome.run_id}: {outcome.status}: {outcome.message}")
    if not outcomes:
        click.echo("no open run for this bank")
    if any(o.status == FAILED for o in outcomes):
        raise click.exceptions.Exit(1)



@bank_cli.command("create-token")
@click.option("--role", type=click.Choice(["scorer", "admin"]), required=True,
              help="scorer: the risk team's systems (score, read the model); admin: also record labels.")
@_state_dir_option
@_store_option
@readable_errors
def create_token(role: str, state_dir: Path, store_url: str | None) -> None:
    """Issue a token for the node's scoring service (printed once; only its hash is kept)."""
    from bank_node.service.auth import issue_token

    store = _open_store(state_dir, store_url)
    try:
        click.echo(issue_token(store.engine, role))
    finally:
        store.close()


@bank_cli.command()
@_state_dir_option
@_store_option
@readable_errors
def tokens(state_dir: Path, store_url: str | None) -> None:
    """List the scoring service's tokens in force (ids, roles, when issued; never the tokens)."""
    from bank_node.service.auth import list_tokens

    store = _open_store(state_dir, store_url)
    try:
        for token in list_tokens(store.engine):
            click.echo(f"{token['id']}  {token['role']:<6}  issued {token['created_at']:%Y-%m-%d %H:%M:%S}")
    finally:
        store.close()


@bank_cli.command("revoke-token")
@click.argument("token_id")
@_state_dir_option
@_store_option
@readable_errors
def revoke_token_command(token_id: str, state_dir: Path, store_url: str | None) -> None:
    """Revoke the scoring-service token TOKEN_ID (as `fedfraud bank tokens` lists it); every
    service process refuses it within 10 s."""
    from bank_node.service.auth import revoke_token

    store = _open_store(state_dir, store_url)
    try:
        role = revoke_token(store.engine, token_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    click.echo(f"revoked the {role} token {token_id}")


@bank_cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8081, show_default=True, type=int, help="TCP port.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Fraud probability from which a transaction is flagged 'alert'.")
@click.option("--model-reload", "reload_s", type=click.FloatRange(min=0.05), default=30.0, show_default=True,
              help="Seconds between two looks for a newly promoted model.")
@_state_dir_option
@_store_option
@readable_errors
def serve(host: str, port: int, threshold: float, reload_s: float, state_dir: Path, store_url: str | None) -> None:
    """Run the risk team's scoring service on werkzeug's server (development; gunicorn in production)."""
    from werkzeug.serving import run_simple

    from bank_node.service.app import create_app

    app = create_app(state_dir, store_url=store_url, config={"DECISION_THRESHOLD": threshold,
                                                              "MODEL_RELOAD_S": reload_s}, watch=True)
    serving = app.extensions["fedfraud_scoring"].holder.serving
    click.echo(f"scoring on http://{host}:{port} with model {serving.model.version if serving else '(none yet)'}",
               err=True)
    run_simple(host, port, app, threaded=True, use_reloader=False)
