"""Global bins: agreed from summed grid counts, exact at the grid's resolution."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from bank_node.federated.binning import (
    FeatureScale,
    bin_index,
    bins_per_feature,
    fine_grid,
    global_cuts,
    local_grid_counts,
    split_threshold,
)

if TYPE_CHECKING:
    from conftest import BankData


def test_cuts_from_summed_bank_counts_equal_cuts_from_pooled_rows(gbdt_data: BankData) -> None:
    grid = fine_grid(gbdt_data.scales)
    pooled = global_cuts(local_grid_counts(gbdt_data.X, grid), grid, n_bins=64)
    assert len(pooled) == len(gbdt_data.cuts)
    for ours, reference in zip(gbdt_data.cuts, pooled, strict=True):
        np.testing.assert_array_equal(ours, reference)


def test_decryption_noise_below_half_a_count_does_not_move_cuts(gbdt_data: BankData) -> None:
    grid = fine_grid(gbdt_data.scales)
    counts = local_grid_counts(gbdt_data.X, grid)
    noisy = counts + np.random.default_rng(0).uniform(-0.4, 0.4, counts.size)
    for a, b in zip(global_cuts(noisy, grid, 64), global_cuts(counts, grid, 64), strict=True):
        np.testing.assert_array_equal(a, b)


def test_bins_respect_n_bins_and_are_balanced(gbdt_data: BankData) -> None:
    n_bins = bins_per_feature(gbdt_data.cuts)
    assert np.all(n_bins <= 64)
    assert gbdt_data.bins.dtype == np.uint8
    for j in (0, 4, 5):  # continuous features: every bin far below twice its fair share
        counts = np.bincount(gbdt_data.bins[:, j], minlength=n_bins[j])
        assert n_bins[j] >= 60
        assert counts.min() > 0
        assert counts.max() < 2.5 * gbdt_data.X.shape[0] / n_bins[j]


def test_few_distinct_values_get_one_bin_each(gbdt_data: BankData) -> None:
    flag, count = gbdt_data.X[:, 3], gbdt_data.X[:, 1]
    assert bins_per_feature(gbdt_data.cuts)[3] == 2
    np.testing.assert_array_equal(gbdt_data.cuts[3], [1.0])
    np.testing.assert_array_equal(gbdt_data.bins[:, 3], flag.astype(np.uint8))
    distinct = np.unique(count)
    np.testing.assert_array_equal(gbdt_data.cuts[1], distinct[1:])  # cut at each next value
    assert np.unique(gbdt_data.bins[:, 1]).size == distinct.size


def test_threshold_of_a_bin_holds_exactly_the_bins_up_to_it(gbdt_data: BankData) -> None:
    X, bins = gbdt_data.X, gbdt_data.bins
    for j, cuts in enumerate(gbdt_data.cuts):
        for b in range(len(cuts)):
            threshold = split_threshold(gbdt_data.cuts, j, b)
            assert threshold.dtype == np.float32
            np.testing.assert_array_equal(X[:, j] < threshold, bins[:, j] <= b)


def test_unseen_values_fall_in_the_end_bins(gbdt_data: BankData) -> None:
    extreme = np.array([[-1e9] * 10, [1e12] * 10], dtype=np.float32)
    bins = bin_index(extreme, gbdt_data.cuts)
    np.testing.assert_array_equal(bins[0], 0)
    np.testing.assert_array_equal(bins[1], bins_per_feature(gbdt_data.cuts) - 1)


def test_last_bin_has_no_threshold(gbdt_data: BankData) -> None:
    last = len(gbdt_data.cuts[3])
    with pytest.raises(ValueError, match="cannot split"):
        split_threshold(gbdt_data.cuts, 3, last)


def test_nan_is_refused(gbdt_data: BankData) -> None:
    X = gbdt_data.X[:5].copy()
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        bin_index(X, gbdt_data.cuts)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "cubic"}, "kind"),
        ({"kind": "log", "low": 0.0, "high": 10.0}, "low"),
        ({"kind": "linear", "low": 1.0, "high": 0.0}, "low"),
        ({"kind": "linear", "resolution": 0}, "resolution"),
        ({"kind": "integer", "low": 0.5, "high": 3.0}, "integer"),
    ],
)
def test_bad_scale_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        FeatureScale(**kwargs)  # type: ignore[arg-type]


def test_grid_is_fixed_without_data() -> None:
    grid = fine_grid([FeatureScale(kind="binary"), FeatureScale(kind="integer", low=0, high=50)])
    assert grid.size == 2 + 51
    np.testing.assert_array_equal(grid.edges[0], [1.0])
    counts = local_grid_counts(np.array([[0, 3], [1, 3], [1, 60]], dtype=np.float32), grid)
    assert counts.shape == (grid.size,)
    assert counts.dtype == np.float64
    np.testing.assert_array_equal(counts[:2], [1, 2])
    assert counts[2 + 3] == 2 and counts[-1] == 1  # value 60 lands in the top cell
