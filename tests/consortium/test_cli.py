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
