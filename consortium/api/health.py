"""GET /v1/health: liveness and database reachability, no token needed."""

from __future__ import annotations

import logging
from typing import Any

from flask_smorest import Blueprint
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from consortium.api.schemas import HealthSchema
from consortium.errors import error_response
from consortium.storage.database import db

blp = Blueprint("health", __name__, url_prefix="/v1/health", description="Service health")
logger = logging.getLogger("consortium.health")


@blp.route("", methods=["GET"])
@blp.doc(security=[])
@blp.response(200, HealthSchema)
@blp.alt_response(503, description="the database is unreachable")
def health() -> Any:
    """Report whether the service and its database are up."""
    try:
        db.session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        logger.error("health check: database unreachable: %s", type(exc).__name__)
        return error_response(503, "the database is unreachable", extra={"database": "unreachable"})
    return {"status": "ok", "database": "ok"}
