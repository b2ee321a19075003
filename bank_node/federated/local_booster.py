"""Plaintext reference training: the federated protocol with a plain sum in place of HE.

:func:`train_local` runs every bank's side and the shared grower in one process, adding
the banks' payload vectors directly. The encrypted protocol performs the same steps and
replaces only the line marked "secure sum" with encrypt, aggregate and decrypt, so this
driver is both the specification of the protocol's maths and its test oracle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .ensemble import GBDTModel
from .grower import TreeGrower
from .objective import base_margin
from .params import GBDTParams
from .party import advance_positions, make_level_payload, tree_gradients, update_margin
from .sampling import column_sample
from .tree import Tree

__all__ = ["PartyRows", "grow_tree", "train_local"]

FloatArray = npt.NDArray[np.float64]


@dataclass(kw_only=True, eq=False)
class PartyRows:
    """One bank's training rows and its running margins.

    Parameters
    ----------
    bins : numpy.ndarray, shape (n_rows, n_features)
        Global bin indices.
    labels : numpy.ndarray, shape (n_rows,)
        0/1 labels.
    party_index : int
        Stable number of the bank (seeds its row sample).
    """

    bins: npt.NDArray[np.integer]
    labels: npt.NDArray[np.floating]
    party_index: int = 0
    margin: npt.NDArray[np.float32] = field(init=False)

    def __post_init__(self) -> None:
        self.bins = np.asarray(self.bins)
        self.labels = np.asarray(self.labels, dtype=np.float32)
        if self.bins.ndim != 2 or self.labels.shape != (self.bins.shape[0],):
            raise ValueError(
                f"bins must be (n_rows, n_features) and labels (n_rows,); got {self.bins.shape}"
                f" and {self.labels.shape}"
            )
        self.margin = np.zeros(self.bins.shape[0], dtype=np.float32)


def _secure_sum(vectors: Sequence[FloatArray]) -> FloatArray:
    total = np.zeros_like(vectors[0])
    for v in vectors:
        total = total + v
    return total


def grow_tree(
    parties: Sequence[PartyRows],
    *,
    params: GBDTParams,
    tree_index: int,
    bins_per_feature: npt.ArrayLike,
    cuts: Sequence[npt.NDArray[np.float32]] | None = None,
) -> Tree:
    """Grow one tree over all parties and add it to their margins.

    Parameters
    ----------
    parties : sequence of PartyRows
        Every bank's rows; their ``margin`` is updated in place.
    params : GBDTParams
    tree_index : int
        0-based index of the tree (seeds the samplers).
    bins_per_feature : array_like of int, shape (n_features,)
    cuts : sequence of numpy.ndarray, optional
        Global cut points, for raw-value thresholds.

    Returns
    -------
    Tree
    """
    n_features = parties[0].bins.shape[1]
    grower = TreeGrower(
        params=params,
        bins_per_feature=bins_per_feature,
        features=column_sample(n_features, params, tree_index),
        cuts=cuts,
    )
    gradients = [
        tree_gradients(p.margin, p.labels, params, tree_index=tree_index, party_index=p.party_index)
        for p in parties
    ]
    positions = [np.zeros(p.bins.shape[0], dtype=np.int32) for p in parties]
    while (request := grower.request) is not None:
        payloads = [
            make_level_payload(p.bins, g, h, pos, request)
            for p, (g, h), pos in zip(parties, gradients, positions, strict=True)
        ]
        result = grower.apply_level_sum(_secure_sum(payloads))  # the secure sum
        positions = [
            advance_positions(p.bins, pos, result.splits)
            for p, pos in zip(parties, positions, strict=True)
        ]
    tree = grower.tree()
    for p, pos in zip(parties, positions, strict=True):
        p.margin = update_margin(p.margin, tree, pos)
    return tree


def train_local(
    parties: Sequence[tuple[npt.ArrayLike, npt.ArrayLike]],
    *,
    params: GBDTParams,
    cuts: Sequence[npt.NDArray[np.float32]] | None = None,
    bins_per_feature: npt.ArrayLike | None = None,
) -> GBDTModel:
    """Train the federated ensemble with plaintext sums of the parties' histograms.

    Parameters
    ----------
    parties : sequence of (bins, labels)
        Per bank: global bin indices, shape (n_rows, n_features), and 0/1 labels; bank
        ``i`` gets ``party_index=i``.
    params : GBDTParams
    cuts : sequence of numpy.ndarray, optional
        Global cut points; they set the bins per feature and the trees' raw thresholds.
    bins_per_feature : array_like of int, optional
        Without ``cuts``: bins of each feature (default: the largest bin seen + 1). The
        trees then split bin indices (threshold ``bin + 1``).

    Returns
    -------
    GBDTModel
    """
    if not parties:
        raise ValueError("at least one party is needed")
    rows = [
        PartyRows(bins=np.asarray(b), labels=np.asarray(y), party_index=i)
        for i, (b, y) in enumerate(parties)
    ]
    n_features = rows[0].bins.shape[1]
    if any(p.bins.shape[1] != n_features for p in rows):
        raise ValueError("all parties must have the same number of features")
    if cuts is not None:
        bins = np.array([len(c) + 1 for c in cuts], dtype=np.int64)
    elif bins_per_feature is not None:
        bins = np.asarray(bins_per_feature, dtype=np.int64)
    else:
        largest = np.max([p.bins.max(axis=0) for p in rows if p.bins.shape[0]], axis=0)
        bins = largest.astype(np.int64) + 1
    start = base_margin(params.base_score)
    for p in rows:
        p.margin[:] = start
    trees = tuple(
        grow_tree(rows, params=params, tree_index=t, bins_per_feature=bins, cuts=cuts)
        for t in range(params.n_trees)
    )
    return GBDTModel(
        trees=trees,
        base_score=params.base_score,
        n_features=n_features,
        cuts=None if cuts is None else tuple(np.asarray(c, dtype=np.float32) for c in cuts),
    )
