"""Property-based fuzzing of every operation in /openapi.json: no input makes the service fail
(5xx), and every answer matches the response schema the document declares for it.

schemathesis' pytest plugin (``from_fixture``) does not run under pytest 9 (it reads a removed
private node attribute), so each operation's hypothesis strategy is driven here directly.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from consortium.auth import issue_token
from consortium.storage.database import db

MAX_EXAMPLES = 25


def test_no_request_makes_the_service_fail(app: Flask, consortium: Any) -> None:
    consortium.open_run()  # so that run paths lead somewhere
    with app.app_context():
        bank_token = issue_token(db.session, "bank", "bank-1")
        db.session.commit()
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 39

    for operation in operations:
        # Bank-only operations are fuzzed with a bank token, so requests get past the role check.
        bank_only = operation.method.upper() in {"PUT"} or operation.path.endswith(
            ("/proposals", "/aggregates/{round_key}", "/withdrawals")
        ) or (operation.method.upper() == "POST" and operation.path == "/v1/roster")
        fuzz_operation(operation, {"Authorization": f"Bearer {bank_token if bank_only else consortium.operator}"})


def fuzz_operation(operation: Any, headers: dict[str, str]) -> None:
    """Send ``MAX_EXAMPLES`` generated requests to one operation; fail on any 5xx."""

    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case: Any) -> None:
        case.call_and_validate(
            headers=headers, checks=[not_a_server_error, response_schema_conformance, content_type_conformance]
        )

    fuzz()


def test_the_document_is_valid_openapi_3(client: Any) -> None:
    from openapi_spec_validator import validate

    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    validate(document)
    formats = [prop.get("format", "absent") for schema in document["components"]["schemas"].values()
               for prop in schema.get("properties", {}).values()]
    assert None not in formats  # a custom datetime format once showed as "format": null
