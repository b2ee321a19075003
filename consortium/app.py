"""The aggregator's Flask application factory.

``create_app()`` reads the settings (defaults, instance config file, ``FEDFRAUD_*`` environment,
then the mapping it is given), attaches the database, blob store and API, applies the migrations
to an empty database, and registers one blueprint per resource. It starts no scheduler: that is
``serve``'s job (tests call :func:`consortium.rounds.sweep_expired` directly).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_smorest import Api

from consortium.config import load_config

__all__ = ["API_VERSION", "create_app"]

API_VERSION = "1.0.0"
logger = logging.getLogger("consortium.app")

_OPENAPI_SETTINGS: Mapping[str, Any] = {
    "API_TITLE": "fedfraud consortium aggregator",
    "API_VERSION": API_VERSION,
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/",
    "OPENAPI_JSON_PATH": "openapi.json",
    "API_SPEC_OPTIONS": {
        "info": {"description": "Secure sums of encrypted bank contributions. See docs/consortium-api.md."},
        "security": [{"bearerAuth": []}],
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    },
}


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the aggregator app.

    Parameters
    ----------
    config
        Highest-precedence settings (tests): any key of
        :class:`consortium.config.ConsortiumConfig` (``DATABASE_URL``, ``BLOB_DIR``,
        ``MAX_CONTENT_LENGTH``, ``DEFAULT_MIN_BANKS``, ``DEFAULT_ROUND_TIMEOUT_S``,
        ``SWEEP_INTERVAL_S``, ``AUTO_MIGRATE``, ``KEEP_CONTRIBUTION_BLOBS``, ``LOG_LEVEL``,
        ``DEVELOPMENT_MODE``,
        ``CLOCK``) and Flask's own keys (``TESTING``, ...).

    Returns
    -------
    Flask
        The configured application.
    """
    from consortium import errors
    from consortium.api import register_blueprints
    from consortium.extensions import init_resources
    from consortium.ledger import init_ledger
    from consortium.logs import init_request_logging
    from consortium.metrics import init_metrics
    from consortium.web import init_web
    from consortium.storage.database import Database, db

    app = Flask("consortium", instance_relative_config=True)
    # A doubled slash is not merged by an HTML redirect: the path is taken as written, and a round
    # key that does not match answers in the JSON error shape like any other.
    app.url_map.merge_slashes = False
    settings = load_config(app.instance_path, config)
    app.config.update(_OPENAPI_SETTINGS)
    app.config.update(settings.as_flask_config())
    app.config.update({key: value for key, value in (config or {}).items() if key.isupper()})
    if settings.DATABASE_URL.startswith(f"sqlite:///{app.instance_path}") or settings.BLOB_DIR.startswith(
        app.instance_path
    ):
        os.makedirs(app.instance_path, exist_ok=True)

    db.init_app(app)
    if app.config["AUTO_MIGRATE"] and Database.is_empty(Database.engine_for(app)):
        from consortium.storage.migrate import upgrade

        logger.info("empty database: applying migrations")
        upgrade(Database.engine_for(app))
    init_resources(app)
    init_ledger(app)
    init_web(app)
    init_request_logging(app)
    init_metrics(app)
    if app.config["DEVELOPMENT_MODE"]:
        logger.warning("DEVELOPMENT MODE: the unencrypted 'plain' HE scheme is accepted; never run this in production")

    api = Api(app)
    register_blueprints(api)
    _document_run_params(api)
    errors.register_error_handlers(app)
    return app


def _document_run_params(api: Api) -> None:
    """The per-family parameter schemas a run's ``params`` must match (referenced by RunOpen)."""
    from schemas.run import LogRegParamsSchema, XGBoostParamsSchema

    api.spec.components.schema("XGBoostParams", schema=XGBoostParamsSchema)
    api.spec.components.schema("LogRegParams", schema=LogRegParamsSchema)
