"""Gradient histograms per (node, feature, bin), and their flat layout for encryption.

A histogram array has shape ``(n_nodes, n_features, n_bins, 2)``: channel 0 sums the
gradients and channel 1 the hessians of a node's rows whose value of a feature falls in a
bin. Sums are float64, accumulated row by row in row order, as XGBoost's ``hist`` does.

Only one child of each split needs its histogram built (and encrypted, and summed over
banks): the sibling is ``parent - child`` (:func:`subtract_histograms`), which every bank
can compute from sums it already holds. :func:`choose_children_to_build` picks the child,
deterministically from the decrypted split statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "build_histograms",
    "choose_children_to_build",
    "flatten_histograms",
    "node_totals",
    "payload_length",
    "subtract_histograms",
    "unflatten_histograms",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

GRAD, HESS = 0, 1


def build_histograms(
    bins: npt.NDArray[np.integer],
    grad: npt.ArrayLike,
    hess: npt.ArrayLike,
    positions: npt.ArrayLike,
    nodes: Sequence[int] | npt.NDArray[np.integer],
    n_bins: int,
    *,
    features: Sequence[int] | npt.NDArray[np.integer] | None = None,
) -> FloatArray:
    """Sum gradients and hessians per (node, feature, bin) for the rows of one bank.

    Parameters
    ----------
    bins : numpy.ndarray, shape (n_rows, n_columns)
        Global bin index of every value (:func:`~bank_node.federated.binning.bin_index`).
    grad, hess : array_like, shape (n_rows,)
        Gradient and hessian of every row (float32 from the objective; rows left out by
        subsampling carry zeros).
    positions : array_like, shape (n_rows,)
        Tree node each row currently sits in.
    nodes : sequence of int
        Node ids to build, in the order of the output's first axis. Rows in other nodes
        are ignored.
    n_bins : int
        Size of the bin axis; every bin index must be below it.
    features : sequence of int, optional
        Columns of ``bins`` to use, in the order of the output's second axis (default: all).

    Returns
    -------
    numpy.ndarray, shape (len(nodes), len(features), n_bins, 2)
        float64 sums; channel 0 gradients, channel 1 hessians.
    """
    bins = np.asarray(bins)
    if bins.ndim != 2:
        raise ValueError(f"bins must be 2-D (n_rows, n_features), got shape {bins.shape}")
    n_rows = bins.shape[0]
    g = np.asarray(grad, dtype=np.float64)
    h = np.asarray(hess, dtype=np.float64)
    pos = np.asarray(positions, dtype=np.int64)
    for name, array in (("grad", g), ("hess", h), ("positions", pos)):
        if array.shape != (n_rows,):
            raise ValueError(f"{name} must have shape ({n_rows},), got {array.shape}")
    node_ids = np.asarray(nodes, dtype=np.int64).reshape(-1)
    columns = (
        np.arange(bins.shape[1], dtype=np.int64)
        if features is None
        else np.asarray(features, dtype=np.int64).reshape(-1)
    )
    n_nodes, n_features = node_ids.size, columns.size
    out = np.zeros((n_nodes, n_features, n_bins, 2), dtype=np.float64)
    if n_nodes == 0 or n_features == 0 or n_rows == 0:
        return out
    if bins.size and int(bins.max()) >= n_bins:
        raise ValueError(f"bin index {int(bins.max())} is out of range for n_bins={n_bins}")

    # Slot of each row's node in `nodes`, or -1 for rows of other nodes.
    lookup = np.full(max(int(pos.max()), int(node_ids.max())) + 1, -1, dtype=np.int64)
    lookup[node_ids] = np.arange(n_nodes)
    slot = lookup[pos] if pos.min() >= 0 else np.where(pos >= 0, lookup[np.maximum(pos, 0)], -1)
    rows = np.flatnonzero(slot >= 0)
    slot, g, h = slot[rows], g[rows], h[rows]
    size = n_nodes * n_bins
    for k, column in enumerate(columns.tolist()):
        # bincount adds weights in input order: per bin, rows in row order, as XGBoost does.
        cell = slot * n_bins + bins[rows, column]
        out[:, k, :, GRAD] = np.bincount(cell, weights=g, minlength=size).reshape(n_nodes, n_bins)
        out[:, k, :, HESS] = np.bincount(cell, weights=h, minlength=size).reshape(n_nodes, n_bins)
    return out


def node_totals(hist: FloatArray) -> FloatArray:
    """Gradient and hessian sum of each node, from its histogram.

    The bins of the first feature are added in order, as XGBoost sums the root of dense
    data; every feature's bins hold all the node's rows.

    Parameters
    ----------
    hist : numpy.ndarray, shape (n_nodes, n_features, n_bins, 2)

    Returns
    -------
    numpy.ndarray, shape (n_nodes, 2)
        ``[G, H]`` per node.
    """
    if hist.shape[1] == 0:
        return np.zeros((hist.shape[0], 2), dtype=np.float64)
    # cumsum adds strictly left to right; np.sum would add pairwise.
    return np.cumsum(hist[:, 0, :, :], axis=1)[:, -1, :]


def subtract_histograms(parent: FloatArray, child: FloatArray) -> FloatArray:
    """Histogram of a node's sibling: ``parent - child`` (the sibling trick).

    Parameters
    ----------
    parent, child : numpy.ndarray, same shape
        Histograms of split nodes and of the built child of each, aligned on the first axis.

    Returns
    -------
    numpy.ndarray
        Histograms of the other children. Approximate (CKKS) inputs carry their noise into
        the result, so noise grows by one term per level.
    """
    if parent.shape != child.shape:
        raise ValueError(f"shapes differ: parent {parent.shape}, child {child.shape}")
    return parent - child


def choose_children_to_build(
    left_children: npt.ArrayLike,
    right_children: npt.ArrayLike,
    left_hess: npt.ArrayLike,
    right_hess: npt.ArrayLike,
) -> tuple[IntArray, IntArray]:
    """For each split, the child whose histogram is built and the one derived by subtraction.

    The child with the smaller hessian sum is built (the left one on ties). The hessian sums
    are known identically to every bank after decryption, so every bank makes the same
    choice without an extra round. Which child is built does not change the encrypted
    payload's size, only the local cost of building it and the rounding of the result.

    Parameters
    ----------
    left_children, right_children : array_like of int, shape (n_splits,)
    left_hess, right_hess : array_like of float, shape (n_splits,)

    Returns
    -------
    build, derive : numpy.ndarray of int64, shape (n_splits,)
    """
    left = np.asarray(left_children, dtype=np.int64)
    right = np.asarray(right_children, dtype=np.int64)
    right_smaller = np.asarray(right_hess, dtype=np.float64) < np.asarray(left_hess, dtype=np.float64)
    return np.where(right_smaller, right, left), np.where(right_smaller, left, right)


def _bin_mask(bins_per_feature: npt.ArrayLike, n_bins: int) -> npt.NDArray[np.bool_]:
    counts = np.asarray(bins_per_feature, dtype=np.int64).reshape(-1)
    if counts.size and (counts.min() < 1 or counts.max() > n_bins):
        raise ValueError(f"bins_per_feature must lie in [1, {n_bins}]")
    return np.arange(n_bins)[None, :] < counts[:, None]


def payload_length(n_nodes: int, bins_per_feature: npt.ArrayLike) -> int:
    """Length of the flat vector holding ``n_nodes`` packed histograms."""
    return int(n_nodes * 2 * np.asarray(bins_per_feature, dtype=np.int64).sum())


def flatten_histograms(
    hist: FloatArray, bins_per_feature: npt.ArrayLike | None = None
) -> FloatArray:
    """Pack histograms into one 1-D vector (the payload a bank encrypts).

    Layout: node, then feature, then bin, then channel (gradient, hessian). With
    ``bins_per_feature`` only each feature's real bins are kept, so a 0/1 flag costs 4
    numbers per node instead of ``4 * n_bins``.

    Parameters
    ----------
    hist : numpy.ndarray, shape (n_nodes, n_features, n_bins, 2)
    bins_per_feature : array_like of int, shape (n_features,), optional
        Number of bins of each feature in ``hist``; bins beyond it must be empty.

    Returns
    -------
    numpy.ndarray, shape (payload_length(n_nodes, bins_per_feature),)
    """
    if hist.ndim != 4 or hist.shape[3] != 2:
        raise ValueError(f"hist must have shape (n_nodes, n_features, n_bins, 2), got {hist.shape}")
    if bins_per_feature is None:
        return np.ascontiguousarray(hist, dtype=np.float64).reshape(-1)
    mask = _bin_mask(bins_per_feature, hist.shape[2])
    if mask.shape[0] != hist.shape[1]:
        raise ValueError(f"bins_per_feature has {mask.shape[0]} entries for {hist.shape[1]} features")
    return np.ascontiguousarray(hist[:, mask, :], dtype=np.float64).reshape(-1)


def unflatten_histograms(
    vector: npt.ArrayLike,
    *,
    n_nodes: int,
    n_bins: int,
    bins_per_feature: npt.ArrayLike,
    packed: bool = True,
) -> FloatArray:
    """Inverse of :func:`flatten_histograms`.

    Parameters
    ----------
    vector : array_like, 1-D
        A flat payload, typically the decrypted sum over banks.
    n_nodes, n_bins : int
        Shape of the result's node and bin axes.
    bins_per_feature : array_like of int, shape (n_features,)
        Bins of each feature; with ``packed=False`` only its length is used.
    packed : bool
        Whether ``vector`` was flattened with ``bins_per_feature`` (default) or without.

    Returns
    -------
    numpy.ndarray, shape (n_nodes, n_features, n_bins, 2)
        Padding bins are zero.
    """
    flat = np.asarray(vector, dtype=np.float64).reshape(-1)
    mask = _bin_mask(bins_per_feature, n_bins)
    n_features = mask.shape[0]
    if not packed:
        expected = n_nodes * n_features * n_bins * 2
        if flat.size != expected:
            raise ValueError(f"vector has {flat.size} values, expected {expected}")
        return flat.reshape(n_nodes, n_features, n_bins, 2).copy()
    n_kept = int(mask.sum())
    if flat.size != n_nodes * n_kept * 2:
        raise ValueError(f"vector has {flat.size} values, expected {n_nodes * n_kept * 2}")
    out = np.zeros((n_nodes, n_features, n_bins, 2), dtype=np.float64)
    out[:, mask, :] = flat.reshape(n_nodes, n_kept, 2)
    return out
