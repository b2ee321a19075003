"""The key ceremony: the public HE context, and secret-context shares sealed to each bank."""

from __future__ import annotations

from typing import Any

from flask import Response, request
from flask_smorest import Blueprint

from consortium import ceremony
from consortium.api.bodies import (
    BINARY,
    BINARY_REQUEST,
    SIGNATURE_PARAMETER,
    binary_body,
    binary_response,
    read_binary,
)
from consortium.api.schemas import ContextPublishedSchema, SharePostedSchema
from consortium.auth import current_principal, require_bank, requires
from consortium.errors import Forbidden, NotFound
from consortium.extensions import blob_store
from consortium.storage.database import db
from consortium.storage.models import Role

blp = Blueprint("keys", __name__, url_prefix="/v1/keys", description="Key ceremony material (public or sealed only)")


def _calling_bank() -> Any:
    principal = current_principal()
    assert principal.bank_id is not None  # bank tokens always carry their bank
    return ceremony.get_bank(db.session, principal.bank_id)


@blp.route("/context", methods=["PUT"])
@requires(Role.BANK)
@binary_body
@blp.doc(requestBody=BINARY_REQUEST, parameters=[SIGNATURE_PARAMETER])
@blp.response(201, ContextPublishedSchema)
@blp.alt_response(409, description="a context was published already")
@blp.alt_response(422, description="not a public context (e.g. it holds the secret key)")
def put_context() -> Any:
    """Publish the consortium's public HE context (signed like a proposal of run 'ceremony')."""
    bank = _calling_bank()
    material = ceremony.publish_context(
        db.session, bank, body=read_binary(), signature=request.headers.get("X-Fedfraud-Signature")
    )
    return {
        "scheme": material.scheme,
        "key_id": material.key_id,
        "digest": material.context_digest,
        "size": material.context_size,
        "publisher": material.publisher_bank_id,
        "published_at": material.published_at,
    }


@blp.route("/context", methods=["GET"])
@requires()
@blp.doc(responses={"200": binary_response("the public HE context")})
@blp.alt_response(404, description="no context yet")
def get_context() -> Response:
    """The public HE context bytes."""
    material = ceremony.key_material(db.session)
    if material is None:
        raise NotFound("no HE context has been published yet")
    data = blob_store().get(material.context_digest)
    response = Response(data, mimetype=BINARY)
    response.set_etag(material.context_digest)
    return response


@blp.route("/shares/<string:bank_id>", methods=["PUT"])
@requires(Role.BANK)
@binary_body
@blp.doc(requestBody=BINARY_REQUEST)
@blp.response(201, SharePostedSchema)
@blp.alt_response(409, description="no context yet, or the share was posted already")
def put_share(bank_id: str) -> Any:
    """Relay the secret context sealed to ``bank_id``'s box key (the publisher only)."""
    recipient = ceremony.get_bank(db.session, bank_id)
    material = ceremony.key_material(db.session)
    publisher = _calling_bank()
    if material is not None and material.publisher_bank_id != publisher.bank_id:
        raise Forbidden(f"only the bank that published the context ({material.publisher_bank_id!r}) posts shares")
    share = ceremony.post_share(db.session, publisher, recipient, body=read_binary())
    return {"bank_id": share.bank_id, "digest": share.share_digest, "size": share.share_size, "posted_at": share.posted_at}


@blp.route("/shares/<string:bank_id>", methods=["GET"])
@requires(Role.BANK)
@blp.doc(responses={"200": binary_response("the sealed share")})
@blp.alt_response(404, description="no share posted yet")
def get_share(bank_id: str) -> Response:
    """The bank's sealed share of the secret context."""
    ceremony.get_bank(db.session, bank_id)
    require_bank(bank_id, what="fetch its sealed share")
    return Response(ceremony.get_share(db.session, bank_id), mimetype=BINARY)
