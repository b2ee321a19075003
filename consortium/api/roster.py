"""The roster: membership documents the banks sign and pin (the aggregator only relays them)."""

from __future__ import annotations

from typing import Any

from flask import request
from flask_smorest import Blueprint

from consortium import roster
from consortium.api.bodies import BINARY_REQUEST, SIGNATURE_PARAMETER, binary_body, read_binary
from consortium.api.keys import calling_bank
from consortium.api.schemas import RosterQuerySchema, RosterSchema
from consortium.auth import requires
from consortium.storage.database import db
from consortium.storage.models import RosterDocument, Role

blp = Blueprint("roster", __name__, url_prefix="/v1/roster",
                description="Membership rosters signed by the banks (relayed; each bank pins its own)")


def roster_view(document: RosterDocument) -> dict[str, Any]:
    """A relayed roster as the API shows it."""
    return {
        "version": document.version,
        "digest": document.digest,
        "document": document.document,
        "proposed_by": document.proposed_by,
        "proposed_at": document.proposed_at,
        "signatures": [{"bank_id": s.bank_id, "signature": s.signature} for s in document.signatures],
    }


@blp.route("", methods=["POST"])
@requires(Role.BANK)
@binary_body
@blp.doc(requestBody=BINARY_REQUEST, parameters=[SIGNATURE_PARAMETER])
@blp.response(200, RosterSchema)
@blp.alt_response(400, description="missing or wrong signature")
@blp.alt_response(422, description="not a canonical roster, or a version that follows no relayed roster")
def sign_roster() -> Any:
    """Sign a roster document (posting it if new). The body is the canonical JSON document; the
    signature covers ``fedfraud-roster-v1\\n{bank_id}\\n{sha256 hex of the body}``."""
    stored = roster.sign_roster(
        db.session, calling_bank(), body=read_binary(), signature=request.headers.get("X-Fedfraud-Signature")
    )
    return roster_view(stored)


@blp.route("", methods=["GET"])
@requires()
@blp.arguments(RosterQuerySchema, location="query")
@blp.response(200, RosterSchema(many=True))
def list_rosters(query: dict[str, Any]) -> Any:
    """Every relayed roster newer than ``since``, oldest first, with the signatures received."""
    return [roster_view(document) for document in roster.candidates(db.session, since=query["since"])]
