"""Loading a bank's transactions from Parquet or CSV into the canonical, validated frame."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from schemas.errors import FedfraudInputError
from schemas.transaction import resolve_columns, to_canonical

SUPPORTED_SUFFIXES = (".parquet", ".pq", ".csv", ".csv.gz")


@dataclass(frozen=True)
class LoadedTransactions:
    """A validated transaction frame and the column names it came with.

    Attributes
    ----------
    frame
        Canonical columns (see :mod:`schemas.transaction`) plus every unmapped input column.
    columns
        Canonical field to the input's column name, to write results back under the bank's names.
    """

    frame: pd.DataFrame
    columns: dict[str, str]


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise FedfraudInputError(
        f"cannot tell the format of {path}: name it *.parquet or *.csv",
        {"path": [f"unsupported suffix; expected one of {', '.join(SUPPORTED_SUFFIXES)}"]},
    )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a Parquet or CSV file as it is, refusing missing or unreadable files clearly."""
    path = Path(path)
    kind = _format_of(path)
    if not path.is_file():
        raise FedfraudInputError(f"no such file: {path}", {"path": ["does not exist or is not a file"]})
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (OSError, ValueError, pa.ArrowException, pd.errors.ParserError) as exc:
        raise FedfraudInputError(f"cannot read {path} as {kind}: {exc}", {"path": [str(exc)]}) from None


def load_transactions(
    path: str | Path,
    mapping: Mapping[str, str] | None = None,
    *,
    require_label: bool = False,
) -> LoadedTransactions:
    """Load and validate a bank's transaction file.

    Parameters
    ----------
    path
        A ``.parquet`` or ``.csv`` file.
    mapping
        Canonical field to the file's column name, where the file uses other names.
    require_label
        Whether a fraud label column is required (training needs it, scoring does not).

    Raises
    ------
    schemas.errors.FedfraudInputError
        If the file cannot be read or its content fails validation.
    """
    raw = read_table(path)
    frame = to_canonical(raw, mapping, require_label=require_label)
    return LoadedTransactions(frame=frame, columns=resolve_columns(raw.columns, mapping))


def load_labels(path: str | Path, mapping: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Load and validate a file of confirmed outcomes (``transaction_id``, ``label``).

    Raises
    ------
    schemas.errors.FedfraudInputError
        If the file cannot be read or its content fails validation.
    """
    from schemas.transaction import to_canonical_labels

    return to_canonical_labels(read_table(path), mapping)


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a frame as Parquet (or CSV by suffix), creating the parent folder, atomically."""
    path = Path(path)
    kind = _format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if kind == "parquet":
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return path
