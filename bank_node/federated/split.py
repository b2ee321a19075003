"""Best split per node from summed histograms, with XGBoost's gain and constraints.

The arithmetic follows XGBoost's ``hist`` updater so that the same histograms give the
same splits, gains and leaf values:

* statistics ``G``, ``H`` are float64; the parameters are float32 (XGBoost stores them so);
* weight ``w = f32(-G / (H + lambda))``, 0 when ``H < min_child_weight`` or ``H <= 0``;
* score of a node ``f32(G * G / (H + lambda))`` in float64 (the closed form XGBoost uses
  without ``max_delta_step`` and monotone constraints), 0 when ``H <= 0``;
* gain of a split ``f32(f32(score_left + score_right) - score_parent)`` (no factor 1/2);
* left statistics are the running sum over bins ``<= b``; right = parent - left;
* a candidate needs ``H > 0`` and ``H >= min_child_weight`` on both sides; a node splits
  when its best gain exceeds 1e-6 and is at least ``gamma``;
* ties go to the lowest bin within a feature, then to the lowest feature index;
* leaf value ``f32(w) * f32(eta)``.

Only the forward scan (left = bins ``<= b``) is done: the data is dense, so XGBoost's
backward scan for missing values (the learned default direction) never applies, and
exported splits send missing values right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .histogram import GRAD, HESS, node_totals
from .params import GBDTParams

__all__ = [
    "MIN_SPLIT_GAIN",
    "SplitCandidate",
    "find_best_splits",
    "leaf_value",
    "node_score",
    "node_weight",
]

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]

#: XGBoost's ``kRtEps``: a split must reduce the loss by more than this.
MIN_SPLIT_GAIN = 1e-6


@dataclass(frozen=True, kw_only=True)
class SplitCandidate:
    """The best split of one node.

    Attributes
    ----------
    feature : int
        Column index of the split feature.
    split_bin : int
        Rows whose bin is ``<= split_bin`` go left.
    gain : float
        Loss change (a float32 value).
    left_grad, left_hess, right_grad, right_hess : float
        Statistics of the two children (float64).
    """

    feature: int
    split_bin: int
    gain: float
    left_grad: float
    left_hess: float
    right_grad: float
    right_hess: float


def _lambda(params: GBDTParams) -> float:
    return float(np.float32(params.reg_lambda))


def node_weight(grad: npt.ArrayLike, hess: npt.ArrayLike, params: GBDTParams) -> Float32Array:
    """Unscaled optimal weight ``f32(-G / (H + lambda))`` of nodes with sums ``G``, ``H``.

    Parameters
    ----------
    grad, hess : array_like
        float64 gradient and hessian sums.
    params : GBDTParams

    Returns
    -------
    numpy.ndarray
        float32 weights; 0 where ``H < min_child_weight`` or ``H <= 0``.
    """
    g = np.asarray(grad, dtype=np.float64)
    h = np.asarray(hess, dtype=np.float64)
    mcw = float(np.float32(params.min_child_weight))
    usable = (h >= mcw) & (h > 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(usable, -g / (h + _lambda(params)), 0.0)
    return np.asarray(w, dtype=np.float32)


def _score(g: FloatArray, h: FloatArray, lam: float) -> Float32Array:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        score = g * g / (h + lam)
    return np.where(h > 0.0, score, 0.0).astype(np.float32)


def node_score(grad: npt.ArrayLike, hess: npt.ArrayLike, params: GBDTParams) -> Float32Array:
    """XGBoost's score of a node without split: ``f32(G * G / (H + lambda))``.

    Parameters
    ----------
    grad, hess : array_like
        float64 gradient and hessian sums.
    params : GBDTParams

    Returns
    -------
    numpy.ndarray
        float32 scores.
    """
    g = np.asarray(grad, dtype=np.float64)
    h = np.asarray(hess, dtype=np.float64)
    return _score(g, h, _lambda(params))


def leaf_value(grad: float, hess: float, params: GBDTParams) -> np.float32:
    """Value stored in a leaf: ``f32(weight) * f32(eta)``."""
    weight = node_weight(np.float64(grad), np.float64(hess), params)
    return np.float32(weight * np.float32(params.eta))


def find_best_splits(
    hist: FloatArray,
    params: GBDTParams,
    *,
    node_sums: npt.ArrayLike | None = None,
    features: Sequence[int] | npt.NDArray[np.integer] | None = None,
    feature_mask: npt.ArrayLike | None = None,
    tie_tolerance: float = 0.0,
    bins_per_feature: npt.ArrayLike | None = None,
) -> list[SplitCandidate | None]:
    """Find the best split of every node, vectorised over nodes, features and bins.

    Parameters
    ----------
    hist : numpy.ndarray, shape (n_nodes, n_features, n_bins, 2)
        Histograms summed over all banks.
    params : GBDTParams
        ``reg_lambda``, ``gamma`` and ``min_child_weight`` are used.
    node_sums : array_like, shape (n_nodes, 2), optional
        ``[G, H]`` of each node. XGBoost takes a child's sums from its parent's split, not
        from its own histogram; pass them to reproduce its rounding. Default:
        :func:`~bank_node.federated.histogram.node_totals` of ``hist``.
    features : sequence of int, optional
        Column index of each entry of the feature axis, increasing (default ``0..n-1``).
    feature_mask : array_like of bool, shape (n_features,), optional
        Features allowed to split (default: all).
    tie_tolerance : float
        Relative gain difference treated as a tie (default 0: exact, as XGBoost). Two
        features that split a node's rows identically have equal gains, and XGBoost takes
        the lower one; approximate (CKKS) sums make such gains differ by noise. A tolerance
        of about 1e-6 restores XGBoost's choice; every bank must use the same value.
    bins_per_feature : array_like of int, shape (n_features,), optional
        Bins each feature really has: no split after its last one (which would send nothing
        right). Exact sums never choose it (the right side is empty); noisy ones could.

    Returns
    -------
    list of SplitCandidate or None
        One entry per node: its best split, or None if no split passes the constraints.
    """
    if hist.ndim != 4 or hist.shape[3] != 2:
        raise ValueError(f"hist must have shape (n_nodes, n_features, n_bins, 2), got {hist.shape}")
    n_nodes, n_features, n_bins, _ = hist.shape
    columns = (
        np.arange(n_features, dtype=np.int64)
        if features is None
        else np.asarray(features, dtype=np.int64).reshape(-1)
    )
    if columns.size != n_features:
        raise ValueError(f"features has {columns.size} entries for {n_features} histogram features")
    if columns.size > 1 and not np.all(np.diff(columns) > 0):
        raise ValueError("features must be strictly increasing (ties go to the lowest feature)")
    sums = node_totals(hist) if node_sums is None else np.asarray(node_sums, dtype=np.float64)
    if sums.shape != (n_nodes, 2):
        raise ValueError(f"node_sums must have shape ({n_nodes}, 2), got {sums.shape}")
    if n_nodes == 0 or n_features == 0 or n_bins == 0:
        return [None] * n_nodes

    lam = _lambda(params)
    mcw = float(np.float32(params.min_child_weight))
    parent_g = sums[:, GRAD][:, None, None]
    parent_h = sums[:, HESS][:, None, None]
    left_g = np.cumsum(hist[..., GRAD], axis=2)
    left_h = np.cumsum(hist[..., HESS], axis=2)
    right_g = parent_g - left_g
    right_h = parent_h - left_h
    valid = (left_h >= mcw) & (right_h >= mcw) & (left_h > 0.0) & (right_h > 0.0)
    if bins_per_feature is not None:
        real = np.asarray(bins_per_feature, dtype=np.int64).reshape(-1)
        if real.size != n_features:
            raise ValueError(f"bins_per_feature has {real.size} entries for {n_features} features")
        valid &= np.arange(n_bins)[None, None, :] < (real - 1)[None, :, None]
    if feature_mask is not None:
        mask = np.asarray(feature_mask, dtype=bool).reshape(-1)
        if mask.size != n_features:
            raise ValueError(f"feature_mask has {mask.size} entries for {n_features} features")
        valid &= mask[None, :, None]

    score_left = _score(left_g, left_h, lam)
    score_right = _score(right_g, right_h, lam)
    parent_score = node_score(sums[:, GRAD], sums[:, HESS], params)[:, None, None]
    with np.errstate(invalid="ignore", over="ignore"):
        gain = (score_left + score_right) - parent_score
    gain = np.where(valid & ~np.isnan(gain), gain, np.float32(-np.inf))

    # argmax returns the first maximum in (feature, bin) order: XGBoost's tie-break.
    flat = gain.reshape(n_nodes, n_features * n_bins)
    best = np.argmax(flat, axis=1)
    if tie_tolerance > 0.0:
        top = flat[np.arange(n_nodes), best].astype(np.float64)
        near_top = flat >= (top - tie_tolerance * np.abs(top))[:, None]
        best = np.argmax(near_top, axis=1)
    best_gain = flat[np.arange(n_nodes), best]
    gamma = float(np.float32(params.gamma))
    out: list[SplitCandidate | None] = []
    for i in range(n_nodes):
        g = float(best_gain[i])
        if not (g > MIN_SPLIT_GAIN and g >= gamma):
            out.append(None)
            continue
        k, b = divmod(int(best[i]), n_bins)
        out.append(
            SplitCandidate(
                feature=int(columns[k]),
                split_bin=b,
                gain=g,
                left_grad=float(left_g[i, k, b]),
                left_hess=float(left_h[i, k, b]),
                right_grad=float(right_g[i, k, b]),
                right_hess=float(right_h[i, k, b]),
            )
        )
    return out
