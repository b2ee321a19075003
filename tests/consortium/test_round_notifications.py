"""A change made by one worker process wakes the banks waiting in another at once (PostgreSQL's
notifications), instead of at their next periodic read."""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

import numpy as np
import pytest
from flask import Flask

import crypto
import consortium.api.runs as runs_api
from consortium.app import create_app
from consortium.extensions import close_resources
from consortium.storage.database import Database
from tests.consortium.conftest import Consortium


def test_a_release_in_another_worker_wakes_the_waiting_bank_at_once(
    app: Flask, app_config: dict[str, Any], consortium: Consortium, he_key: crypto.HEScheme, database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has no notifications: waiters in other processes read every LONG_POLL_INTERVAL_S")
    # Longer than the wait: only a notification can answer the waiting bank before its wait ends.
    monkeypatch.setattr(runs_api, "LONG_POLL_INTERVAL_S", 60.0)
    other = create_app(app_config)  # the app of a second gunicorn worker, on the same database
    try:
        run_id = consortium.open_run()["run_id"]
        vectors = [np.full(5, float(i + 1)) for i in range(3)]
        for bank_id, vector in zip(("bank-1", "bank-2"), vectors, strict=False):
            assert consortium.bank(bank_id).contribute(run_id, "r", he_key.encrypt(vector)).status_code == 201
        answered: dict[str, Any] = {}

        def wait() -> None:
            answered["response"] = consortium.client.get(f"/v1/runs/{run_id}/aggregates/r?wait=30",
                                                         headers=consortium.bank("bank-1").auth)
            answered["at"] = time.monotonic()

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(1.0)  # the waiter is waiting (and its process listening)
        last = dataclasses.replace(consortium.bank("bank-3"), client=other.test_client())
        assert last.contribute(run_id, "r", he_key.encrypt(vectors[2])).status_code == 201  # released there
        released_at = time.monotonic()
        waiter.join(40)
        response = answered["response"]
        assert response.status_code == 200
        np.testing.assert_allclose(he_key.decrypt(response.data), sum(vectors), atol=1e-3)
        # Woken by the other worker's notification, not at the end of its 30-second wait.
        assert answered["at"] - released_at < 10
    finally:
        close_resources(other)
        Database.engine_for(other).dispose()
