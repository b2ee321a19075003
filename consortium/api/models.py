"""Published models: metadata and the model file."""

from __future__ import annotations

from typing import Any

from flask import Response
from flask_smorest import Blueprint

from consortium import publishing
from consortium.api.bodies import BINARY, binary_response
from consortium.api.schemas import ModelSchema
from consortium.auth import requires
from consortium.extensions import blob_store
from consortium.storage.database import db
from consortium.storage.models import PublishedModel

blp = Blueprint("models", __name__, url_prefix="/v1/models", description="Published global models")


def model_view(model: PublishedModel) -> dict[str, Any]:
    """A published model's metadata."""
    return {
        "version": model.version,
        "run_id": model.run_id,
        "family": model.family,
        "digest": model.model_digest,
        "size": model.model_size,
        "created_at": model.created_at,
        "banks": list(model.banks),
        "proposals": [
            {"bank_id": row.bank_id, "signature": row.signature}
            for row in publishing.proposals_for(db.session, model)
        ],
    }


@blp.route("", methods=["GET"])
@requires()
@blp.response(200, ModelSchema(many=True))
def list_models() -> Any:
    """Published models, newest first."""
    return [model_view(model) for model in publishing.list_models(db.session)]


@blp.route("/<int:version>", methods=["GET"])
@requires()
@blp.response(200, ModelSchema)
def get_model(version: int) -> Any:
    """One published model's metadata: run, family, digest, contributing banks."""
    return model_view(publishing.get_model(db.session, version))


@blp.route("/<int:version>/download", methods=["GET"])
@requires()
@blp.doc(responses={"200": binary_response("the model file (XGBoost JSON or logistic-regression JSON)")})
def download_model(version: int) -> Response:
    """The model file."""
    model = publishing.get_model(db.session, version)
    response = Response(blob_store().get(model.model_digest), mimetype=BINARY)
    response.set_etag(model.model_digest)
    response.headers["Content-Disposition"] = f'attachment; filename="fedfraud-model-v{model.version}-{model.family}.json"'
    return response
