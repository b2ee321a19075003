"""Backup, then restore into an empty database: the restored consortium verifies its ledger and
carries on the run it was in the middle of."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from flask import Flask

import crypto
from consortium.app import create_app
from consortium.backup import BackupError, backup, read_manifest, restore
from consortium.storage.database import Database, make_engine
from tests.consortium.conftest import PG_ENV, bearer, pg_schema


@contextmanager
def empty_database_like(url: str, folder: Path) -> Iterator[str]:
    """Another empty database of the same kind as ``url``."""
    if url.startswith("sqlite"):
        yield f"sqlite:///{folder / 'restored.db'}"
        return
    with pg_schema(os.environ[PG_ENV], prefix="r") as restored:
        yield restored


def locations(app: Flask) -> tuple[Any, Path, Path]:
    from consortium.ledger import key_path

    return (Database.engine_for(app), Path(app.config["BLOB_DIR"]),
            key_path(app.config.get("LEDGER_KEY_FILE"), app.config["BLOB_DIR"]))


def test_a_restored_consortium_verifies_its_ledger_and_carries_on_the_run(
    app: Flask, app_config: dict[str, Any], consortium: Any, he_key: crypto.HEScheme, compliance_token: str,
    tmp_path: Path,
) -> None:
    run_id = consortium.open_run()["run_id"]
    for i, bank in enumerate(consortium.banks.values()):
        assert bank.contribute(run_id, "r1", he_key.encrypt(np.full(6, float(i + 1)))).status_code == 201
    first_sum = consortium.bank("bank-1").aggregate(run_id, "r1")
    assert first_sum.status_code == 200
    with app.app_context():  # the key rotated mid-run, before the backup: the backup holds the new key
        from consortium.ledger import rotate_key
        from consortium.storage.database import db

        _, rotated = rotate_key(db.session)
    before = consortium.client.get("/v1/ledger/verification", headers=bearer(compliance_token)).get_json()
    assert before["ok"]

    folder = tmp_path / "backup"
    manifest = backup(*locations(app), folder)
    assert manifest.ledger_size == before["size"] and manifest.blobs > 0
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert oct((folder / "ledger-signing.key").stat().st_mode & 0o777) == "0o600"
    # After the backup the live consortium goes on: none of it is in the backup.
    bank = consortium.bank("bank-1")
    assert bank.contribute(run_id, "r2", he_key.encrypt(np.full(6, 9.0))).status_code == 201

    target = tmp_path / "restored"
    target.mkdir()
    with empty_database_like(app_config["DATABASE_URL"], target) as url:
        engine = make_engine(url)
        restore(engine, target / "blobs", target / "ledger-signing.key", folder)
        engine.dispose()
        restored = create_app({**app_config, "DATABASE_URL": url, "BLOB_DIR": str(target / "blobs")})
        client = restored.test_client()
        try:
            after = client.get("/v1/ledger/verification", headers=bearer(compliance_token)).get_json()
            assert after["ok"] and after["size"] == before["size"]
            # The released sum is served from the restored blobs, byte for byte.
            again = client.get(f"/v1/runs/{run_id}/aggregates/r1", headers=bank.auth)
            assert again.status_code == 200 and again.data == first_sum.data
            # The run carries on: r2 as if bank-1's later upload never happened, then released.
            for i, member in enumerate(consortium.banks.values()):
                member.client = client
                payload = he_key.encrypt(np.full(6, float(10 + i)))
                assert member.contribute(run_id, "r2", payload).status_code == 201
            released = consortium.bank("bank-2").aggregate(run_id, "r2")
            assert released.status_code == 200
            np.testing.assert_allclose(he_key.decrypt(released.data)[:6], np.full(6, 33.0), atol=1e-3)
            # New rows get new ids (PostgreSQL's sequences were moved past the restored ones).
            assert client.post("/v1/runs", json={"model": "xgboost", "params": {}},
                               headers=bearer(consortium.operator)).status_code == 201
            final = client.get("/v1/ledger/verification", headers=bearer(compliance_token)).get_json()
            assert final["ok"] and final["size"] > after["size"]
            assert final["checkpoint"] is not None
            assert client.get("/v1/ledger/key", headers=bearer(compliance_token)).get_json()["public_key"] == rotated
        finally:
            Database.engine_for(restored).dispose()

        # Never into a consortium that has state: the key, blobs and rows stay as they are.
        engine = make_engine(url)
        with pytest.raises(BackupError, match="signing key exists"):
            restore(engine, target / "blobs", target / "ledger-signing.key", folder)
        (target / "moved.key").write_bytes((target / "ledger-signing.key").read_bytes())
        (target / "ledger-signing.key").unlink()
        with pytest.raises(BackupError, match="blob store .* is not empty"):
            restore(engine, target / "blobs", target / "ledger-signing.key", folder)
        with pytest.raises(BackupError, match="database is not empty"):
            restore(engine, target / "no-blobs", target / "ledger-signing.key", folder)
        engine.dispose()


def test_a_damaged_or_foreign_backup_is_refused_before_anything_is_written(
    app: Flask, consortium: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "backup"
    backup(*locations(app), folder)
    with pytest.raises(BackupError, match="not empty"):
        backup(*locations(app), folder)
    tokens = folder / "db" / "tokens.jsonl.gz"
    with gzip.open(tokens, "at") as stream:
        stream.write('{"id": 999}\n')
    with pytest.raises(BackupError, match="tokens.jsonl.gz is missing or damaged"):
        read_manifest(folder)
    with pytest.raises(BackupError, match="no manifest.json"):
        read_manifest(tmp_path)
    target = tmp_path / "target"
    engine = make_engine(f"sqlite:///{tmp_path / 'target.db'}")
    with pytest.raises(BackupError, match="damaged"):
        restore(engine, target / "blobs", target / "ledger-signing.key", folder)
    engine.dispose()
    assert not (target / "ledger-signing.key").exists()


def test_the_cli_backs_up_and_restores_with_readable_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from consortium.cli import consortium_cli

    def use(name: str) -> None:
        monkeypatch.setenv("FEDFRAUD_DATABASE_URL", f"sqlite:///{tmp_path / name / 'c.db'}")
        monkeypatch.setenv("FEDFRAUD_BLOB_DIR", str(tmp_path / name / "blobs"))
        (tmp_path / name).mkdir(exist_ok=True)

    runner = CliRunner()
    use("live")
    assert runner.invoke(consortium_cli, ["init-db"]).exit_code == 0
    assert runner.invoke(consortium_cli, ["enrol-bank", "bank-1", "First"]).exit_code == 0
    done = runner.invoke(consortium_cli, ["backup", str(tmp_path / "b")])
    assert done.exit_code == 0, done.output
    assert "backup written" in done.output
    use("new")
    done = runner.invoke(consortium_cli, ["restore", str(tmp_path / "b")])
    assert done.exit_code == 0, done.output
    assert "verified" in done.output
    again = runner.invoke(consortium_cli, ["restore", str(tmp_path / "b")])
    assert again.exit_code != 0 and "signing key exists" in again.output and "Traceback" not in again.output
    missing = runner.invoke(consortium_cli, ["restore", str(tmp_path)])
    assert missing.exit_code != 0 and "not a consortium backup" in missing.output


def test_a_backup_takes_the_key_that_signs_the_log_even_mid_rotation(
    app: Flask, app_config: dict[str, Any], consortium: Any, compliance_token: str, tmp_path: Path
) -> None:
    """A backup taken between a rotation's commit and the new key's move into the key file holds
    the new key (staged beside the file), so the restored consortium signs on; a key file that
    holds no key of the log is refused rather than backed up."""
    from consortium.ledger import rotate_key, staged_key_path
    from consortium.storage.database import db

    engine, blob_dir, key_file = locations(app)
    old = key_file.read_bytes()
    with app.app_context():
        rotate_key(db.session)
    new = key_file.read_bytes()
    staged_key_path(key_file).write_bytes(new)  # as if the process stopped before moving it in
    key_file.write_bytes(old)
    manifest = backup(engine, blob_dir, key_file, tmp_path / "backup")
    assert (tmp_path / "backup" / manifest.document["key_file"]).read_bytes() == new

    target = tmp_path / "restored"
    target.mkdir()
    with empty_database_like(app_config["DATABASE_URL"], target) as url:
        restored_engine = make_engine(url)
        restore(restored_engine, target / "blobs", target / "ledger-signing.key", tmp_path / "backup")
        restored_engine.dispose()
        restored = create_app({**app_config, "DATABASE_URL": url, "BLOB_DIR": str(target / "blobs")})
        try:
            client = restored.test_client()
            assert client.post("/v1/runs", json={"model": "xgboost", "params": {}},
                               headers=bearer(consortium.operator)).status_code == 201  # signs on
            assert client.get("/v1/ledger/verification", headers=bearer(compliance_token)).get_json()["ok"]
        finally:
            Database.engine_for(restored).dispose()

    staged_key_path(key_file).unlink()
    with pytest.raises(BackupError, match="which no key file"):
        backup(engine, blob_dir, key_file, tmp_path / "second")
