"""A large round is summed off the request that completed it, in pieces by several processes: the
bank's upload is answered before the sum is made, the banks waiting get the same bytes a single
thread makes, and a contribution damaged on disk stops the release whichever process checks it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

import crypto
from consortium.aggregation import Summer
from consortium.extensions import summer
from consortium.rounds import SUM_LEASE_S, sweep_expired
from consortium.storage.blobs import BlobStore
from consortium.storage.database import db
from consortium.storage.models import RoundRow
from tests.consortium.conftest import Consortium, set_up_consortium

N_BANKS = 5


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, "AGGREGATION_PROCESSES": 2, "AGGREGATION_BACKGROUND_MIN_BYTES": 0}


@pytest.fixture
def five(client: FlaskClient, operator_token: str, he_key: crypto.HEScheme, app: Flask) -> Iterator[Consortium]:
    yield set_up_consortium(client, operator_token, he_key, n_banks=N_BANKS)
    summer(app).close()


def _vectors(he_key: crypto.HEScheme) -> list[np.ndarray]:
    n_values = 3 * he_key.slot_count + 17  # four ciphertexts per contribution: two pieces of two
    rng = np.random.default_rng(7)
    return [rng.uniform(-1, 1, n_values) for _ in range(N_BANKS)]


def _waited_sum(client: FlaskClient, consortium: Consortium, run_id: str) -> Any:
    return client.get(f"/v1/runs/{run_id}/aggregates/r?wait=30", headers=consortium.bank("bank-1").auth)


def test_the_upload_is_answered_before_the_sum_and_the_sum_is_the_one_thread_sum(
    five: Consortium, client: FlaskClient, he_key: crypto.HEScheme, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run_id = five.open_run(min_banks=N_BANKS)["run_id"]
    payloads = [he_key.encrypt(vector) for vector in _vectors(he_key)]
    go_on = threading.Event()
    original = Summer.total
    calls = []

    def held(self: Summer, *args: Any, **kwargs: Any) -> Any:
        calls.append(threading.current_thread().name)
        assert go_on.wait(30), "the test never let the sum go on"
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Summer, "total", held)
    for bank, payload in zip(five.banks.values(), payloads, strict=True):
        answer = bank.contribute(run_id, "r", payload)
        assert answer.status_code == 201
    assert answer.get_json()["contributed"] == N_BANKS
    # Answered while the sum waits; reading the run (which settles complete rounds) starts no
    # second sum: the contribution that completed the round took the lease on it.
    assert five.run(run_id)["rounds"][0]["state"] == "open"
    with caplog.at_level(logging.INFO, logger="consortium.rounds"):
        go_on.set()
        released = _waited_sum(client, five, run_id)
    assert released.status_code == 200
    assert released.data == crypto.load_context(he_key.public_context(), require_public=True).aggregate(payloads)
    np.testing.assert_allclose(he_key.decrypt(released.data), np.sum(_vectors(he_key), axis=0), atol=1e-3)
    [summed] = [record for record in caplog.records if record.getMessage() == "round summed"]
    assert summed.pieces == 2 and summed.addends == N_BANKS  # type: ignore[attr-defined]
    assert len(calls) == 1 and calls[0].startswith("fedfraud-release")


def test_a_sum_left_by_a_process_that_died_is_handed_on_by_the_sweep_once_its_lease_ran_out(
    five: Consortium, client: FlaskClient, he_key: crypto.HEScheme, clock: Any, app: Flask,
) -> None:
    run_id = five.open_run(min_banks=N_BANKS, round_timeout_s=3600)["run_id"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Summer, "in_background", lambda self, task: None)  # the process dies before summing
        for bank, vector in zip(five.banks.values(), _vectors(he_key), strict=True):
            assert bank.contribute(run_id, "r", he_key.encrypt(vector)).status_code == 201
        assert five.run(run_id)["rounds"][0]["state"] == "open"  # leased: nobody else starts the sum
    assert sweep_expired(app) == 0 and five.run(run_id)["rounds"][0]["state"] == "open"
    clock.advance(SUM_LEASE_S + 1)
    sweep_expired(app)  # hands it on (the round is far from its deadline)
    released = _waited_sum(client, five, run_id)
    assert released.status_code == 200
    np.testing.assert_allclose(he_key.decrypt(released.data), np.sum(_vectors(he_key), axis=0), atol=1e-3)


def test_a_round_being_summed_past_its_deadline_takes_no_late_contribution(
    five: Consortium, he_key: crypto.HEScheme, clock: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At its deadline a round with a quorum is due: its sum is leased and handed to the background;
    a bank that comes late is refused, not folded into the sum being made."""
    run_id = five.open_run(min_banks=3, round_timeout_s=60)["run_id"]
    monkeypatch.setattr(Summer, "in_background", lambda self, task: None)  # the sum is slow to come
    banks = list(five.banks.values())
    for bank, vector in zip(banks[:3], _vectors(he_key), strict=False):
        assert bank.contribute(run_id, "r", he_key.encrypt(vector)).status_code == 201
    clock.advance(61)
    assert five.run(run_id)["rounds"][0]["state"] == "open"  # due, leased, handed off
    late = banks[3].contribute(run_id, "r", he_key.encrypt(_vectors(he_key)[3]))
    assert late.status_code == 409 and "passed its deadline" in late.get_json()["message"]
    assert five.run(run_id)["rounds"][0]["contributed"] == 3


def test_the_lease_is_taken_only_when_every_expected_bank_contributed(
    five: Consortium, client: FlaskClient, he_key: crypto.HEScheme, app: Flask,
) -> None:
    """A bank that contributed and then withdrew does not make the round complete: no lease is
    taken until the banks still expected all contributed (a stale lease would hold the round
    open past its deadline)."""
    run_id = five.open_run(min_banks=3)["run_id"]
    banks = sorted(five.banks.values(), key=lambda bank: bank.bank_id)
    vectors = _vectors(he_key)
    assert banks[0].contribute(run_id, "r", he_key.encrypt(vectors[0])).status_code == 201
    assert client.post(f"/v1/runs/{run_id}/withdrawals", json={"reason": "its store is being restored"},
                       headers=banks[0].auth).status_code == 200
    for bank, vector in zip(banks[1:4], vectors[1:4], strict=True):
        assert bank.contribute(run_id, "r", he_key.encrypt(vector)).status_code == 201

    def lease() -> Any:
        with app.app_context():
            return db.session.execute(select(RoundRow.summing_until).where(RoundRow.run_id == run_id)).scalar_one()

    assert lease() is None
    assert banks[4].contribute(run_id, "r", he_key.encrypt(vectors[4])).status_code == 201
    assert _waited_sum(client, five, run_id).status_code == 200
    assert lease() is None  # released: the lease is gone with it


def test_a_pool_whose_process_died_is_replaced(tmp_path: Path, he_key: crypto.HEScheme) -> None:
    """A pool process killed (out of memory, by an operator) breaks the pool for good in the standard
    library: the next sum starts a new one instead of failing every large round after."""
    store = BlobStore(tmp_path / "blobs")
    public = he_key.public_context()
    context = crypto.load_context(public, require_public=True)
    digests = [store.put(he_key.encrypt(vector)) for vector in _vectors(he_key)]
    summer = Summer(store, processes=2, background_min_bytes=0)
    try:
        arguments = dict(n_values=_vectors(he_key)[0].size, total_bytes=1, guard=contextlib.nullcontext())
        first, pieces = summer.total(context, store.put(public), digests, **arguments)
        assert pieces == 2
        pool = summer._pool
        assert pool is not None
        for process in list(pool._processes.values()):  # type: ignore[attr-defined]
            os.kill(process.pid, signal.SIGKILL)
        again, _ = summer.total(context, store.put(public), digests, **arguments)
        assert again == first and summer._pool is not pool
    finally:
        summer.close()


@pytest.mark.parametrize("damaged", [0, 1, 3])
def test_a_contribution_damaged_on_disk_stops_the_release_whichever_process_checks_it(
    five: Consortium, client: FlaskClient, he_key: crypto.HEScheme, app: Flask, damaged: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The files of a round are split between the processes for checking (0 falls to one
    process, 1 and 3 to the other): a damaged one is found whichever it is, and nothing is released."""
    run_id = five.open_run(min_banks=N_BANKS)["run_id"]
    banks = sorted(five.banks.values(), key=lambda bank: bank.bank_id)  # the order they are summed in
    digests = []
    for bank, vector in zip(banks, _vectors(he_key), strict=True):
        digests.append(bank.contribute(run_id, "r", he_key.encrypt(vector)).get_json()["digest"])
        if len(digests) == N_BANKS - 1:
            path = Path(app.config["BLOB_DIR"]) / digests[damaged][:2] / digests[damaged]
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x01  # inside a ciphertext: only the file's digest can tell
            path.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="consortium.aggregation"):
        summer(app).in_background(lambda: None).result(timeout=60)  # after the release attempt
    assert five.run(run_id)["rounds"][0]["state"] == "open"
    assert five.bank("bank-1").aggregate(run_id, "r").status_code == 202
    [failure] = [record for record in caplog.records if "release in the background failed" in record.getMessage()]
    assert failure.exc_info is not None and "does not match" in str(failure.exc_info[1])
    assert digests[damaged] in str(failure.exc_info[1])


def test_aggregation_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="AGGREGATION_PROCESSES"):
        Summer(None, processes=-1, background_min_bytes=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="AGGREGATION_BACKGROUND_MIN_BYTES"):
        Summer(None, processes=2, background_min_bytes=-5)  # type: ignore[arg-type]


def test_pool_processes_end_with_the_worker_that_started_them(tmp_path: Path) -> None:
    """A worker killed outright shuts nothing down: its pool processes must not live on (the
    standard library's would, idle, for ever)."""
    import subprocess
    import sys
    import time

    script = (
        "import os, sys, time\n"
        "from consortium.aggregation import Summer\n"
        "from consortium.storage.blobs import BlobStore\n"
        f"summer = Summer(BlobStore({str(tmp_path)!r}), processes=2, background_min_bytes=0)\n"
        "pool = summer._processes()\n"
        "[future.result() for future in [pool.submit(os.getpid) for _ in range(8)]]\n"
        "print(' '.join(str(pid) for pid in pool._processes), flush=True)\n"
        "time.sleep(120)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[2])
    try:
        assert worker.stdout is not None
        children = [int(pid) for pid in worker.stdout.readline().split()]
        assert len(children) == 2 and all(_alive(pid) for pid in children)
    finally:
        worker.kill()
        worker.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if _alive(pid)], "pool processes outlived their worker"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"
