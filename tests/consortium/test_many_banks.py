"""Fifty banks in one round: every contribution is summed, read from the blob store one chunk
position at a time through mapped files, and the sum is exact, whether the round is summed in the
request that completed it or off it by two processes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

import crypto
from consortium.extensions import summer
from consortium.storage.blobs import BlobCorruptError, BlobStore
from tests.consortium.conftest import set_up_consortium

N_BANKS = 50


@pytest.fixture(params=["in the request", "two processes"])
def app_config(app_config: dict[str, Any], request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "in the request":
        return app_config
    return {**app_config, "AGGREGATION_PROCESSES": 2, "AGGREGATION_BACKGROUND_MIN_BYTES": 0}


@pytest.fixture
def stop_summing(app: Flask) -> Iterator[None]:
    yield
    summer(app).close()


@pytest.mark.usefixtures("stop_summing")
def test_fifty_banks_contributions_are_summed_exactly(client: FlaskClient, operator_token: str,
                                                     he_key: crypto.HEScheme, app: Flask,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    consortium = set_up_consortium(client, operator_token, he_key, n_banks=N_BANKS)
    run_id = consortium.open_run(min_banks=N_BANKS)["run_id"]
    # Longer than a ciphertext's slots: several chunk positions, summed one after the other.
    n_values = 3 * he_key.slot_count + 17  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    vectors = [rng.uniform(-1, 1, n_values) for _ in range(N_BANKS)]
    with caplog.at_level(logging.INFO, logger="consortium.rounds"):
        for bank, vector in zip(consortium.banks.values(), vectors, strict=True):
            assert bank.contribute(run_id, "r", he_key.encrypt(vector)).status_code == 201
        released = client.get(f"/v1/runs/{run_id}/aggregates/r?wait=30", headers=consortium.bank("bank-17").auth)
    [summed] = [record for record in caplog.records if record.getMessage() == "round summed"]
    assert summed.pieces == (2 if app.config["AGGREGATION_PROCESSES"] == 2 else 1)  # type: ignore[attr-defined]
    assert released.status_code == 200
    np.testing.assert_allclose(he_key.decrypt(released.data)[:n_values], np.sum(vectors, axis=0), atol=1e-3)
    state = consortium.run(run_id)
    [summed] = [r for r in state["rounds"] if r["round_key"] == "r"]
    assert summed["state"] == "released" and summed["contributed"] == N_BANKS


def test_a_mapped_blob_is_checked_against_its_name(tmp_path: object) -> None:
    from pathlib import Path

    store = BlobStore(Path(str(tmp_path)) / "blobs")
    digest = store.put(b"x" * 10_000)
    with store.mapped(digest) as data:
        assert bytes(data[:3]) == b"xxx" and len(data) == 10_000
    path = Path(str(tmp_path)) / "blobs" / digest[:2] / digest
    path.write_bytes(b"y" * 10_000)
    try:
        with store.mapped(digest):
            raise AssertionError("a damaged blob was served")
    except BlobCorruptError as exc:
        assert "SHA-256 does not match" in str(exc)
