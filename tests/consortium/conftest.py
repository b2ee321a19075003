"""Fixtures for the aggregator service: an app per test on SQLite (and PostgreSQL when
``FEDFRAUD_TEST_DATABASE_URL`` is set), a controllable clock, and bank agents that sign.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, func, select, text
from werkzeug.test import TestResponse

import crypto
from consortium.app import create_app
from consortium.auth import issue_token
from consortium.extensions import close_resources
from consortium.storage.database import Database, db
from consortium.storage.models import Base
from crypto.roster import Member, Roster, roster_message
from crypto.signing import (
    BankKeys,
    context_message,
    contribution_message,
    generate_bank_keys,
    note_message,
    proposal_message,
    seal_to,
    share_message,
    sign,
)

PG_ENV = "FEDFRAUD_TEST_DATABASE_URL"
BINARY = "application/octet-stream"


class FakeClock:
    """A clock tests move by hand (naive UTC, like the service's timestamps)."""

    def __init__(self) -> None:
        self.current = datetime(2025, 3, 1, 2, 0, 0)

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


def _pg_url(base: str, schema: str) -> str:
    url = base.replace("postgresql://", "postgresql+psycopg://", 1) if base.startswith("postgresql://") else base
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'consortium.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"set {PG_ENV} to run against PostgreSQL")
    with pg_schema(base) as url:
        yield url


@contextmanager
def pg_schema(base: str, prefix: str = "t") -> Iterator[str]:
    """The URL of a new PostgreSQL schema on the server at ``base``, dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(_pg_url(base, "public"))
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        connection.commit()
    try:
        yield _pg_url(base, schema)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            connection.commit()
        admin.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app_config(database_url: str, tmp_path: Path, clock: FakeClock) -> dict[str, Any]:
    """Settings of the test app; a second app built from them sees the same state."""
    return {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "BLOB_DIR": str(tmp_path / "blobs"),
        "CLOCK": clock,
        "MAX_CONTENT_LENGTH": 2 * 1024 * 1024,
        "DEFAULT_ROUND_TIMEOUT_S": 600,
    }


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Flask]:
    application = create_app(app_config)
    yield application
    close_resources(application)
    Database.engine_for(application).dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def operator_token(app: Flask) -> str:
    with app.app_context():
        token = issue_token(db.session, "operator")
        db.session.commit()
    return token


@pytest.fixture
def compliance_token(app: Flask) -> str:
    with app.app_context():
        token = issue_token(db.session, "compliance")
        db.session.commit()
    return token


@pytest.fixture(scope="session")
def he_key() -> crypto.HEScheme:
    """The banks' shared CKKS key (with the secret), generated once per session.

    These tests encrypt raw floats, not masked integers, so they take the finer scale."""
    return crypto.generate("ckks", scale_bits=30)


@pytest.fixture(scope="session")
def other_he_key() -> crypto.HEScheme:
    """A key from another ceremony, for payloads the consortium must refuse."""
    return crypto.generate("ckks", scale_bits=30)


@dataclass
class Bank:
    """A bank agent in a test: its token and key pairs, talking through the test client."""

    bank_id: str
    token: str
    client: FlaskClient
    keys: BankKeys = field(default_factory=generate_bank_keys)

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.token)

    def register_keys(self) -> TestResponse:
        return self.client.put(
            f"/v1/banks/{self.bank_id}/keys",
            json={"signing_key": self.keys.signing_public_b64, "box_key": self.keys.box_public_b64},
            headers=self.auth,
        )

    def contribute(
        self,
        run_id: str,
        round_key: str,
        payload: bytes,
        *,
        signature: str | None = None,
        signed: bool = True,
        content_type: str = BINARY,
    ) -> TestResponse:
        headers = dict(self.auth)
        if signed:
            message = contribution_message(run_id, round_key, self.bank_id, payload)
            headers["X-Fedfraud-Signature"] = signature or sign(self.keys.signing, message)
        return self.client.put(
            f"/v1/runs/{run_id}/contributions/{round_key}", data=payload, headers=headers, content_type=content_type
        )

    def aggregate(self, run_id: str, round_key: str) -> TestResponse:
        return self.client.get(f"/v1/runs/{run_id}/aggregates/{round_key}", headers=self.auth)

    def note(self, run_id: str, round_key: str, body: bytes, *, signature: str | None = None) -> TestResponse:
        message = note_message(run_id, round_key, self.bank_id, body)
        headers = {**self.auth, "X-Fedfraud-Signature": signature or sign(self.keys.signing, message)}
        return self.client.put(f"/v1/runs/{run_id}/notes/{round_key}", data=body, headers=headers, content_type=BINARY)

    def notes(self, run_id: str, round_key: str) -> TestResponse:
        return self.client.get(f"/v1/runs/{run_id}/notes/{round_key}", headers=self.auth)

    def assess(self, run_id: str, document: bytes, *, signature: str | None = None) -> TestResponse:
        from schemas.assessment import assessment_message

        message = assessment_message(run_id, self.bank_id, document)
        headers = {**self.auth, "X-Fedfraud-Signature": signature or sign(self.keys.signing, message)}
        return self.client.put(f"/v1/runs/{run_id}/assessments", data=document, headers=headers,
                               content_type=BINARY)

    def propose(self, run_id: str, body: bytes, *, signature: str | None = None) -> TestResponse:
        message = proposal_message(run_id, self.bank_id, body)
        headers = {**self.auth, "X-Fedfraud-Signature": signature or sign(self.keys.signing, message)}
        return self.client.post(f"/v1/runs/{run_id}/proposals", data=body, headers=headers, content_type=BINARY)

    @property
    def member(self) -> Member:
        return Member(bank_id=self.bank_id, signing_key=self.keys.signing_public_b64, box_key=self.keys.box_public_b64)

    def sign_roster(self, document: bytes, *, signature: str | None = None) -> TestResponse:
        headers = {**self.auth,
                   "X-Fedfraud-Signature": signature or sign(self.keys.signing, roster_message(self.bank_id, document))}
        return self.client.post("/v1/roster", data=document, headers=headers, content_type=BINARY)

    def publish_context(self, context: bytes, roster_digest: str, *, signature: str | None = None) -> TestResponse:
        message = context_message(self.bank_id, roster_digest, context)
        headers = {**self.auth, "X-Fedfraud-Signature": signature or sign(self.keys.signing, message),
                   "X-Fedfraud-Roster": roster_digest}
        return self.client.put("/v1/keys/context", data=context, headers=headers, content_type=BINARY)

    def post_share(self, recipient: Bank, key_id: str, secret: bytes, *, signature: str | None = None) -> TestResponse:
        sealed = seal_to(recipient.keys.box_public_b64, secret)
        message = share_message(self.bank_id, recipient.bank_id, key_id, sealed)
        headers = {**self.auth, "X-Fedfraud-Signature": signature or sign(self.keys.signing, message)}
        return self.client.put(f"/v1/keys/shares/{recipient.bank_id}", data=sealed, headers=headers,
                               content_type=BINARY)


@dataclass
class Consortium:
    """Enrolled banks with keys, after the key ceremony, and an operator."""

    client: FlaskClient
    operator: str
    banks: dict[str, Bank]
    he: crypto.HEScheme
    roster: Roster

    def bank(self, bank_id: str) -> Bank:
        return self.banks[bank_id]

    def open_run(self, **fields: Any) -> dict[str, Any]:
        body = {"model": "xgboost", "params": {"max_depth": 3}, **fields}
        response = self.client.post("/v1/runs", json=body, headers=bearer(self.operator))
        assert response.status_code == 201, response.get_json()
        return response.get_json()  # type: ignore[no-any-return]

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/runs/{run_id}", headers=bearer(self.operator))
        assert response.status_code == 200, response.get_json()
        return response.get_json()  # type: ignore[no-any-return]


def enrol(client: FlaskClient, operator: str, bank_id: str) -> Bank:
    response = client.post("/v1/banks", json={"bank_id": bank_id, "name": bank_id.title()}, headers=bearer(operator))
    assert response.status_code == 201, response.get_json()
    return Bank(bank_id=bank_id, token=response.get_json()["token"], client=client)


def set_up_consortium(client: FlaskClient, operator: str, he: crypto.HEScheme, n_banks: int = 3) -> Consortium:
    banks = {}
    for index in range(1, n_banks + 1):
        bank = enrol(client, operator, f"bank-{index}")
        assert bank.register_keys().status_code == 200
        banks[bank.bank_id] = bank
    roster = sign_first_roster(list(banks.values()))
    publisher = banks["bank-1"]
    assert publisher.publish_context(he.public_context(), roster.digest).status_code == 201
    secret = he.secret_context()
    for bank in list(banks.values())[1:]:
        response = publisher.post_share(bank, he.key_id, secret)
        assert response.status_code == 201, response.get_json()
    return Consortium(client=client, operator=operator, banks=banks, he=he, roster=roster)


def sign_first_roster(banks: list[Bank]) -> Roster:
    """Roster version 1 of ``banks``, signed by each of them through the API."""
    roster = Roster.create(version=1, previous="", members=[bank.member for bank in banks])
    for bank in banks:
        response = bank.sign_roster(roster.to_bytes())
        assert response.status_code == 200, response.get_json()
    return roster


@pytest.fixture
def consortium(client: FlaskClient, operator_token: str, he_key: crypto.HEScheme) -> Consortium:
    return set_up_consortium(client, operator_token, he_key)


@pytest.fixture
def consortium4(client: FlaskClient, operator_token: str, he_key: crypto.HEScheme) -> Consortium:
    """Four banks: room for one to drop out above the quorum of three."""
    return set_up_consortium(client, operator_token, he_key, n_banks=4)


def state_snapshot(app: Flask) -> tuple[dict[str, int], list[str]]:
    """Row counts per table and every file under the blob directory (temporaries included). The
    ledger is left out: a refused contribution is itself an event it records."""
    with app.app_context():
        counts = {
            table.name: db.session.execute(select(func.count()).select_from(table)).scalar_one()
            for table in Base.metadata.sorted_tables if not table.name.startswith("ledger_")
        }
    root = Path(app.config["BLOB_DIR"])
    files = sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())
    return counts, files


@pytest.fixture
def snapshot(app: Flask) -> Any:
    """``snapshot()``: the state to compare before and after a refused request."""
    return lambda: state_snapshot(app)


@pytest.fixture
def bank_factory() -> Any:
    """``make_bank(client, operator_token, bank_id)``: enrol a bank and return its agent."""
    return enrol


