"""GBDTParams: XGBoost-like defaults, and errors that name the bad field."""

from __future__ import annotations

import dataclasses

import pytest

from bank_node.federated.params import GBDTParams


def test_defaults_match_the_design() -> None:
    p = GBDTParams()
    assert (p.n_trees, p.max_depth, p.eta, p.reg_lambda, p.gamma) == (100, 3, 0.1, 1.0, 0.0)
    assert (p.min_child_weight, p.base_score, p.scale_pos_weight, p.n_bins) == (1.0, 0.5, 1.0, 256)
    assert (p.subsample, p.colsample_bytree, p.seed) == (1.0, 1.0, 0)


def test_is_frozen_and_keyword_only() -> None:
    p = GBDTParams(max_depth=6)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_depth = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        GBDTParams(10)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_trees", 0),
        ("max_depth", 0),
        ("eta", 0.0),
        ("reg_lambda", -1.0),
        ("gamma", -0.1),
        ("min_child_weight", -1.0),
        ("base_score", 1.0),
        ("base_score", 0.0),
        ("scale_pos_weight", 0.0),
        ("n_bins", 1),
        ("subsample", 1.5),
        ("colsample_bytree", 0.0),
        ("seed", -1),
        ("eta", float("nan")),
        ("n_trees", 2.5),
    ],
)
def test_bad_value_names_the_field(field: str, value: float) -> None:
    with pytest.raises((ValueError, TypeError), match=field):
        GBDTParams(**{field: value})
