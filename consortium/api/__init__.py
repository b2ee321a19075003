"""HTTP resources of the aggregator, one flask-smorest blueprint each."""

from __future__ import annotations

from flask_smorest import Api


def register_blueprints(api: Api) -> None:
    """Register every resource's blueprint on ``api``."""
    from consortium.api import banks, health, keys, ledger, models, roster, runs, schedules

    for module in (health, banks, roster, keys, runs, models, schedules, ledger):
        api.register_blueprint(module.blp)
