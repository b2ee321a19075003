"""Runs and rounds over HTTP: signed contributions, quorum, deadlines, refusals that store nothing."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient

import crypto
from consortium.app import create_app
from consortium.rounds import sweep_expired
from consortium.storage.database import Database
from crypto.signing import contribution_message, generate_bank_keys, note_message, sign
from tests.consortium.conftest import BINARY

N = 20


def vec(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1000, 1000, N)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_three_banks_contribute_and_every_bank_decrypts_the_sum(consortium: Any, he_key: crypto.HEScheme) -> None:
    run = consortium.open_run()
    assert run["state"] == "open" and run["participants"] == ["bank-1", "bank-2", "bank-3"]
    assert run["min_banks"] == 3
    key = "gbdt/tree-0/level-1"
    vectors = {bank_id: vec(i) for i, bank_id in enumerate(consortium.banks)}
    for index, (bank_id, bank) in enumerate(consortium.banks.items()):
        response = bank.contribute(run["run_id"], key, he_key.encrypt(vectors[bank_id]))
        assert response.status_code == 201, response.get_json()
        assert response.get_json()["contributed"] == index + 1
        if index < 2:
            pending = bank.aggregate(run["run_id"], key)
            assert pending.status_code == 202
            assert pending.get_json() == {"state": "open", "contributed": index + 1, "participants": 3}
    assert response.get_json()["state"] == "released"
    for bank in consortium.banks.values():
        released = bank.aggregate(run["run_id"], key)
        assert released.status_code == 200
        assert released.mimetype == "application/octet-stream"
        total = he_key.decrypt(released.data)
        np.testing.assert_allclose(total, sum(vectors.values()), atol=1e-3)
        assert crypto.read_header(released.data).n_addends == 3
    detail = consortium.run(run["run_id"])
    assert detail["rounds"][0]["state"] == "released"
    assert detail["rounds"][0]["contributors"] == ["bank-1", "bank-2", "bank-3"]


@pytest.mark.parametrize("keep", [False, True])
def test_individual_ciphertexts_are_deleted_once_summed_unless_kept(
    app_config: dict[str, Any], he_key: crypto.HEScheme, keep: bool
) -> None:
    from consortium.auth import issue_token
    from consortium.extensions import blob_store
    from consortium.storage.database import db
    from consortium.storage.models import Contribution
    from tests.consortium.conftest import set_up_consortium

    app = create_app({**app_config, "KEEP_CONTRIBUTION_BLOBS": keep})
    with app.app_context():
        operator = issue_token(db.session, "operator")
        db.session.commit()
    consortium = set_up_consortium(app.test_client(), operator, he_key)
    run_id = consortium.open_run()["run_id"]
    for i, bank in enumerate(consortium.banks.values()):
        assert bank.contribute(run_id, "r", he_key.encrypt(vec(i))).status_code == 201
    assert consortium.bank("bank-1").aggregate(run_id, "r").status_code == 200
    with app.app_context():
        rows = db.session.query(Contribution).all()
        assert len(rows) == 3
        assert [blob_store().exists(row.payload_digest) for row in rows] == [keep] * 3
        assert [row.payload_kept for row in rows] == [keep] * 3
    assert consortium.bank("bank-2").aggregate(run_id, "r").status_code == 200  # the sum itself stays


def test_two_of_three_with_the_deadline_passed_never_release_a_sum(
    consortium: Any, he_key: crypto.HEScheme, clock: Any, app: Flask
) -> None:
    run = consortium.open_run(round_timeout_s=60)
    run_id = run["run_id"]
    for bank_id in ("bank-1", "bank-2"):
        assert consortium.bank(bank_id).contribute(run_id, "r", he_key.encrypt(vec(1))).status_code == 201
    assert consortium.bank("bank-1").aggregate(run_id, "r").status_code == 202
    clock.advance(61)
    failed = consortium.bank("bank-1").aggregate(run_id, "r")
    assert failed.status_code == 409
    body = failed.get_json()
    assert body["state"] == "failed" and body["code"] == 409 and body["dropped"] == ["bank-3"]
    assert "quorum" in body["message"]
    detail = consortium.run(run_id)
    assert detail["state"] == "open"  # a round that fails fails alone
    assert "quorum" in detail["rounds"][0]["failure_reason"]
    assert detail["rounds"][0]["dropped"] == ["bank-3"]
    late = consortium.bank("bank-3").contribute(run_id, "r", he_key.encrypt(vec(1)))
    assert late.status_code == 409
    # The two refused-to-sum ciphertexts are gone; no aggregate was ever stored.
    with app.app_context():
        from consortium.extensions import blob_store
        from consortium.storage.database import db
        from consortium.storage.models import Contribution, RoundRow

        round_row = db.session.query(RoundRow).one()
        assert round_row.aggregate_digest is None
        rows = db.session.query(Contribution).all()
        assert len(rows) == 2
        for row in rows:
            assert not blob_store().exists(row.payload_digest)


def test_the_sweep_closes_expired_rounds_without_any_request(
    consortium4: Any, he_key: crypto.HEScheme, clock: Any, app: Flask
) -> None:
    consortium = consortium4
    run = consortium.open_run(min_banks=3, round_timeout_s=30)
    run_id = run["run_id"]
    for bank_id in ("bank-1", "bank-2", "bank-3"):
        consortium.bank(bank_id).contribute(run_id, "r", he_key.encrypt(vec(2)))
    assert sweep_expired(app) == 0
    clock.advance(31)
    assert sweep_expired(app) == 1
    detail = consortium.run(run_id)
    assert detail["state"] == "open"  # released with the quorum of 3
    assert detail["rounds"][0]["state"] == "released"
    assert detail["rounds"][0]["dropped"] == ["bank-4"]
    total = consortium.bank("bank-3").aggregate(run_id, "r")
    assert total.status_code == 200
    assert total.headers["X-Fedfraud-Contributors"] == "bank-1,bank-2,bank-3"
    np.testing.assert_allclose(he_key.decrypt(total.data), 3 * vec(2), atol=1e-3)


def test_sweep_once_from_the_command_line_closes_expired_rounds(
    consortium4: Any, he_key: crypto.HEScheme, app_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from consortium.cli import consortium_cli

    consortium = consortium4
    run_id = consortium.open_run(min_banks=3, round_timeout_s=30)["run_id"]
    for bank_id in ("bank-1", "bank-2", "bank-3"):
        consortium.bank(bank_id).contribute(run_id, "r", he_key.encrypt(vec(2)))
    # The command runs on the real clock, long after the test clock's deadline.
    monkeypatch.setenv("FEDFRAUD_DATABASE_URL", app_config["DATABASE_URL"])
    monkeypatch.setenv("FEDFRAUD_BLOB_DIR", app_config["BLOB_DIR"])
    swept = CliRunner().invoke(consortium_cli, ["sweep", "--once"])
    assert swept.exit_code == 0, swept.output
    assert "closed 1 expired round(s)" in swept.output
    assert consortium.run(run_id)["rounds"][0]["state"] == "released"


def test_replay_and_closed_round_are_409_and_store_nothing(
    consortium: Any, he_key: crypto.HEScheme, snapshot: Any
) -> None:
    run_id = consortium.open_run()["run_id"]
    one = consortium.bank("bank-1")
    assert one.contribute(run_id, "r", he_key.encrypt(vec(3))).status_code == 201
    before = snapshot()
    replay = one.contribute(run_id, "r", he_key.encrypt(vec(4)))
    assert replay.status_code == 409
    assert "already contributed" in replay.get_json()["message"]
    assert snapshot() == before
    for bank_id in ("bank-2", "bank-3"):
        consortium.bank(bank_id).contribute(run_id, "r", he_key.encrypt(vec(3)))
    before = snapshot()
    closed = one.contribute(run_id, "r", he_key.encrypt(vec(3)))
    assert closed.status_code == 409
    assert snapshot() == before


@pytest.mark.parametrize(
    "case",
    [
        "unknown-run",
        "not-participant",
        "operator",
        "unsigned",
        "bad-signature",
        "signed-for-another-round",
        "other-key",
        "truncated",
        "corrupted",
        "wrong-length",
        "already-a-sum",
        "plain-scheme",
        "json-body",
        "bad-round-key",
        "oversized",
    ],
)
def test_refused_contributions_store_nothing(
    consortium: Any,
    he_key: crypto.HEScheme,
    other_he_key: crypto.HEScheme,
    client: FlaskClient,
    app: Flask,
    snapshot: Any,
    bank_factory: Any,
    case: str,
) -> None:
    run_id = consortium.open_run()["run_id"]
    one = consortium.bank("bank-1")
    assert consortium.bank("bank-2").contribute(run_id, "r", he_key.encrypt(vec(5))).status_code == 201
    good = he_key.encrypt(vec(6))
    outsider = bank_factory(client, consortium.operator, "bank-9") if case == "not-participant" else None
    before = snapshot()
    if case == "unknown-run":
        response, status = one.contribute("run-nope", "r", good), 404
    elif case == "not-participant":
        assert outsider is not None and outsider.register_keys().status_code == 200
        response, status = outsider.contribute(run_id, "r", good), 403
    elif case == "operator":
        response = client.put(
            f"/v1/runs/{run_id}/contributions/r", data=good, headers=auth(consortium.operator),
            content_type="application/octet-stream",
        )
        status = 403
    elif case == "unsigned":
        response, status = one.contribute(run_id, "r", good, signed=False), 400
    elif case == "bad-signature":
        forged = sign(generate_bank_keys().signing, contribution_message(run_id, "r", "bank-1", good))
        response, status = one.contribute(run_id, "r", good, signature=forged), 400
    elif case == "signed-for-another-round":
        other_round = sign(one.keys.signing, contribution_message(run_id, "r2", "bank-1", good))
        response, status = one.contribute(run_id, "r", good, signature=other_round), 400
    elif case == "other-key":
        response, status = one.contribute(run_id, "r", other_he_key.encrypt(vec(6))), 422
    elif case == "truncated":
        response, status = one.contribute(run_id, "r", good[: len(good) // 2]), 422
    elif case == "corrupted":
        flipped = bytearray(good)
        flipped[-100] ^= 0x01
        response, status = one.contribute(run_id, "r", bytes(flipped)), 422
    elif case == "wrong-length":
        response, status = one.contribute(run_id, "r", he_key.encrypt(np.ones(N + 1))), 422
    elif case == "already-a-sum":
        response, status = one.contribute(run_id, "r", he_key.aggregate([good, he_key.encrypt(vec(7))])), 422
    elif case == "plain-scheme":
        response, status = one.contribute(run_id, "r", crypto.generate("plain").encrypt(vec(6))), 422
    elif case == "json-body":
        response, status = one.contribute(run_id, "r", b'{"a": 1}', content_type="application/json"), 415
    elif case == "bad-round-key":
        response, status = one.contribute(run_id, "Bad Key!", good), 422
    else:
        big = b"\x00" * (app.config["MAX_CONTENT_LENGTH"] + 1)
        response, status = one.contribute(run_id, "r", big), 413
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert {"code", "status", "message", "errors"} <= set(body)
    assert snapshot() == before
    # The bank can still contribute properly afterwards.
    if case not in {"unknown-run", "not-participant", "operator"}:
        assert one.contribute(run_id, "r", good).status_code == 201


def test_payload_errors_name_the_problem(consortium: Any, he_key: crypto.HEScheme, other_he_key: crypto.HEScheme) -> None:
    run_id = consortium.open_run()["run_id"]
    one = consortium.bank("bank-1")
    assert one.contribute(run_id, "r", he_key.encrypt(vec(1))).status_code == 201
    two = consortium.bank("bank-2")
    assert "key" in two.contribute(run_id, "r", other_he_key.encrypt(vec(1))).get_json()["message"]
    assert "truncated" in two.contribute(run_id, "r", he_key.encrypt(vec(1))[:100]).get_json()["message"]
    assert "expects 20" in two.contribute(run_id, "r", he_key.encrypt(np.ones(3))).get_json()["message"]


def test_unknown_run_and_round_are_404_and_roles_are_checked(
    consortium: Any, client: FlaskClient, compliance_token: str
) -> None:
    run_id = consortium.open_run()["run_id"]
    one = consortium.bank("bank-1")
    assert client.get("/v1/runs/run-nope", headers=one.auth).status_code == 404
    assert one.aggregate(run_id, "never-opened").status_code == 404
    assert one.aggregate("run-nope", "r").status_code == 404
    assert client.get(f"/v1/runs/{run_id}/aggregates/r", headers=auth(compliance_token)).status_code == 403
    assert client.post("/v1/runs", json={"model": "logreg"}, headers=one.auth).status_code == 403
    assert client.get(f"/v1/runs/{run_id}", headers=auth(compliance_token)).status_code == 200


def test_opening_runs_validates_participants_and_quorum(consortium: Any, client: FlaskClient, bank_factory: Any) -> None:
    headers = auth(consortium.operator)
    unknown = client.post("/v1/runs", json={"model": "xgboost", "participants": ["bank-1", "bank-7"]}, headers=headers)
    assert unknown.status_code == 422 and "participants" in unknown.get_json()["errors"]
    bank_factory(client, consortium.operator, "bank-4")  # enrolled, no keys
    keyless = client.post(
        "/v1/runs", json={"model": "xgboost", "participants": ["bank-1", "bank-2", "bank-4"]}, headers=headers
    )
    assert keyless.status_code == 422
    small = client.post("/v1/runs", json={"model": "xgboost", "participants": ["bank-1", "bank-2"]}, headers=headers)
    assert small.status_code == 422 and "participants" in small.get_json()["errors"]
    bad = client.post("/v1/runs", json={"model": "forest", "min_banks": 1}, headers=headers)
    assert bad.status_code == 422 and set(bad.get_json()["errors"]) == {"model", "min_banks"}
    listed = client.get("/v1/runs?state=open", headers=headers)
    assert listed.status_code == 200 and listed.get_json() == []
    assert client.get("/v1/runs?state=sideways", headers=headers).status_code == 422


def test_runs_need_the_ceremony_first(client: FlaskClient, operator_token: str) -> None:
    response = client.post("/v1/runs", json={"model": "logreg"}, headers=auth(operator_token))
    assert response.status_code == 409
    assert "ceremony" in response.get_json()["message"]


def test_concurrent_duplicate_uploads_exactly_one_wins(consortium: Any, he_key: crypto.HEScheme, app: Flask) -> None:
    run_id = consortium.open_run()["run_id"]
    one = consortium.bank("bank-1")
    payloads = [he_key.encrypt(vec(10 + i)) for i in range(4)]
    statuses: list[int] = []
    barrier = threading.Barrier(len(payloads))

    def upload(payload: bytes) -> None:
        bank = type(one)(bank_id=one.bank_id, token=one.token, client=app.test_client(), keys=one.keys)
        barrier.wait()
        statuses.append(bank.contribute(run_id, "r", payload).status_code)

    threads = [threading.Thread(target=upload, args=(payload,)) for payload in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201, 409, 409, 409]
    detail = consortium.run(run_id)
    assert detail["rounds"][0]["contributed"] == 1
    files = [path for path in Path(app.config["BLOB_DIR"]).rglob("*") if path.is_file()]
    assert len(files) == 4  # the context, two sealed shares and the one payload; no temporaries


def test_a_retry_racing_its_original_is_refused_and_the_accepted_payload_stays(
    consortium: Any, he_key: crypto.HEScheme, app: Flask
) -> None:
    # The same signed bytes sent four times at once (a bank's retries racing the first try): the
    # payload file is written before the write lock, and the refused copies' clean-up must not
    # take the file the accepted one keeps.
    run_id = consortium.open_run()["run_id"]
    one = consortium.bank("bank-1")
    payload = he_key.encrypt(vec(10))
    statuses: list[int] = []
    barrier = threading.Barrier(4)

    def upload() -> None:
        bank = type(one)(bank_id=one.bank_id, token=one.token, client=app.test_client(), keys=one.keys)
        barrier.wait()
        statuses.append(bank.contribute(run_id, "r", payload).status_code)

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201, 409, 409, 409]
    for bank_id in ("bank-2", "bank-3"):
        assert consortium.bank(bank_id).contribute(run_id, "r", he_key.encrypt(vec(1))).status_code == 201
    total = he_key.decrypt(consortium.bank("bank-2").aggregate(run_id, "r").data)
    np.testing.assert_allclose(total, vec(10) + 2 * vec(1), atol=1e-3)


def test_a_bank_cannot_get_another_banks_payload_removed_by_sending_a_refused_copy(
    consortium: Any, he_key: crypto.HEScheme, app: Flask
) -> None:
    # Bank 2 re-sends bank 1's accepted bytes (signed as its own) after its own contribution: the
    # copy is refused, and its clean-up must leave the file that bank 1's contribution keeps.
    from consortium.extensions import blob_store
    from consortium.storage.blobs import sha256_hex

    run_id = consortium.open_run()["run_id"]
    one, two, three = (consortium.bank(b) for b in ("bank-1", "bank-2", "bank-3"))
    first = he_key.encrypt(vec(21))
    assert one.contribute(run_id, "r", first).status_code == 201
    assert two.contribute(run_id, "r", he_key.encrypt(vec(22))).status_code == 201
    copy = two.contribute(run_id, "r", first)
    assert copy.status_code == 409 and "already contributed" in copy.get_json()["message"]
    with app.app_context():
        assert blob_store().exists(sha256_hex(first))
    assert three.contribute(run_id, "r", he_key.encrypt(vec(23))).status_code == 201
    total = he_key.decrypt(one.aggregate(run_id, "r").data)
    np.testing.assert_allclose(total, vec(21) + vec(22) + vec(23), atol=1e-3)


def test_a_restarted_service_finishes_the_round(
    consortium: Any, he_key: crypto.HEScheme, app_config: dict[str, Any], app: Flask
) -> None:
    run_id = consortium.open_run()["run_id"]
    vectors = [vec(20 + i) for i in range(3)]
    for bank_id, vector in zip(("bank-1", "bank-2"), vectors, strict=False):
        assert consortium.bank(bank_id).contribute(run_id, "r", he_key.encrypt(vector)).status_code == 201
    Database.engine_for(app).dispose()  # the old process is gone

    restarted = create_app(app_config)
    try:
        client = restarted.test_client()
        three = consortium.bank("bank-3")
        three.client = client
        assert three.aggregate(run_id, "r").get_json()["contributed"] == 2
        replay = consortium.bank("bank-1")
        replay.client = client
        assert replay.contribute(run_id, "r", he_key.encrypt(vectors[0])).status_code == 409
        assert three.contribute(run_id, "r", he_key.encrypt(vectors[2])).status_code == 201
        released = three.aggregate(run_id, "r")
        assert released.status_code == 200
        np.testing.assert_allclose(he_key.decrypt(released.data), sum(vectors), atol=1e-3)
    finally:
        Database.engine_for(restarted).dispose()


def test_an_interrupted_release_is_redone_on_the_next_request(
    consortium: Any, he_key: crypto.HEScheme, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    import consortium.rounds as rounds_module

    run_id = consortium.open_run()["run_id"]
    vectors = [vec(30 + i) for i in range(3)]
    for bank_id, vector in zip(("bank-1", "bank-2"), vectors, strict=False):
        consortium.bank(bank_id).contribute(run_id, "r", he_key.encrypt(vector))

    def killed(*_args: Any, **_kwargs: Any) -> None:
        raise SystemExit("killed mid-release")

    with monkeypatch.context() as patch:
        patch.setattr(rounds_module, "_mark_released", killed)  # the sum stored, the round not yet marked
        with pytest.raises(SystemExit):
            consortium.bank("bank-3").contribute(run_id, "r", he_key.encrypt(vectors[2]))
    # The contribution was committed before the release started; the round is complete but open.
    detail = consortium.run(run_id)
    assert detail["rounds"][0]["state"] == "released"
    released = consortium.bank("bank-1").aggregate(run_id, "r")
    np.testing.assert_allclose(he_key.decrypt(released.data), sum(vectors), atol=1e-3)


def test_a_round_nobody_joins_fails_alone(consortium: Any, he_key: crypto.HEScheme, clock: Any) -> None:
    run_id = consortium.open_run(round_timeout_s=10)["run_id"]
    consortium.bank("bank-1").contribute(run_id, "a", he_key.encrypt(vec(1)))
    clock.advance(5)
    consortium.bank("bank-1").contribute(run_id, "b", he_key.encrypt(vec(1)))
    clock.advance(6)  # round a expired, round b not yet
    detail = consortium.run(run_id)
    assert detail["state"] == "open"
    assert [r["state"] for r in detail["rounds"]] == ["failed", "open"]
    for bank_id in ("bank-2", "bank-3"):
        assert consortium.bank(bank_id).contribute(run_id, "b", he_key.encrypt(vec(1))).status_code == 201
    assert consortium.run(run_id)["rounds"][1]["state"] == "released"


def test_a_long_poll_answers_as_soon_as_the_round_is_released(consortium: Any, app: Any, he_key: crypto.HEScheme) -> None:
    """Banks only call out: a bank asking with ``?wait=`` gets the sum when the last bank's
    contribution lands, not at its next poll."""
    import threading
    import time

    run_id = consortium.open_run()["run_id"]
    banks = list(consortium.banks.values())
    for bank in banks[:2]:
        assert bank.contribute(run_id, "r", he_key.encrypt(vec(2))).status_code == 201
    answer: dict[str, Any] = {}

    def ask() -> None:
        started = time.monotonic()
        response = app.test_client().get(f"/v1/runs/{run_id}/aggregates/r?wait=10", headers=banks[0].auth)
        answer.update(status=response.status_code, seconds=time.monotonic() - started)

    waiter = threading.Thread(target=ask)
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()  # held open while the round is open
    assert banks[2].contribute(run_id, "r", he_key.encrypt(vec(2))).status_code == 201
    waiter.join(10)
    assert answer["status"] == 200 and 0.5 <= answer["seconds"] < 5
    quick = banks[0].client.get(f"/v1/runs/{run_id}/aggregates/r?wait=31", headers=banks[0].auth)
    assert quick.status_code == 422  # at most 30 seconds


def test_an_upload_with_wait_returns_the_sum_and_a_note_with_wait_returns_every_note(
    consortium: Any, app: Any, he_key: crypto.HEScheme
) -> None:
    """Two requests a round instead of four: the upload that completes a round gets the sum, and
    a note posted with ``?wait=`` gets the others' notes once all are in."""
    import threading

    run_id = consortium.open_run()["run_id"]
    banks = list(consortium.banks.values())
    for bank in banks[:2]:
        assert bank.contribute(run_id, "r", he_key.encrypt(vec(2))).status_code == 201
    last = banks[2]
    payload = he_key.encrypt(vec(2))
    message = contribution_message(run_id, "r", last.bank_id, payload)
    completed = last.client.put(f"/v1/runs/{run_id}/contributions/r?wait=5", data=payload, content_type=BINARY,
                                headers={**last.auth, "X-Fedfraud-Signature": sign(last.keys.signing, message)})
    assert completed.status_code == 200 and completed.headers["X-Fedfraud-Contributors"] == "bank-1,bank-2,bank-3"
    np.testing.assert_allclose(he_key.decrypt(completed.data), 3 * vec(2), atol=1e-3)

    answers: dict[str, Any] = {}

    def post(bank: Any) -> None:
        body = f"seed-{bank.bank_id}".encode()
        headers = {**bank.auth, "X-Fedfraud-Signature": sign(bank.keys.signing, note_message(run_id, "r", bank.bank_id, body))}
        response = app.test_client().put(f"/v1/runs/{run_id}/notes/r?wait=5", data=body, headers=headers,
                                         content_type=BINARY)
        answers[bank.bank_id] = (response.status_code, response.get_json())

    threads = [threading.Thread(target=post, args=(bank,)) for bank in banks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    for status, body in answers.values():
        assert status == 200 and sorted(n["bank_id"] for n in body["notes"]) == ["bank-1", "bank-2", "bank-3"]
