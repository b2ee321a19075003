"""The transaction record: what a bank's transaction must hold, and how its columns are named.

A bank's own files rarely use fedfraud's column names. A *column mapping* says, for each
canonical field, which column of the bank's file holds it; the handbook's names
(``TX_AMOUNT``, ``TX_DATETIME``, ``TX_FRAUD``, ...) are recognised without any mapping.

Two entry points share one set of rules:

- :class:`TransactionSchema`, a marshmallow schema for one record (JSON bodies);
- :func:`to_canonical`, the vectorised check of a whole frame (files of millions of rows), which
  renames the mapped columns to the canonical names and refuses bad input with a
  :class:`~schemas.errors.TransactionValidationError` naming each field and its first offending
  rows. Nothing is silently dropped or coerced: a value that is not already what the field
  needs (an integer id, a number, a time, a 0/1 label) is an error, not a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from schemas.errors import TransactionValidationError

REQUIRED_FIELDS: tuple[str, ...] = ("transaction_id", "timestamp", "customer_id", "terminal_id", "amount")
LABEL_FIELD = "label"
CANONICAL_FIELDS: tuple[str, ...] = REQUIRED_FIELDS + (LABEL_FIELD,)
ID_FIELDS: tuple[str, ...] = ("transaction_id", "customer_id", "terminal_id")

#: Column names of the Fraud Detection Handbook's simulated data set.
HANDBOOK_COLUMNS: dict[str, str] = {
    "transaction_id": "TRANSACTION_ID",
    "timestamp": "TX_DATETIME",
    "customer_id": "CUSTOMER_ID",
    "terminal_id": "TERMINAL_ID",
    "amount": "TX_AMOUNT",
    "label": "TX_FRAUD",
}

#: How many offending rows an error message lists before summarising the rest.
MAX_ROWS_SHOWN = 5


class TransactionSchema(Schema):
    """One card transaction as it arrives in a JSON body."""

    transaction_id = fields.Integer(required=True, strict=True)
    timestamp = fields.NaiveDateTime(required=True)
    customer_id = fields.Integer(required=True, strict=True)
    terminal_id = fields.Integer(required=True, strict=True)
    amount = fields.Float(required=True, allow_nan=False, validate=validate.Range(min=0))
    label = fields.Integer(load_default=None, allow_none=True, strict=True, validate=validate.OneOf([0, 1]))


class ColumnMappingSchema(Schema):
    """A bank's column names for the canonical fields; fields left out keep their default."""

    transaction_id = fields.String(validate=validate.Length(min=1))
    timestamp = fields.String(validate=validate.Length(min=1))
    customer_id = fields.String(validate=validate.Length(min=1))
    terminal_id = fields.String(validate=validate.Length(min=1))
    amount = fields.String(validate=validate.Length(min=1))
    label = fields.String(validate=validate.Length(min=1))

    @validates_schema
    def _distinct_sources(self, data: Mapping[str, str], **_: Any) -> None:
        seen: dict[str, str] = {}
        for field, source in data.items():
            if source in seen:
                raise ValidationError(f"column {source!r} is mapped to both {seen[source]!r} and {field!r}")
            seen[source] = field


def parse_column_mapping(text: str) -> dict[str, str]:
    """Parse ``"amount=AMT,timestamp=WHEN"`` into a validated mapping.

    Raises
    ------
    TransactionValidationError
        If an item is not ``field=column`` or names an unknown field.
    """
    raw: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        field, sep, column = item.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise TransactionValidationError(
                f"column mapping item {item!r} is not of the form field=column",
                {"columns": [f"expected field=column, got {item!r}"]},
            )
        raw[field.strip()] = column.strip()
    return validate_column_mapping(raw)


def validate_column_mapping(raw: Mapping[str, Any]) -> dict[str, str]:
    """Validate a mapping of canonical field to source column name."""
    try:
        loaded: dict[str, str] = ColumnMappingSchema().load(dict(raw))
    except ValidationError as exc:
        messages = exc.normalized_messages()
        errors = {str(k): [str(m) for m in (v if isinstance(v, list) else [v])] for k, v in messages.items()}
        raise TransactionValidationError("invalid column mapping", errors) from None
    return loaded


def resolve_columns(columns: list[str] | pd.Index, mapping: Mapping[str, str] | None = None) -> dict[str, str]:
    """Decide which source column holds each canonical field.

    An explicit mapping wins; otherwise the canonical name itself, then the handbook's name.
    Fields found nowhere are left out (the caller decides whether they were required).
    """
    present = set(map(str, columns))
    explicit = validate_column_mapping(mapping or {})
    resolved: dict[str, str] = {}
    for field in CANONICAL_FIELDS:
        if field in explicit:
            resolved[field] = explicit[field]
        elif field in present:
            resolved[field] = field
        elif HANDBOOK_COLUMNS[field] in present:
            resolved[field] = HANDBOOK_COLUMNS[field]
    return resolved


def _rows(frame: pd.DataFrame, mask: np.ndarray) -> str:
    """Describe the first offending rows: their 0-based position and transaction id when known."""
    positions = np.flatnonzero(mask)
    shown = []
    ids = frame["transaction_id"] if "transaction_id" in frame.columns else None
    for pos in positions[:MAX_ROWS_SHOWN]:
        if ids is not None:
            shown.append(f"{pos} (transaction_id {ids.iloc[pos]!r})")
        else:
            shown.append(str(pos))
    more = len(positions) - len(shown)
    suffix = f" and {more} more" if more > 0 else ""
    noun = "row" if len(positions) == 1 else "rows"
    return f"{noun} {', '.join(shown)}{suffix}"


def _check_integer_column(frame: pd.DataFrame, field: str, errors: dict[str, list[str]]) -> None:
    column = frame[field]
    if pd.api.types.is_integer_dtype(column.dtype) and not pd.api.types.is_extension_array_dtype(column.dtype):
        return
    missing = column.isna().to_numpy()
    if missing.any():
        errors[field] = [f"missing in {_rows(frame, missing)}"]
        return
    if pd.api.types.is_float_dtype(column.dtype):
        values = column.to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            errors[field] = [f"not an integer in {_rows(frame, bad)}"]
            return
        frame[field] = values.astype(np.int64)
        return
    if pd.api.types.is_integer_dtype(column.dtype):  # nullable Int64 without missing values
        frame[field] = column.to_numpy(dtype=np.int64)
        return
    numeric = pd.to_numeric(column, errors="coerce")
    bad = numeric.isna().to_numpy()
    if bad.any():
        errors[field] = [f"not an integer in {_rows(frame, bad)}"]
        return
    values = numeric.to_numpy(dtype=np.float64)
    bad = values != np.round(values)
    if bad.any():
        errors[field] = [f"not an integer in {_rows(frame, bad)}"]
        return
    frame[field] = numeric.astype(np.int64)


def _check_timestamp(frame: pd.DataFrame, errors: dict[str, list[str]]) -> None:
    column = frame["timestamp"]
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        # One clock for every bank: aware times are compared in UTC.
        column = column.dt.tz_convert("UTC").dt.tz_localize(None)
    elif not pd.api.types.is_datetime64_dtype(column.dtype):
        missing = column.isna().to_numpy()
        if missing.any():
            errors["timestamp"] = [f"missing in {_rows(frame, missing)}"]
            return
        if pd.api.types.is_numeric_dtype(column.dtype):
            errors["timestamp"] = ["numbers are not times: give ISO 8601 text or a datetime column"]
            return
        parsed = pd.to_datetime(column, errors="coerce", format="ISO8601", utc=True)
        bad = parsed.isna().to_numpy()
        if bad.any():
            errors["timestamp"] = [f"unparsable time in {_rows(frame, bad)}"]
            return
        column = parsed.dt.tz_localize(None)
    missing = column.isna().to_numpy()
    if missing.any():
        errors["timestamp"] = [f"missing in {_rows(frame, missing)}"]
        return
    frame["timestamp"] = column.astype("datetime64[ns]")


def _check_amount(frame: pd.DataFrame, errors: dict[str, list[str]]) -> None:
    column = frame["amount"]
    if pd.api.types.is_bool_dtype(column.dtype) or not pd.api.types.is_numeric_dtype(column.dtype):
        numeric = pd.to_numeric(column, errors="coerce")
        bad = (numeric.isna() & column.notna()).to_numpy()
        if bad.any():
            errors["amount"] = [f"not a number in {_rows(frame, bad)}"]
            return
        column = numeric
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    problems = []
    missing = np.isnan(values)
    if missing.any():
        problems.append(f"missing in {_rows(frame, missing)}")
    infinite = np.isinf(values)
    if infinite.any():
        problems.append(f"infinite in {_rows(frame, infinite)}")
    negative = values < 0
    if negative.any():
        problems.append(f"negative in {_rows(frame, negative)}")
    if problems:
        errors["amount"] = problems
        return
    frame["amount"] = values


def _check_label(frame: pd.DataFrame, errors: dict[str, list[str]]) -> None:
    column = frame["label"]
    missing = column.isna().to_numpy()
    if missing.any():
        errors["label"] = [f"missing (NaN) in {_rows(frame, missing)}"]
        return
    numeric = pd.to_numeric(column, errors="coerce") if not pd.api.types.is_numeric_dtype(column.dtype) else column
    values = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        errors["label"] = [f"not 0 or 1 in {_rows(frame, bad)}"]
        return
    frame["label"] = values.astype(np.int64)


def _require_columns(frame: pd.DataFrame, resolved: Mapping[str, str], needed: tuple[str, ...], what: str) -> None:
    """Raise naming every field of ``needed`` with no column (or a mapped column not in the input)."""
    errors: dict[str, list[str]] = {}
    for field in needed:
        source = resolved.get(field)
        if source is None:
            looked = sorted({field, HANDBOOK_COLUMNS[field]})
            errors[field] = [f"no column for it (looked for {' or '.join(looked)}; map one with {field}=COLUMN)"]
        elif source not in frame.columns:
            errors[field] = [f"mapped column {source!r} is not in the input"]
    if errors:
        available = ", ".join(map(str, frame.columns[:20]))
        raise TransactionValidationError(f"{what} (the input has: {available})", errors)


def to_canonical(
    frame: pd.DataFrame,
    mapping: Mapping[str, str] | None = None,
    *,
    require_label: bool = False,
) -> pd.DataFrame:
    """Validate a frame of transactions and rename its columns to the canonical fields.

    Columns that are not mapped are kept unchanged, so the caller can write them back out.

    Parameters
    ----------
    frame
        The bank's transactions, one row each.
    mapping
        Canonical field to the bank's column name, for the fields not named canonically or as in
        the handbook.
    require_label
        Whether the ``label`` field (0/1 fraud label) must be present.

    Returns
    -------
    pandas.DataFrame
        A new frame with canonical, typed columns: int64 ids, datetime64[ns] ``timestamp``,
        float64 ``amount`` and int64 ``label`` when present.

    Raises
    ------
    TransactionValidationError
        Naming every failing field with its first offending rows.
    """
    resolved = resolve_columns(frame.columns, mapping)
    needed = REQUIRED_FIELDS + ((LABEL_FIELD,) if require_label else ())
    _require_columns(frame, resolved, needed, "missing required columns")
    errors: dict[str, list[str]] = {}

    clashes = [c for c in frame.columns if c in CANONICAL_FIELDS and resolved.get(c) not in (None, c)]
    if clashes:
        raise TransactionValidationError(
            "input has columns named like canonical fields that are mapped elsewhere",
            {c: [f"column {c!r} would be overwritten by {resolved[c]!r}"] for c in clashes},
        )

    out = frame.rename(columns={source: field for field, source in resolved.items()})
    out = out.reset_index(drop=True)
    for field in ID_FIELDS:
        _check_integer_column(out, field, errors)
    _check_timestamp(out, errors)
    _check_amount(out, errors)
    if LABEL_FIELD in out.columns:
        _check_label(out, errors)
    if "transaction_id" not in errors:
        duplicated = out["transaction_id"].duplicated(keep=False).to_numpy()
        if duplicated.any():
            errors["transaction_id"] = [f"duplicate ids in {_rows(out, duplicated)}"]
    if errors:
        raise TransactionValidationError(f"{len(out)} transactions failed validation", errors)
    return out


def to_canonical_labels(frame: pd.DataFrame, mapping: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Validate a file of confirmed outcomes: ``transaction_id`` and ``label`` (0 genuine, 1 fraud).

    Raises
    ------
    TransactionValidationError
        A missing column, a non-integer id, a label other than 0 or 1, or an id given twice.
    """
    resolved = resolve_columns(frame.columns, mapping)
    _require_columns(frame, resolved, ("transaction_id", LABEL_FIELD), "missing label columns")
    errors: dict[str, list[str]] = {}
    out = frame.rename(columns={resolved[f]: f for f in ("transaction_id", LABEL_FIELD)})[["transaction_id", LABEL_FIELD]]
    out = out.reset_index(drop=True)
    _check_integer_column(out, "transaction_id", errors)
    _check_label(out, errors)
    if "transaction_id" not in errors:
        duplicated = out["transaction_id"].duplicated(keep=False).to_numpy()
        if duplicated.any():
            errors["transaction_id"] = [f"labelled twice in {_rows(out, duplicated)}"]
    if errors:
        raise TransactionValidationError(f"{len(out)} labels failed validation", errors)
    return out


def from_canonical(frame: pd.DataFrame, mapping: Mapping[str, str]) -> pd.DataFrame:
    """Rename canonical columns back to the bank's own names (the inverse of :func:`to_canonical`)."""
    return frame.rename(columns={field: source for field, source in mapping.items() if field in frame.columns})
