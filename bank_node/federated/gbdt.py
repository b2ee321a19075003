"""Federated gradient-boosted trees: one bank's side of the whole training, as secure sums.

1. ``gbdt/bins``: the bank's counts over the consortium's fixed fine grid; from the sum every bank
   takes the same global quantile cuts, so no bank reveals its own feature distribution.
2. ``gbdt/tree-T/level-D``: per tree and level, the bank's (node x feature x bin x {grad, hess})
   histograms of the nodes to split (only the smaller child of each split; the sibling is the
   parent minus it). Every bank decrypts the same sum and takes the same splits.

The result is the same :class:`~bank_node.federated.ensemble.GBDTModel` on every bank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from bank_node.federated.binning import (
    FeatureScale,
    bin_index,
    fine_grid,
    global_cuts,
    local_grid_counts,
)
from bank_node.federated.ensemble import GBDTModel
from bank_node.federated.grower import TreeGrower
from bank_node.federated.objective import base_margin
from bank_node.federated.params import GBDTParams
from bank_node.federated.privacy import PrivateContribution
from bank_node.federated.party import (
    advance_positions,
    make_level_payload,
    tree_gradients,
    update_margin,
)
from bank_node.federated.rounds import SUM_LIMIT, Algorithm, SumRequest
from bank_node.federated.sampling import column_sample

#: Most the histograms are scaled up by (beyond it no scheme here gains precision).
MAX_HISTOGRAM_SCALE = 2.0**20


def histogram_scale(sum_limit: float, n_rows: float, scale_pos_weight: float) -> float:
    """The fixed-point factor (a power of two) that brings the largest possible cell up to ``sum_limit``.

    A cell sums at most every row's gradient, and a logistic gradient or hessian is at most
    ``max(1, scale_pos_weight)`` in magnitude, so ``n_rows * that`` bounds every summed value.
    """
    bound = max(n_rows, 1.0) * max(1.0, scale_pos_weight)
    room = sum_limit / bound
    if room >= MAX_HISTOGRAM_SCALE:
        return MAX_HISTOGRAM_SCALE
    if room < 1.0:
        raise ValueError(
            f"{n_rows:.0f} training rows exceed what a secure sum carries exactly ({sum_limit:g})"
        )
    return float(2.0 ** np.floor(np.log2(room)))


def federated_gbdt(
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    params: GBDTParams,
    scales: Sequence[FeatureScale],
    party_index: int,
    sum_limit: float = SUM_LIMIT,
    prefix: str = "gbdt",
    privacy: PrivateContribution | None = None,
) -> Algorithm[GBDTModel]:
    """One bank's side of federated histogram GBDT.

    Parameters
    ----------
    X
        The bank's training rows, shape (n_rows, n_features).
    y
        Their 0/1 labels.
    params
        Hyperparameters, identical on every bank.
    scales
        The consortium's declared scale of each feature (fixes the fine grid without data).
    party_index
        The bank's stable number (seeds its row subsample, when subsampling).
    sum_limit
        Largest magnitude a secure sum carries exactly (:data:`~.rounds.SUM_LIMIT`); histograms
        are summed as fixed-point numbers whose factor (a power of two) uses that range, so sums
        are exact and the same under every HE scheme: no tie between two splits is broken by noise.
    prefix
        Round-key prefix.
    privacy
        For a differentially private run: each row's gradient and Hessian are clipped, and every
        vector this bank contributes carries its Gaussian noise (:mod:`.privacy`); the trees are
        then grown from the noisy sums, the same on every bank.

    Returns
    -------
    GBDTModel
        The ensemble, with raw-value thresholds (scores raw features directly).
    """
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(y, dtype=np.float32)
    if X.ndim != 2 or len(X) != len(labels):
        raise ValueError(f"X must be (n_rows, n_features) with one label per row; got {X.shape} and {labels.shape}")
    if len(scales) != X.shape[1]:
        raise ValueError(f"{len(scales)} feature scales for {X.shape[1]} features")
    grid = fine_grid(scales)
    counts = local_grid_counts(X, grid)
    if privacy is not None:
        counts = privacy.noisy(counts, privacy.counts_sensitivity(X.shape[1]))
    summed_counts = yield SumRequest(f"{prefix}/bins", counts)
    if privacy is not None:
        summed_counts = privacy.denoised_counts(summed_counts, X.shape[1])
    cuts = global_cuts(summed_counts, grid, params.n_bins)
    bins = bin_index(X, cuts)
    n_bins = np.array([len(c) + 1 for c in cuts], dtype=np.int64)
    n_rows_global = float(np.rint(grid.feature_counts(summed_counts, 0).sum()))
    if privacy is not None:  # room for the noise too: a noisy cell may exceed every row's sum
        n_rows_global = 2.0 * n_rows_global + 1e6
    factor = histogram_scale(sum_limit, n_rows_global, params.scale_pos_weight)

    margin = np.full(len(labels), base_margin(params.base_score), dtype=np.float32)
    grow_params = params if privacy is None else privacy.growing_params(params, X.shape[1], int(n_bins.max()))
    trees = []
    for t in range(params.n_trees):
        grower = TreeGrower(
            params=grow_params,
            bins_per_feature=n_bins,
            features=column_sample(X.shape[1], params, t),
            cuts=cuts,
        )
        grad, hess = tree_gradients(margin, labels, params, tree_index=t, party_index=party_index)
        if privacy is not None:
            grad, hess = privacy.clip_gradients(grad, hess)
        positions = np.zeros(len(labels), dtype=np.int32)
        depth = 0
        while (request := grower.request) is not None:
            payload = make_level_payload(bins, grad, hess, positions, request)
            if privacy is not None:
                payload = privacy.noisy(payload, privacy.histogram_sensitivity(int(request.features.size)))
            summed = yield SumRequest(f"{prefix}/tree-{t}/level-{depth}", payload, scale=factor)
            result = grower.apply_level_sum(summed)
            positions = advance_positions(bins, positions, result.splits)
            depth += 1
        tree = grower.tree()
        margin = update_margin(margin, tree, positions)
        trees.append(tree)
    return GBDTModel(trees=tuple(trees), base_score=params.base_score, n_features=X.shape[1], cuts=tuple(cuts))
