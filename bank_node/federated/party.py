"""The bank side of one boosting round: gradients, per-level payloads, row positions.

For tree ``t`` a bank computes its rows' gradients (:func:`tree_gradients`), starts every
row at the root (``positions = zeros``), and then for each level:

1. ``payload = make_level_payload(bins, grad, hess, positions, request)``: the vector it
   encrypts and uploads (length ``request.payload_length``);
2. after the consortium sum is decrypted and fed to the shared
   :class:`~bank_node.federated.grower.TreeGrower`,
   ``positions = advance_positions(bins, positions, result.splits)``.

When the grower has finished, ``positions`` holds every row's leaf and
:func:`update_margin` adds the tree to the bank's margins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .grower import LevelRequest, NodeSplit
from .histogram import build_histograms, flatten_histograms
from .objective import logistic_gradients
from .params import GBDTParams
from .sampling import row_sample_mask
from .tree import Tree

__all__ = ["advance_positions", "make_level_payload", "tree_gradients", "update_margin"]

Float32Array = npt.NDArray[np.float32]
FloatArray = npt.NDArray[np.float64]
PositionArray = npt.NDArray[np.int32]


def tree_gradients(
    margin: npt.ArrayLike,
    labels: npt.ArrayLike,
    params: GBDTParams,
    *,
    tree_index: int,
    party_index: int = 0,
) -> tuple[Float32Array, Float32Array]:
    """Gradients and hessians of one bank's rows for one tree, row subsampling applied.

    Parameters
    ----------
    margin : array_like, shape (n_rows,)
        The bank's current float32 margins.
    labels : array_like, shape (n_rows,)
        0/1 labels.
    params : GBDTParams
    tree_index : int
        0-based index of the tree being grown.
    party_index : int
        Stable number of the bank; seeds its row sample.

    Returns
    -------
    grad, hess : numpy.ndarray of float32, shape (n_rows,)
        Zero for rows left out of this tree's sample (as XGBoost does).
    """
    grad, hess = logistic_gradients(margin, labels, scale_pos_weight=params.scale_pos_weight)
    if params.subsample < 1.0:
        keep = row_sample_mask(grad.size, params, tree_index, party_index)
        grad = np.where(keep, grad, np.float32(0.0)).astype(np.float32)
        hess = np.where(keep, hess, np.float32(0.0)).astype(np.float32)
    return grad, hess


def make_level_payload(
    bins: npt.NDArray[np.integer],
    grad: npt.ArrayLike,
    hess: npt.ArrayLike,
    positions: npt.ArrayLike,
    request: LevelRequest,
) -> FloatArray:
    """The flat vector one bank contributes to a level's secure sum.

    Parameters
    ----------
    bins : numpy.ndarray, shape (n_rows, n_features)
        The bank's global bin indices.
    grad, hess : array_like, shape (n_rows,)
        From :func:`tree_gradients`.
    positions : array_like, shape (n_rows,)
        Current node of each row.
    request : LevelRequest
        The grower's pending request.

    Returns
    -------
    numpy.ndarray of float64, shape (request.payload_length,)
        Packed histograms of ``request.nodes`` over ``request.features``: node, feature,
        bin, then (gradient, hessian).
    """
    hist = build_histograms(
        bins, grad, hess, positions, request.nodes, request.n_bins, features=request.features
    )
    return flatten_histograms(hist, request.bins_per_feature)


def advance_positions(
    bins: npt.NDArray[np.integer], positions: npt.ArrayLike, splits: Sequence[NodeSplit]
) -> PositionArray:
    """Move the rows of split nodes to the children the splits send them to.

    Parameters
    ----------
    bins : numpy.ndarray, shape (n_rows, n_features)
    positions : array_like, shape (n_rows,)
        Current node of each row.
    splits : sequence of NodeSplit
        A level's splits.

    Returns
    -------
    numpy.ndarray of int32, shape (n_rows,)
        New positions (a new array).
    """
    pos = np.array(positions, dtype=np.int32)
    if not splits:
        return pos
    size = max(int(pos.max(initial=0)), max(s.node for s in splits)) + 1
    split_at = np.full(size, -1, dtype=np.int64)
    split_at[[s.node for s in splits]] = np.arange(len(splits))
    index = split_at[pos]
    rows = np.flatnonzero(index >= 0)
    chosen = index[rows]
    feature = np.array([s.feature for s in splits], dtype=np.int64)[chosen]
    split_bin = np.array([s.split_bin for s in splits], dtype=np.int64)[chosen]
    left = np.array([s.left for s in splits], dtype=np.int32)[chosen]
    right = np.array([s.right for s in splits], dtype=np.int32)[chosen]
    go_left = np.asarray(bins)[rows, feature] <= split_bin
    pos[rows] = np.where(go_left, left, right)
    return pos


def update_margin(margin: npt.ArrayLike, tree: Tree, positions: npt.ArrayLike) -> Float32Array:
    """Add a finished tree's leaf values to the margins (float32, as XGBoost does).

    Parameters
    ----------
    margin : array_like, shape (n_rows,)
    tree : Tree
    positions : array_like, shape (n_rows,)
        Leaf of each row (the positions after the tree's last level).

    Returns
    -------
    numpy.ndarray of float32, shape (n_rows,)
    """
    return np.asarray(margin, dtype=np.float32) + tree.value[np.asarray(positions, dtype=np.int64)]
