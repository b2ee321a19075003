"""Federated gradient-boosted trees: one bank's side of the whole training, as secure sums.

1. ``gbdt/bins``: the bank's counts over the consortium's fixed fine grid; from the sum every bank
   takes the same global quantile cuts, so no bank reveals its own feature distribution.
2. ``gbdt/tree-T/level-D``: per tree and level, the bank's (node x feature x bin x {grad, hess})
   histograms of the nodes to split (only the smaller child of each split; the sibling is the
   parent minus it). Every bank decrypts the same sum and takes the same splits.

The result is the same :class:`~bank_node.federated.ensemble.GBDTModel` on every bank.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from bank_node.federated.binning import (
    FeatureScale,
    FineGrid,
    bin_index,
    fine_grid,
    global_cuts,
    local_grid_counts,
)
from bank_node.federated.ensemble import GBDTModel
from bank_node.federated.grower import LevelRequest, TreeGrower
from bank_node.federated.objective import base_margin
from bank_node.federated.params import GBDTParams
from bank_node.federated.parts import Local, Parts
from bank_node.federated.privacy import PrivateContribution, clip_gradients
from bank_node.federated.party import (
    advance_positions,
    make_level_payload,
    tree_gradients,
    update_margin,
)
from bank_node.federated.rounds import SUM_LIMIT, Algorithm, SumRequest
from bank_node.federated.sampling import column_sample
from bank_node.federated.tree import Tree
from schemas.errors import FedfraudInputError

Float32Array = npt.NDArray[np.float32]
FloatArray = npt.NDArray[np.float64]

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


@dataclass(frozen=True)
class GBDTPart:
    """Some of a bank's training rows and their state in the tree being grown (see :mod:`.parts`).

    ``X`` is held until the consortium's cuts are known, then replaced by the rows' bins.
    """

    labels: Float32Array
    X: FloatArray | None = None
    bins: npt.NDArray[np.integer] | None = None
    margin: Float32Array | None = None
    grad: Float32Array | None = None
    hess: Float32Array | None = None
    positions: npt.NDArray[np.int32] | None = None

    @classmethod
    def of(cls, X: npt.ArrayLike, y: npt.ArrayLike) -> GBDTPart:
        return cls(labels=np.asarray(y, dtype=np.float32), X=np.asarray(X, dtype=np.float64))

    def grid_counts(self, grid: FineGrid) -> FloatArray:
        """The rows' counts over the consortium's fine grid."""
        assert self.X is not None, "counted before binning"
        return local_grid_counts(self.X, grid)

    def binned(self, cuts: Sequence[Float32Array], margin: float) -> GBDTPart:
        """The rows as bins of the consortium's cuts, every margin at the base margin."""
        assert self.X is not None, "binned twice"
        return replace(self, X=None, bins=bin_index(self.X, cuts),
                       margin=np.full(len(self.labels), margin, dtype=np.float32))

    def tree_started(self, params: GBDTParams, tree_index: int, party_index: int,
                     clip: Callable[[Float32Array, Float32Array], tuple[Float32Array, Float32Array]] | None
                     ) -> GBDTPart:
        """Gradients for tree ``tree_index`` (clipped in a private run), every row in the root."""
        assert self.margin is not None, "a tree started before binning"
        grad, hess = tree_gradients(self.margin, self.labels, params, tree_index=tree_index, party_index=party_index)
        if clip is not None:
            grad, hess = clip(grad, hess)
        return replace(self, grad=grad, hess=hess, positions=np.zeros(len(self.labels), dtype=np.int32))

    def level_payload(self, request: LevelRequest) -> FloatArray:
        """The rows' histograms of a level, as :func:`~.party.make_level_payload` packs them."""
        assert self.bins is not None and self.grad is not None and self.hess is not None and self.positions is not None
        return make_level_payload(self.bins, self.grad, self.hess, self.positions, request)

    def advanced(self, splits: Sequence[Any]) -> GBDTPart:
        """Each row moved to its child by a level's splits."""
        assert self.bins is not None and self.positions is not None
        return replace(self, positions=advance_positions(self.bins, self.positions, splits))

    def tree_ended(self, tree: Tree) -> GBDTPart:
        """The finished tree's leaf values added to the margins."""
        assert self.margin is not None and self.positions is not None
        return replace(self, margin=update_margin(self.margin, tree, self.positions), grad=None, hess=None,
                       positions=None)


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
    return (yield from federated_gbdt_over(Local(GBDTPart.of(X, labels)), n_features=X.shape[1], params=params,
                                           scales=scales, party_index=party_index, sum_limit=sum_limit,
                                           prefix=prefix, privacy=privacy))


def refuse_subsample_in_parts(params: GBDTParams, *, whole: bool) -> None:
    """Row subsampling draws rows by their position in the bank's whole frame: it needs the rows
    held whole, in one process.

    Raises
    ------
    FedfraudInputError
        ``subsample < 1`` over rows held in parts (a bank training on Dask).
    """
    if params.subsample < 1.0 and not whole:
        raise FedfraudInputError(
            "row subsampling (subsample < 1) needs this bank's rows in one process; they are in parts, on Dask",
            {"subsample": ["not available for a bank training on Dask"]})


def federated_gbdt_over(
    rows: Parts[GBDTPart],
    *,
    n_features: int,
    params: GBDTParams,
    scales: Sequence[FeatureScale],
    party_index: int,
    sum_limit: float = SUM_LIMIT,
    prefix: str = "gbdt",
    privacy: PrivateContribution | None = None,
) -> Algorithm[GBDTModel]:
    """:func:`federated_gbdt` over rows held in parts (:mod:`.parts`): in this process, or on a
    Dask cluster's workers. The contributions, hence the model, are those of the rows held whole.

    Raises
    ------
    FedfraudInputError
        Row subsampling over rows that are not held whole (:func:`refuse_subsample_in_parts`).
    """
    if len(scales) != n_features:
        raise ValueError(f"{len(scales)} feature scales for {n_features} features")
    refuse_subsample_in_parts(params, whole=rows.whole)
    grid = fine_grid(scales)
    counts = rows.total(functools.partial(GBDTPart.grid_counts, grid=grid))
    if privacy is not None:
        counts = privacy.noisy(counts, privacy.counts_sensitivity(n_features))
    summed_counts = yield SumRequest(f"{prefix}/bins", counts)
    if privacy is not None:
        summed_counts = privacy.denoised_counts(summed_counts, n_features)
    cuts = global_cuts(summed_counts, grid, params.n_bins)
    rows = rows.apply(functools.partial(GBDTPart.binned, cuts=cuts, margin=float(base_margin(params.base_score))))
    n_bins = np.array([len(c) + 1 for c in cuts], dtype=np.int64)
    n_rows_global = float(np.rint(grid.feature_counts(summed_counts, 0).sum()))
    if privacy is not None:  # room for the noise too: a noisy cell may exceed every row's sum
        n_rows_global = 2.0 * n_rows_global + 1e6
    factor = histogram_scale(sum_limit, n_rows_global, params.scale_pos_weight)

    grow_params = params if privacy is None else privacy.growing_params(params, n_features, int(n_bins.max()))
    # The bounds alone go where the rows are (on Dask, a worker): not the noise generator.
    clip = None if privacy is None else functools.partial(clip_gradients, clip=privacy.clip,
                                                          hessian_clip=privacy.hessian_clip)
    trees = []
    for t in range(params.n_trees):
        grower = TreeGrower(
            params=grow_params,
            bins_per_feature=n_bins,
            features=column_sample(n_features, params, t),
            cuts=cuts,
        )
        rows = rows.apply(functools.partial(GBDTPart.tree_started, params=params, tree_index=t,
                                            party_index=party_index, clip=clip))
        depth = 0
        while (request := grower.request) is not None:
            payload = rows.total(functools.partial(GBDTPart.level_payload, request=request))
            if privacy is not None:
                payload = privacy.noisy(payload, privacy.histogram_sensitivity(int(request.features.size)))
            summed = yield SumRequest(f"{prefix}/tree-{t}/level-{depth}", payload, scale=factor)
            result = grower.apply_level_sum(summed)
            rows = rows.apply(functools.partial(GBDTPart.advanced, splits=tuple(result.splits)))
            depth += 1
        tree = grower.tree()
        rows = rows.apply(functools.partial(GBDTPart.tree_ended, tree=tree))
        trees.append(tree)
    return GBDTModel(trees=tuple(trees), base_score=params.base_score, n_features=n_features, cuts=tuple(cuts))
