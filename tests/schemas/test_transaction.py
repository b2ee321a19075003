"""The transaction schema refuses bad input by naming the field and the rows, and maps bank columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from marshmallow import ValidationError

from schemas.errors import TransactionValidationError
from schemas.transaction import (
    TransactionSchema,
    from_canonical,
    parse_column_mapping,
    to_canonical,
)


def handbook_frame(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "TRANSACTION_ID": np.arange(n, dtype=np.int64),
            "TX_DATETIME": pd.date_range("2018-04-01 08:00", periods=n, freq="h"),
            "CUSTOMER_ID": np.arange(n, dtype=np.int64) % 3,
            "TERMINAL_ID": np.arange(n, dtype=np.int64) % 2,
            "TX_AMOUNT": np.linspace(1.0, 60.0, n),
            "TX_FRAUD": np.array([0, 1] * (n // 2), dtype=np.int64),
            "TX_FRAUD_SCENARIO": np.zeros(n, dtype=np.int64),
        }
    )


def test_handbook_columns_load_without_mapping_and_round_trip() -> None:
    raw = handbook_frame()
    frame = to_canonical(raw, require_label=True)
    assert list(frame.columns[:6]) == ["transaction_id", "timestamp", "customer_id", "terminal_id", "amount", "label"]
    assert frame["TX_FRAUD_SCENARIO"].tolist() == raw["TX_FRAUD_SCENARIO"].tolist()
    mapping = {"transaction_id": "TRANSACTION_ID", "timestamp": "TX_DATETIME", "customer_id": "CUSTOMER_ID",
               "terminal_id": "TERMINAL_ID", "amount": "TX_AMOUNT", "label": "TX_FRAUD"}
    back = from_canonical(frame, mapping)
    # Times are held at nanosecond resolution whatever the input's resolution; values are kept.
    pd.testing.assert_frame_equal(back, raw.assign(TX_DATETIME=raw["TX_DATETIME"].astype("datetime64[ns]")))


def test_bank_specific_names_through_a_mapping() -> None:
    raw = handbook_frame().rename(columns={"TX_AMOUNT": "amt_eur", "TX_DATETIME": "booked_at"})
    mapping = parse_column_mapping("amount=amt_eur, timestamp=booked_at")
    frame = to_canonical(raw, mapping)
    assert frame["amount"].tolist() == raw["amt_eur"].tolist()
    assert frame["timestamp"].tolist() == raw["booked_at"].tolist()


def test_iso_text_times_parse_and_aware_times_become_utc() -> None:
    raw = handbook_frame(2)
    raw["TX_DATETIME"] = ["2018-04-01T10:00:00+02:00", "2018-04-01 09:30:00+00:00"]
    frame = to_canonical(raw)
    assert frame["timestamp"].tolist() == [pd.Timestamp("2018-04-01 08:00"), pd.Timestamp("2018-04-01 09:30")]


@pytest.mark.parametrize(
    ("mutate", "field", "fragment"),
    [
        (lambda f: f.drop(columns=["TX_AMOUNT"]), "amount", "no column for it"),
        (lambda f: f.assign(TX_AMOUNT=["1.0", "x", "2", "3", "4", "5"]), "amount", "not a number in row 1"),
        (lambda f: f.assign(TX_AMOUNT=[1.0, -2.0, 3.0, -4.0, 5.0, 6.0]), "amount", "negative in rows 1"),
        (lambda f: f.assign(TX_AMOUNT=[1.0, np.nan, 3.0, 4.0, 5.0, 6.0]), "amount", "missing in row 1"),
        (lambda f: f.assign(TX_DATETIME=["2018-04-01"] * 5 + ["yesterday"]), "timestamp", "unparsable time in row 5"),
        (lambda f: f.assign(TRANSACTION_ID=[0, 1, 2, 2, 4, 5]), "transaction_id", "duplicate ids in rows 2"),
        (lambda f: f.assign(TX_FRAUD=[0.0, 1.0, np.nan, 0.0, 0.0, 1.0]), "label", "missing (NaN) in row 2"),
        (lambda f: f.assign(TX_FRAUD=[0, 1, 2, 0, 0, 1]), "label", "not 0 or 1 in row 2"),
        (lambda f: f.assign(CUSTOMER_ID=[0.0, 1.5, 2.0, 0.0, 1.0, 2.0]), "customer_id", "not an integer in row 1"),
        (lambda f: f.assign(TERMINAL_ID=["a", "1", "0", "1", "0", "1"]), "terminal_id", "not an integer in row 0"),
    ],
)
def test_bad_input_names_the_field_and_first_rows(mutate, field, fragment) -> None:  # type: ignore[no-untyped-def]
    raw = mutate(handbook_frame())
    with pytest.raises(TransactionValidationError) as info:
        to_canonical(raw, require_label=True)
    assert field in info.value.errors
    assert any(fragment in message for message in info.value.errors[field]), info.value.errors
    assert field in str(info.value)


def test_many_offending_rows_are_summarised() -> None:
    raw = handbook_frame(40)
    raw["TX_AMOUNT"] = -1.0
    with pytest.raises(TransactionValidationError) as info:
        to_canonical(raw)
    assert "and 35 more" in info.value.errors["amount"][0]


def test_every_failing_field_is_reported_at_once() -> None:
    raw = handbook_frame().assign(TX_AMOUNT=-1.0, TX_FRAUD=3)
    with pytest.raises(TransactionValidationError) as info:
        to_canonical(raw, require_label=True)
    assert set(info.value.errors) == {"amount", "label"}


def test_input_is_never_modified() -> None:
    raw = handbook_frame().assign(TX_AMOUNT=["1", "2", "3", "4", "5", "6"])
    before = raw.copy()
    to_canonical(raw)
    pd.testing.assert_frame_equal(raw, before)


def test_mapping_refuses_unknown_fields_and_shared_columns() -> None:
    with pytest.raises(TransactionValidationError, match="invalid column mapping"):
        parse_column_mapping("amout=AMT")
    with pytest.raises(TransactionValidationError) as info:
        parse_column_mapping("amount=X,label=X")
    assert "mapped to both" in str(info.value)
    with pytest.raises(TransactionValidationError, match="field=column"):
        parse_column_mapping("amount")


def test_record_schema_refuses_bad_records() -> None:
    good = {"transaction_id": 1, "timestamp": "2018-04-01T10:00:00", "customer_id": 2, "terminal_id": 3, "amount": 9.5}
    assert TransactionSchema().load(good)["label"] is None
    with pytest.raises(ValidationError) as info:
        TransactionSchema().load({**good, "amount": -1, "label": 2})
    assert set(info.value.messages) == {"amount", "label"}
