"""``fedfraud consortium`` commands: init-db, create-token, enrol-bank."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from consortium.app import create_app
from consortium.cli import consortium_cli


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
    listed = client.get("/v1/banks", headers={"Authorization": f"Bearer {operator.output.strip()}"})
    assert listed.status_code == 200 and listed.get_json()[0]["name"] == "First Bank"
    mine = client.get("/v1/banks", headers={"Authorization": f"Bearer {bank.output.strip()}"})
    assert mine.status_code == 200


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
