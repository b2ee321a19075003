"""The key ceremony through the aggregator, which never holds anything that decrypts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import LargeBinary, select

import crypto
from consortium.storage.database import db
from consortium.storage.models import Base
from crypto.scheme import CryptoError, PayloadKind, read_header
from crypto.roster import Roster
from crypto.signing import open_sealed, share_message, verify
from tests.consortium.conftest import sign_first_roster

BINARY = "application/octet-stream"


def test_context_is_published_once_and_served_to_every_role(
    consortium: Any, client: FlaskClient, he_key: crypto.HEScheme, compliance_token: str, snapshot: Any
) -> None:
    served = client.get("/v1/keys/context", headers={"Authorization": f"Bearer {compliance_token}"})
    assert served.status_code == 200
    assert served.data == he_key.public_context()
    before = snapshot()
    again = consortium.bank("bank-2").publish_context(he_key.public_context(), consortium.roster.digest)
    assert again.status_code == 409
    assert snapshot() == before


def test_losing_a_publish_race_keeps_the_winners_blob(consortium: Any, app: Flask, he_key: crypto.HEScheme) -> None:
    """Two identical uploads at once (an agent retrying): the loser must not delete the bytes
    the winner committed; a loser with other bytes leaves nothing behind."""
    from datetime import datetime

    from consortium.ceremony import _commit_with_blob
    from consortium.errors import Conflict
    from consortium.extensions import blob_store
    from consortium.storage.models import KeyMaterial

    def late_publisher(digest: str) -> KeyMaterial:
        return KeyMaterial(id=1, context_digest=digest, context_size=1, scheme="ckks", key_id="x",
                           publisher_bank_id="bank-2", signature="", published_at=datetime(2026, 1, 1))

    with app.app_context():
        store = blob_store()
        same = store.put(he_key.public_context())  # the very bytes already published
        with pytest.raises(Conflict):
            _commit_with_blob(db.session, late_publisher(same), same, "published already")
        assert store.exists(same)
        other = store.put(b"another context")
        with pytest.raises(Conflict):
            _commit_with_blob(db.session, late_publisher(other), other, "published already")
        assert not store.exists(other)
    served = consortium.client.get("/v1/keys/context", headers=consortium.bank("bank-1").auth)
    assert served.status_code == 200 and served.data == he_key.public_context()


def test_context_is_404_before_the_ceremony(client: FlaskClient, operator_token: str) -> None:
    response = client.get("/v1/keys/context", headers={"Authorization": f"Bearer {operator_token}"})
    assert response.status_code == 404


def _ready_banks(client: FlaskClient, operator_token: str, bank_factory: Any) -> tuple[list[Any], Roster]:
    """Three banks with keys and a signed first roster, before any context."""
    banks = []
    for bank_id in ("bank-1", "bank-2", "bank-3"):
        bank = bank_factory(client, operator_token, bank_id)
        assert bank.register_keys().status_code == 200
        banks.append(bank)
    return banks, sign_first_roster(banks)


def _ready_bank(client: FlaskClient, operator_token: str, bank_factory: Any) -> tuple[Any, str]:
    banks, roster = _ready_banks(client, operator_token, bank_factory)
    return banks[0], roster.digest


def test_a_context_holding_the_secret_key_is_refused(
    client: FlaskClient, operator_token: str, bank_factory: Any, he_key: crypto.HEScheme, snapshot: Any
) -> None:
    bank, roster = _ready_bank(client, operator_token, bank_factory)
    before = snapshot()
    response = bank.publish_context(he_key.secret_context(), roster)
    assert response.status_code == 422
    assert "secret key" in response.get_json()["message"]
    assert snapshot() == before


@pytest.mark.parametrize("kind", ["garbage", "ciphertext", "truncated"])
def test_a_body_that_is_not_a_public_context_is_422(
    client: FlaskClient, operator_token: str, bank_factory: Any, he_key: crypto.HEScheme, snapshot: Any, kind: str
) -> None:
    bank, roster = _ready_bank(client, operator_token, bank_factory)
    body = {
        "garbage": b"hello",
        "ciphertext": he_key.encrypt(np.ones(3)),
        "truncated": he_key.public_context()[:-10],
    }[kind]
    before = snapshot()
    assert bank.publish_context(body, roster).status_code == 422
    assert snapshot() == before


def test_an_unsigned_or_missigned_context_is_400(
    client: FlaskClient, operator_token: str, bank_factory: Any, he_key: crypto.HEScheme, snapshot: Any
) -> None:
    bank, roster = _ready_bank(client, operator_token, bank_factory)
    before = snapshot()
    unsigned = client.put(
        "/v1/keys/context", data=he_key.public_context(), headers={**bank.auth, "X-Fedfraud-Roster": roster},
        content_type=BINARY,
    )
    assert unsigned.status_code == 400
    assert "signature" in unsigned.get_json()["message"]
    wrong = bank.publish_context(he_key.public_context(), roster, signature="A" * 86 + "==")
    assert wrong.status_code == 400
    assert snapshot() == before


def test_bytes_endpoint_given_json_is_415(client: FlaskClient, operator_token: str, bank_factory: Any) -> None:
    bank, _ = _ready_bank(client, operator_token, bank_factory)
    response = client.put("/v1/keys/context", json={"context": "abc"}, headers=bank.auth)
    assert response.status_code == 415
    assert "application/octet-stream" in response.get_json()["message"]


def test_shares_are_relayed_only_by_the_publisher_and_only_to_their_bank(
    consortium: Any, client: FlaskClient, he_key: crypto.HEScheme
) -> None:
    two, three = consortium.bank("bank-2"), consortium.bank("bank-3")
    response = client.get("/v1/keys/shares/bank-2", headers=two.auth)
    assert response.status_code == 200
    opened = crypto.load_context(open_sealed(two.keys.box, response.data))
    assert opened.has_secret_key and opened.key_id == he_key.key_id
    assert client.get("/v1/keys/shares/bank-2", headers=three.auth).status_code == 403
    assert client.get("/v1/keys/shares/bank-1", headers=consortium.bank("bank-1").auth).status_code == 404
    assert response.headers["X-Fedfraud-Publisher"] == "bank-1"
    assert response.headers["X-Fedfraud-Key-Id"] == he_key.key_id
    verify(consortium.bank("bank-1").keys.signing_public_b64,
           share_message("bank-1", "bank-2", he_key.key_id, response.data), response.headers["X-Fedfraud-Signature"])
    not_publisher = two.post_share(three, he_key.key_id, b"x" * 100)
    assert not_publisher.status_code == 403
    replaced = consortium.bank("bank-1").post_share(two, he_key.key_id, b"x" * 100)
    assert replaced.status_code == 409
    unknown = client.put(
        "/v1/keys/shares/bank-9", data=b"x" * 100, headers=consortium.bank("bank-1").auth, content_type=BINARY
    )
    assert unknown.status_code == 404


def test_an_unsealed_secret_context_is_never_accepted_as_a_share(
    client: FlaskClient, operator_token: str, bank_factory: Any, he_key: crypto.HEScheme, snapshot: Any
) -> None:
    (one, _, _), roster = _ready_banks(client, operator_token, bank_factory)
    assert one.publish_context(he_key.public_context(), roster.digest).status_code == 201
    before = snapshot()
    response = client.put("/v1/keys/shares/bank-2", data=he_key.secret_context(), headers=one.auth, content_type=BINARY)
    assert response.status_code == 422
    assert "unsealed" in response.get_json()["message"]
    assert snapshot() == before


def test_the_service_stores_nothing_that_decrypts(
    consortium: Any, app: Flask, he_key: crypto.HEScheme
) -> None:
    """After a ceremony and a released round, no stored byte lets the aggregator decrypt."""
    run = consortium.open_run()
    for index, bank in enumerate(consortium.banks.values()):
        payload = he_key.encrypt(np.full(4, float(index)))
        assert bank.contribute(run["run_id"], "r", payload).status_code == 201
    assert consortium.bank("bank-1").aggregate(run["run_id"], "r").status_code == 200

    # No table has a binary column, and no stored text is long enough to hold key material.
    for table in Base.metadata.sorted_tables:
        assert not any(isinstance(column.type, LargeBinary) for column in table.columns), table.name
    with app.app_context():
        for table in Base.metadata.sorted_tables:
            for row in db.session.execute(select(table)):
                for value in row:
                    assert not isinstance(value, bytes | bytearray)
                    assert len(str(value)) < 1024, (table.name, str(value)[:80])

    with app.app_context():
        from consortium.storage.models import KeyShare

        sealed = set(db.session.execute(select(KeyShare.share_digest)).scalars())
    assert len(sealed) == 2  # one sealed share for each bank but the publisher
    blobs = [path for path in Path(app.config["BLOB_DIR"]).rglob("*") if path.is_file()]
    assert blobs
    contexts = 0
    for path in blobs:
        data = path.read_bytes()
        try:
            header = read_header(data)
        except CryptoError:
            # Not our format: it must be one of the sealed shares, opaque to the service.
            assert path.name in sealed, path
            continue
        assert header.kind is not PayloadKind.SECRET_CONTEXT, path
        if header.kind is PayloadKind.PUBLIC_CONTEXT:
            contexts += 1
            assert crypto.load_context(data).has_secret_key is False
    assert contexts == 1


def test_plain_is_refused_outside_development_mode(
    app: Flask, client: FlaskClient, operator_token: str, bank_factory: Any, snapshot: Any
) -> None:
    bank, roster = _ready_bank(client, operator_token, bank_factory)
    plain = crypto.generate("plain").public_context()
    before = snapshot()
    refused = bank.publish_context(plain, roster)
    assert refused.status_code == 422 and "plain" in refused.get_json()["message"]
    assert snapshot() == before
    app.config["DEVELOPMENT_MODE"] = True
    assert bank.publish_context(plain, roster).status_code == 201
