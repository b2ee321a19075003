"""The production configuration (ops/gunicorn.conf.py) serves the app with migrations applied."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import requests

from fedfraud.localnet import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]


def test_gunicorn_serves_the_consortium(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDFRAUD_")}
    env.update(
        FEDFRAUD_DATABASE_URL=f"sqlite:///{tmp_path / 'c.db'}",
        FEDFRAUD_BLOB_DIR=str(tmp_path / "blobs"),
        FEDFRAUD_BIND=f"127.0.0.1:{port}",
    )
    gunicorn = Path(sys.executable).with_name("gunicorn")
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([str(gunicorn), "-c", str(REPO / "ops" / "gunicorn.conf.py")], env=env, cwd=tmp_path,
                               stdout=log, stderr=log)
    try:

        def health() -> dict[str, str] | None:
            try:
                return dict(requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).json())
            except (requests.RequestException, ValueError):  # still booting: refused, reset or empty
                return None

        assert wait_for(health, 60, "gunicorn") == {"status": "ok", "database": "ok"}
        refused = requests.get(f"http://127.0.0.1:{port}/v1/runs", timeout=5)
        assert refused.status_code == 401 and refused.json()["code"] == 401
        assert requests.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).json()["openapi"].startswith("3.")
        odd = requests.get(f"http://127.0.0.1:{port}/v1/runs/a%22b%5Cc?q=1", timeout=5,
                           headers={"Authorization": "Bearer not-a-real-token-0123456789"})
        assert odd.status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    # The access log is one JSON object a line, even for a path with a quote and a backslash, and
    # never holds the Authorization header.
    text = (tmp_path / "gunicorn.log").read_text()
    access = [json.loads(line) for line in text.splitlines() if line.startswith('{"type": "access"')]
    assert {entry["path"] for entry in access} >= {"/v1/health", "/v1/runs", '/v1/runs/a"b\\c'}
    assert "not-a-real-token" not in text
