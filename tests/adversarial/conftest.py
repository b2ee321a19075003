"""The real aggregator app (SQLite and PostgreSQL) and its banks, as the consortium tests set them up."""

from tests.consortium.conftest import (  # noqa: F401 - fixtures
    app,
    app_config,
    bank_factory,
    client,
    clock,
    consortium,
    consortium4,
    database_url,
    he_key,
    operator_token,
    snapshot,
)
