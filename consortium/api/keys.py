"""The key ceremony: the public HE context, and secret-context shares sealed to each bank."""

from __future__ import annotations

from typing import Any

from flask import Response, request
from flask_smorest import Blueprint

from consortium import ceremony
from consortium.api.bodies import (
    BINARY,
    BINARY_REQUEST,
    ROSTER_PARAMETER,
    SIGNATURE_PARAMETER,
    binary_body,
    binary_response,
    read_binary,
)
from consortium.api.schemas import ContextPublishedSchema, SharePostedSchema
from consortium.auth import current_principal, require_bank, requires
from consortium.errors import NotFound
from consortium.extensions import blob_store
from consortium.storage.database import db
from consortium.storage.models import Role

blp = Blueprint("keys", __name__, url_prefix="/v1/keys", description="Key ceremony material (public or sealed only)")


def calling_bank() -> Any:
    """The bank whose token made the request."""
    principal = current_principal()
    assert principal.bank_id is not None  # bank tokens always carry their bank
    return ceremony.get_bank(db.session, principal.bank_id)


@blp.route("/context", methods=["PUT"])
@requires(Role.BANK)
@binary_body
@blp.doc(requestBody=BINARY_REQUEST, parameters=[SIGNATURE_PARAMETER, ROSTER_PARAMETER])
@blp.response(201, ContextPublishedSchema)
@blp.alt_response(409, description="this context was published already, or the roster is not newer")
@blp.alt_response(422, description="not a public context (e.g. it holds the secret key), or an unknown roster")
def put_context() -> Any:
    """Publish a public HE context made for a roster: the first key, or a rotated one for a newer
    roster. Signed as ``fedfraud-context-v1\n{bank_id}\n{roster digest}\n{sha256 hex}``."""
    bank = calling_bank()
    material = ceremony.publish_context(
        db.session, bank, body=read_binary(), signature=request.headers.get("X-Fedfraud-Signature"),
        roster_digest=request.headers.get("X-Fedfraud-Roster"),
    )
    return {
        "scheme": material.scheme,
        "key_id": material.key_id,
        "digest": material.context_digest,
        "size": material.context_size,
        "publisher": material.publisher_bank_id,
        "published_at": material.published_at,
        "generation": material.id,
        "roster_version": material.roster_version,
        "roster_digest": material.roster_digest,
    }


@blp.route("/context", methods=["GET"])
@requires()
@blp.doc(responses={"200": binary_response(
    "the current public HE context; headers X-Fedfraud-Publisher, X-Fedfraud-Signature and "
    "X-Fedfraud-Roster let each bank check it against its pinned roster")})
@blp.alt_response(404, description="no context yet")
def get_context() -> Response:
    """The current public HE context bytes, with who published it for which roster."""
    material = ceremony.key_material(db.session)
    if material is None:
        raise NotFound("no HE context has been published yet")
    data = blob_store().get(material.context_digest)
    response = Response(data, mimetype=BINARY)
    response.set_etag(material.context_digest)
    response.headers["X-Fedfraud-Publisher"] = material.publisher_bank_id
    response.headers["X-Fedfraud-Signature"] = material.signature
    response.headers["X-Fedfraud-Roster"] = material.roster_digest
    response.headers["X-Fedfraud-Key-Id"] = material.key_id
    return response


@blp.route("/shares/<string:bank_id>", methods=["PUT"])
@requires(Role.BANK)
@binary_body
@blp.doc(requestBody=BINARY_REQUEST, parameters=[SIGNATURE_PARAMETER])
@blp.response(201, SharePostedSchema)
@blp.alt_response(409, description="no context yet, or the share was posted already")
@blp.alt_response(422, description="the bank is not in the key's roster, or the body is not a sealed box")
def put_share(bank_id: str) -> Any:
    """Relay the current key's secret context sealed to ``bank_id``'s box key (the publisher only).
    Signed as ``fedfraud-share-v1\n{publisher}\n{bank_id}\n{key_id}\n{sha256 hex}``."""
    recipient = ceremony.get_bank(db.session, bank_id)
    share = ceremony.post_share(db.session, calling_bank(), recipient, body=read_binary(),
                                signature=request.headers.get("X-Fedfraud-Signature"))
    return {"bank_id": share.bank_id, "key_id": share.key_id, "digest": share.share_digest,
            "size": share.share_size, "posted_at": share.posted_at}


@blp.route("/shares/<string:bank_id>", methods=["GET"])
@requires(Role.BANK)
@blp.doc(responses={"200": binary_response("the sealed share")})
@blp.alt_response(404, description="no share posted yet")
def get_share(bank_id: str) -> Response:
    """The bank's sealed share of the secret context."""
    ceremony.get_bank(db.session, bank_id)
    require_bank(bank_id, what="fetch its sealed share")
    share, data = ceremony.get_share(db.session, bank_id)
    response = Response(data, mimetype=BINARY)
    response.headers["X-Fedfraud-Publisher"] = share.posted_by
    response.headers["X-Fedfraud-Signature"] = share.signature
    response.headers["X-Fedfraud-Key-Id"] = share.key_id
    return response
