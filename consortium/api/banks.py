"""Banks: enrolment by the operator, the list of banks and their public keys, key registration."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from consortium import ceremony
from consortium.api.bodies import json_body
from consortium.api.schemas import (
    BankEnrolledSchema,
    BankEnrolSchema,
    BankKeysSchema,
    BankSchema,
)
from consortium.auth import require_bank, requires
from consortium.storage.database import db
from consortium.storage.models import Bank, Role

blp = Blueprint("banks", __name__, url_prefix="/v1/banks", description="Enrolled banks and their public keys")


def bank_view(bank: Bank) -> dict[str, Any]:
    """A bank as the API shows it."""
    return {
        "bank_id": bank.bank_id,
        "name": bank.name,
        "signing_key": bank.signing_key,
        "box_key": bank.box_key,
        "enrolled_at": bank.enrolled_at,
        "keys_registered_at": bank.keys_registered_at,
    }


@blp.route("", methods=["POST"])
@requires(Role.OPERATOR)
@json_body
@blp.arguments(BankEnrolSchema)
@blp.response(201, BankEnrolledSchema)
@blp.alt_response(409, description="the bank id is taken")
def enrol(data: dict[str, Any]) -> Any:
    """Enrol a bank; the response carries its token, shown this once only."""
    bank, token = ceremony.enrol_bank(db.session, bank_id=data["bank_id"], name=data["name"])
    return {"bank_id": bank.bank_id, "name": bank.name, "token": token}


@blp.route("", methods=["GET"])
@requires()
@blp.response(200, BankSchema(many=True))
def list_banks() -> Any:
    """Every enrolled bank with its public keys (base64)."""
    return [bank_view(bank) for bank in ceremony.banks(db.session)]


@blp.route("/<string:bank_id>/keys", methods=["PUT"])
@requires(Role.BANK)
@json_body
@blp.arguments(BankKeysSchema)
@blp.response(200, BankSchema)
@blp.alt_response(409, description="keys were registered already")
def register_keys(data: dict[str, Any], bank_id: str) -> Any:
    """Register the bank's Ed25519 signing key and X25519 box key, once."""
    bank = ceremony.get_bank(db.session, bank_id)
    require_bank(bank_id, what="register its keys")
    bank = ceremony.register_keys(db.session, bank, signing_key=data["signing_key"], box_key=data["box_key"])
    return bank_view(bank)
