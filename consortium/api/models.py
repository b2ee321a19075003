"""Published models: metadata and the model file."""

from __future__ import annotations

import json
from typing import Any

from flask import Response
from flask_smorest import Blueprint
from sqlalchemy import func, select

from consortium import publishing
from consortium.api.bodies import BINARY, binary_response, json_body
from consortium.api.schemas import CurrentModelSchema, LineageSchema, MakeCurrentSchema, ModelSchema
from consortium.auth import requires
from consortium.extensions import blob_store
from consortium.storage.database import db
from consortium.rounds import get_run
from consortium.secure_sum import RoundState
from consortium.storage.models import CurrentModel, LedgerEntry, PublishedModel, Role, RoundRow
from schemas.ledger import parse_entry

blp = Blueprint("models", __name__, url_prefix="/v1/models", description="Published global models")


def model_view(model: PublishedModel) -> dict[str, Any]:
    """A published model's metadata, its gate's assessment and its lineage."""
    current = publishing.current_model(db.session, model.family)
    run = get_run(db.session, model.run_id)
    released = db.session.execute(
        select(func.count()).select_from(RoundRow)
        .where(RoundRow.run_id == model.run_id, RoundRow.state == RoundState.RELEASED.value)
    ).scalar_one()
    return {
        "status": model.status,
        "current": current is not None and current.version == model.version,
        "assessment": None if model.assessment is None else json.loads(model.assessment),
        "lineage": {"run_id": run.run_id, "window": run.window, "rounds_released": int(released),
                    "banks": list(model.banks), "baseline_version": model.baseline_version,
                    "params": run.params},
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


@blp.route("/current", methods=["GET"])
@requires()
@blp.response(200, CurrentModelSchema(many=True))
def current_models() -> Any:
    """The model each family serves now: the last promoted one, or one an operator set."""
    rows = db.session.execute(select(CurrentModel).order_by(CurrentModel.family)).scalars()
    return [{"family": r.family, "version": r.version, "since": r.since, "reason": r.reason} for r in rows]


@blp.route("/<int:version>/current", methods=["PUT"])
@requires(Role.OPERATOR)
@json_body
@blp.arguments(MakeCurrentSchema)
@blp.response(200, CurrentModelSchema)
@blp.alt_response(409, description="the version was rejected by the gate")
def make_current(data: dict[str, Any], version: int) -> Any:
    """Roll back (or forward): make this promoted version the one its family serves."""
    current = publishing.roll_back(db.session, publishing.get_model(db.session, version), reason=data["reason"])
    return {"family": current.family, "version": current.version, "since": current.since, "reason": current.reason}


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


@blp.route("/<int:version>/lineage", methods=["GET"])
@requires(Role.COMPLIANCE, Role.OPERATOR)
@blp.response(200, LineageSchema)
def lineage(version: int) -> Any:
    """Where a model comes from: its run (window, parameters, participants), every round with the
    contributions it added (bank, payload digest and size, ledger entry), the proposals and
    the run's ledger entries."""
    return lineage_view(version)


def lineage_view(version: int) -> dict[str, Any]:
    """A model's lineage (the API's and the compliance pages')."""
    model = publishing.get_model(db.session, version)
    run = get_run(db.session, model.run_id)
    entries = list(db.session.execute(select(LedgerEntry).where(LedgerEntry.run_id == run.run_id)
                                      .order_by(LedgerEntry.seq)).scalars())
    accepted = {}
    for row in entries:
        if row.event == "contribution.accepted":
            accepted[(parse_entry(row.body)["details"]["round_key"], row.bank_id)] = row.seq
    rounds = []
    for current in run.rounds:
        rounds.append({
            "round_key": current.round_key, "state": current.state, "n_addends": current.n_addends,
            "aggregate_sha256": current.aggregate_digest, "dropped": list(current.dropped or []),
            "contributions": [
                {"bank_id": c.bank_id, "payload_sha256": c.payload_digest, "payload_size": c.payload_size,
                 "received_at": c.received_at, "ledger_index": accepted.get((current.round_key, c.bank_id))}
                for c in current.contributions
            ],
        })
    return {
        "version": model.version, "family": model.family, "model_sha256": model.model_digest,
        "status": model.status, "banks": list(model.banks), "baseline_version": model.baseline_version,
        "run": {"run_id": run.run_id, "state": run.state, "window": run.window, "params": run.params,
                "participants": list(run.participants), "withdrawn": dict(run.withdrawn or {}),
                "created_at": run.created_at, "finished_at": run.finished_at},
        "rounds": rounds,
        "proposals": [{"bank_id": p.bank_id, "model_sha256": p.model_digest, "signature": p.signature}
                      for p in publishing.proposals_for(db.session, model)],
        "ledger_entries": [row.seq for row in entries],
    }
