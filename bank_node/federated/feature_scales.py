"""The consortium's declared scale of each model input, fixed without looking at any bank's data.

The fine grid for global bin cuts is built from these declarations; a value beyond a declared
range still counts, in the end cell, so a wrong guess costs resolution, never correctness.
"""

from __future__ import annotations

from collections.abc import Sequence

from bank_node.federated.binning import FeatureScale

AMOUNT = FeatureScale(kind="log", low=0.01, high=1e6, resolution=2048)
FLAG = FeatureScale(kind="binary", low=0.0, high=1.0)
RISK = FeatureScale(kind="linear", low=0.0, high=1.0, resolution=1024)
#: Transactions in a window: one cell per count up to a ceiling that grows with the window.
COUNT_CEILING_PER_WINDOW_DAY = 64
#: Where a private logistic regression clips amounts (beyond it, one row's influence would grow
#: with its amount) and counts per window day.
PRIVATE_AMOUNT_CEILING = 1000.0
PRIVATE_COUNT_CEILING_PER_WINDOW_DAY = 8


def _count_scale(window_days: int) -> FeatureScale:
    return FeatureScale(kind="integer", low=0, high=COUNT_CEILING_PER_WINDOW_DAY * window_days)


def _window_days(column: str) -> int:
    for part in column.split("_"):
        if part.endswith("DAY") and part[:-3].isdigit():
            return int(part[:-3])
    raise ValueError(f"cannot read the window length from {column!r}")


def scale_of(column: str) -> FeatureScale:
    """The declared scale of one model input, by its name."""
    if column in ("amount", "TX_AMOUNT") or "_AVG_AMOUNT_" in column:
        return AMOUNT
    if column.startswith("TX_DURING_"):
        return FLAG
    if "_RISK_" in column:
        return RISK
    if "_NB_TX_" in column:
        return _count_scale(_window_days(column))
    raise ValueError(f"no declared scale for model input {column!r}")


def scales_for(columns: Sequence[str]) -> list[FeatureScale]:
    """Declared scales of the model inputs, in order."""
    return [scale_of(c) for c in columns]


def clip_range(scale: FeatureScale) -> tuple[float, float]:
    """The declared range a private logistic regression clips a feature into and scales by.

    Declared like the scales, without looking at data: flags and risks keep their range, counts
    keep a ceiling of :data:`PRIVATE_COUNT_CEILING_PER_WINDOW_DAY` a day, amounts
    :data:`PRIVATE_AMOUNT_CEILING`.
    """
    if scale.kind in ("binary", "linear"):
        return float(scale.low), float(scale.high)
    if scale.kind == "integer":
        days = max(1.0, scale.high / COUNT_CEILING_PER_WINDOW_DAY)
        return float(scale.low), float(PRIVATE_COUNT_CEILING_PER_WINDOW_DAY * days)
    if scale.kind == "log":
        return 0.0, PRIVATE_AMOUNT_CEILING
    return -PRIVATE_AMOUNT_CEILING, PRIVATE_AMOUNT_CEILING
