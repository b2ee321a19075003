"""The real aggregator app (SQLite and PostgreSQL) and its banks, as the consortium tests set them
up; and bank agents over real HTTP against a server the test controls (a lying operator)."""

from tests.bank_node.agent.conftest import (  # noqa: F401 - fixtures
    bank_transactions,
    banks,
    enrolled_banks,
    fake,
    keyed_banks,
    make_bank,
    transactions,
    url,
)
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
