"""The scoring service's quick acceptance of plainly valid transactions agrees with its schema.

``_plainly_valid`` skips marshmallow for requests whose every transaction is plainly valid; it
must never accept what the schema refuses, and must load what it accepts to the same values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from bank_node.service.api import ScoreRequestSchema, _plainly_valid

VALID = {"transaction_id": 7, "timestamp": "2018-09-14T20:18:01", "customer_id": 505, "terminal_id": 6504,
         "amount": 36.14}

ids = st.one_of(st.integers(min_value=-5, max_value=2**64), st.booleans(), st.floats(allow_nan=True),
                st.text(max_size=5), st.none(), st.just("12"))
amounts = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10, max_value=2 * 10**9),
                    st.booleans(), st.just("36.5"), st.none())
stamps = st.one_of(st.datetimes(min_value=datetime(1960, 1, 1)).map(datetime.isoformat),
                   st.just("2018-09-14T20:18:01+02:00"), st.just("2018-09-14"), st.just("14/09/2018"),
                   st.just(""), st.integers(), st.none(), st.text(max_size=12))


@st.composite
def records(draw: st.DrawFn) -> Any:
    record = {"transaction_id": draw(ids), "timestamp": draw(stamps), "customer_id": draw(ids),
              "terminal_id": draw(ids), "amount": draw(amounts)}
    if draw(st.integers(0, 3)):  # mostly exactly valid but for one field
        keep = draw(st.sampled_from(sorted(record)))
        record = {**VALID, keep: record[keep]}
    extra = draw(st.sampled_from([None, None, None, None, "drop", "add"]))
    if extra == "drop":
        record.pop(draw(st.sampled_from(sorted(record))))
    elif extra == "add":
        record["merchant"] = 1
    return record


def schema_load(transactions: Any) -> list[dict[str, Any]] | None:
    try:
        return ScoreRequestSchema().load({"transactions": transactions})["transactions"]  # type: ignore[no-any-return]
    except ValidationError:
        return None


@settings(max_examples=1500, deadline=None)
@given(st.lists(records(), min_size=1, max_size=2))
def test_what_the_quick_check_accepts_the_schema_accepts_with_the_same_values(transactions: list[Any]) -> None:
    quick = _plainly_valid(transactions)
    if quick is not None:
        expected = schema_load(transactions)
        assert expected is not None, transactions
        assert quick == expected
        assert [type(v) for r in quick for v in r.values()] == [type(v) for r in expected for v in r.values()]


def test_plain_transactions_are_accepted_and_others_left_to_the_schema() -> None:
    assert _plainly_valid([VALID, {**VALID, "transaction_id": 8, "amount": 3}]) == schema_load(
        [VALID, {**VALID, "transaction_id": 8, "amount": 3}])
    for bad in ({**VALID, "amount": True}, {**VALID, "amount": "36.14"}, {**VALID, "timestamp": "2018-09-14T20:18:01Z"},
                {**VALID, "customer_id": -1}, {**VALID, "extra": 1}, {k: v for k, v in VALID.items() if k != "amount"},
                {**VALID, "amount": float("nan")}, {**VALID, "timestamp": "1969-12-31T23:59:59"}):
        assert _plainly_valid([VALID, bad]) is None
    assert _plainly_valid([]) is None and _plainly_valid(VALID) is None


@pytest.mark.parametrize("value", [True, 1.0, "1"])
def test_an_id_that_is_not_a_plain_int_is_left_to_the_schema(value: Any) -> None:
    assert _plainly_valid([{**VALID, "terminal_id": value}]) is None


@settings(max_examples=1500, deadline=None)
@given(st.lists(records(), min_size=1, max_size=3), st.booleans(), st.booleans())
def test_the_quick_reading_of_a_body_is_the_standard_librarys_where_it_is_used(
        transactions: list[Any], single: bool, spaced: bool) -> None:
    """The service reads a scoring body with orjson and keeps that reading only for plainly
    valid transactions; those must be read exactly as the standard library reads the bytes (ids
    of 19 or 20 digits, amounts to the last bit, escapes, a single transaction or a list)."""
    import json

    from bank_node.service.api import _plainly_valid_request, _quick_json

    document: Any = transactions[0] if single else {"transactions": transactions}
    raw = json.dumps(document, indent=1 if spaced else None, ensure_ascii=spaced).encode()
    quick = _plainly_valid_request(_quick_json(raw))
    if quick[1] is not None:
        assert quick == _plainly_valid_request(json.loads(raw))


def test_the_quick_reading_is_the_one_used_for_plain_requests() -> None:
    """The property above holds vacuously unless the quick reading is taken: it is, for plainly
    valid requests in both forms, and not for a 19-digit id, which the standard library reads."""
    import json

    from bank_node.service.api import _plainly_valid_request, _quick_json

    for document in (VALID, {"transactions": [VALID, {**VALID, "transaction_id": 8}]}):
        assert _plainly_valid_request(_quick_json(json.dumps(document).encode()))[1] is not None
    assert _quick_json(json.dumps({**VALID, "transaction_id": 10**18}).encode()) is None
