"""``fedfraud consortium`` commands: init-db, create-token, tokens, revoke-token, enrol-bank."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from consortium import ledger
from consortium.app import create_app
from consortium.cli import consortium_cli
from consortium.storage.database import db
from consortium.storage.models import LedgerEntry
from schemas.ledger import parse_entry


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("FEDFRAUD_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("FEDFRAUD_BLOB_DIR", str(tmp_path / "blobs"))
    return {}


def test_init_db_then_tokens_that_work(env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    init = runner.invoke(consortium_cli, ["init-db"])
    assert init.exit_code == 0, init.output
    assert "database ready" in init.output
    operator = runner.invoke(consortium_cli, ["create-token", "--role", "operator"])
    assert operator.exit_code == 0, operator.output
    bank = runner.invoke(consortium_cli, ["enrol-bank", "bank-1", "First Bank"])
    assert bank.exit_code == 0, bank.output
    client = create_app({"TESTING": True}).test_client()
    listed = client.get("/v1/banks", headers={"Authorization": f"Bearer {operator.stdout.strip()}"})
    assert listed.status_code == 200 and listed.get_json()[0]["name"] == "First Bank"
    mine = client.get("/v1/banks", headers={"Authorization": f"Bearer {bank.stdout.strip()}"})
    assert mine.status_code == 200


def test_a_revoked_token_is_refused_everywhere_and_recorded_in_the_ledger(env: dict[str, str]) -> None:
    runner = CliRunner()
    assert runner.invoke(consortium_cli, ["init-db"]).exit_code == 0
    operator = runner.invoke(consortium_cli, ["create-token", "--role", "operator"])
    compliance = runner.invoke(consortium_cli, ["create-token", "--role", "compliance"])
    bank = runner.invoke(consortium_cli, ["enrol-bank", "bank-1", "First Bank"])
    assert "revoke it with: fedfraud consortium revoke-token 1" in operator.stderr
    tokens = {"operator": operator.stdout.strip(), "compliance": compliance.stdout.strip(), "bank": bank.stdout.strip()}
    listed = runner.invoke(consortium_cli, ["tokens"])
    assert listed.exit_code == 0, listed.output
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("1", "operator", "-"), ("2", "compliance", "-"),
                                                  ("3", "bank", "bank-1")]
    assert all(r[-1] == "-" for r in rows)  # none revoked yet
    assert not any(token in listed.output for token in tokens.values())

    app = create_app({"TESTING": True})
    client = app.test_client()
    pages = app.test_client()
    form = pages.get("/compliance/sign-in").get_data(as_text=True)
    csrf = form.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    pages.post("/compliance/sign-in", data={"token": tokens["compliance"], "csrf_token": csrf})
    assert pages.get("/compliance/ledger").status_code == 200

    for token_id in ("1", "2"):
        revoked = runner.invoke(consortium_cli, ["revoke-token", token_id])
        assert revoked.exit_code == 0 and "revoked" in revoked.stdout, revoked.output
    refused = client.get("/v1/banks", headers={"Authorization": f"Bearer {tokens['operator']}"})
    assert refused.status_code == 401 and "revoked" in refused.get_json()["message"]
    assert client.get("/v1/banks", headers={"Authorization": f"Bearer {tokens['bank']}"}).status_code == 200
    ended = pages.get("/compliance/ledger")
    assert ended.status_code == 302 and "/compliance/sign-in" in ended.headers["Location"]
    listed = runner.invoke(consortium_cli, ["tokens"]).stdout.splitlines()[1:]
    assert [line.split()[-1] != "-" for line in listed] == [True, True, False]

    again = runner.invoke(consortium_cli, ["revoke-token", "1"])
    assert again.exit_code == 1 and "token 1 was revoked already" in again.output and "Traceback" not in again.output
    unknown = runner.invoke(consortium_cli, ["revoke-token", "99"])
    assert unknown.exit_code == 1 and "no token has id 99" in unknown.output
    assert runner.invoke(consortium_cli, ["revoke-token", "one"]).exit_code == 2

    with app.app_context():
        entries = [parse_entry(row.body) for row in db.session.query(LedgerEntry).order_by(LedgerEntry.seq)]
        assert ledger.verify_database(db.session).ok
    revocations = [e for e in entries if e["event"] == "token.revoked"]
    assert [(e["details"]["token_id"], e["details"]["role"]) for e in revocations] == [(1, "operator"),
                                                                                       (2, "compliance")]


def test_cli_errors_are_one_readable_line(env: dict[str, str]) -> None:
    runner = CliRunner()
    runner.invoke(consortium_cli, ["enrol-bank", "bank-1", "A"])
    again = runner.invoke(consortium_cli, ["enrol-bank", "bank-1", "A"])
    assert again.exit_code == 1 and "already enrolled" in again.output and "Traceback" not in again.output
    bad = runner.invoke(consortium_cli, ["enrol-bank", "Bank One", "A"])
    assert bad.exit_code == 2
    role = runner.invoke(consortium_cli, ["create-token", "--role", "bank"])
    assert role.exit_code == 2


def test_settings_come_from_the_environment(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFRAUD_DEFAULT_MIN_BANKS", "4")
    monkeypatch.setenv("FEDFRAUD_AUTO_MIGRATE", "false")
    app = create_app({"SWEEP_INTERVAL_S": 5})
    assert app.config["DEFAULT_MIN_BANKS"] == 4 and app.config["SWEEP_INTERVAL_S"] == 5
    assert app.config["AUTO_MIGRATE"] is False
    monkeypatch.setenv("FEDFRAUD_DEFAULT_MIN_BANKS", "many")
    with pytest.raises(ValueError, match="FEDFRAUD_DEFAULT_MIN_BANKS"):
        create_app()


def test_schedule_is_shown_and_changed_from_the_command_line(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDFRAUD_TIME_ZONE", "Europe/Brussels")
    runner = CliRunner()
    shown = runner.invoke(consortium_cli, ["schedule", "show"])
    assert shown.exit_code == 0, shown.output
    assert "xgboost  on  cron '0 2 * * *' (Europe/Brussels)" in shown.output and "logreg   off" in shown.output
    changed = runner.invoke(consortium_cli, ["schedule", "set", "logreg", "--enable", "--cron", "30 1 * * 1-5",
                                             "--params", '{"max_rounds": 10}'])
    assert changed.exit_code == 0, changed.output
    assert "logreg   on  cron '30 1 * * 1-5'" in runner.invoke(consortium_cli, ["schedule", "show"]).output
    for args, words in (
        (["--cron", "99 1 * * *"], "invalid cron expression"),
        (["--params", '{"n_trees": 5}'], "params.n_trees"),
        (["--params", "{nope"], "not JSON"),
        ([], "nothing to change"),
    ):
        refused = runner.invoke(consortium_cli, ["schedule", "set", "logreg", *args])
        assert refused.exit_code != 0 and words in refused.output and "Traceback" not in refused.output, refused.output
