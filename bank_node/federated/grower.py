"""Grow one tree level by level from histogram sums: the part every bank runs identically.

A :class:`TreeGrower` is a small deterministic state machine. At each level it publishes a
:class:`LevelRequest` (which nodes' histograms to build, over which features), takes the
sum over banks of the banks' payloads (:meth:`TreeGrower.apply_level_sum`), derives the
siblings' histograms by subtraction, finds the best splits and expands the tree. Banks that
feed it the same decrypted sums hold the same tree; nothing in it depends on a bank's rows.

The bank side of a level is :func:`~bank_node.federated.party.make_level_payload` and
:func:`~bank_node.federated.party.advance_positions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .binning import split_threshold
from .histogram import (
    choose_children_to_build,
    node_totals,
    payload_length,
    subtract_histograms,
    unflatten_histograms,
)
from .params import GBDTParams
from .split import find_best_splits, leaf_value, node_weight
from .tree import Tree, TreeBuilder

__all__ = ["LevelRequest", "LevelResult", "NodeSplit", "TreeGrower"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, kw_only=True, eq=False)
class LevelRequest:
    """What every bank must build and encrypt for one level of one tree.

    Attributes
    ----------
    depth : int
        Depth of the requested nodes (0 for the root).
    nodes : numpy.ndarray of int64
        Nodes whose histograms to build, in payload order.
    features : numpy.ndarray of int64
        Columns to build, in payload order (the tree's column sample).
    bins_per_feature : numpy.ndarray of int64
        Number of bins of each of ``features``.
    n_bins : int
        Size of the histograms' bin axis (``max(bins_per_feature)``).
    """

    depth: int
    nodes: IntArray
    features: IntArray
    bins_per_feature: IntArray
    n_bins: int

    @property
    def payload_length(self) -> int:
        """Length of each bank's payload vector: ``2 * len(nodes) * sum(bins_per_feature)``."""
        return payload_length(self.nodes.size, self.bins_per_feature)


@dataclass(frozen=True, kw_only=True)
class NodeSplit:
    """A split applied to the tree; banks move their rows with it.

    Attributes
    ----------
    node, left, right : int
        The split node and its new children.
    feature, split_bin : int
        Rows whose bin of ``feature`` is ``<= split_bin`` go to ``left``.
    threshold : float
        The same split on raw values (``x < threshold`` goes left).
    gain : float
        Loss change.
    """

    node: int
    left: int
    right: int
    feature: int
    split_bin: int
    threshold: float
    gain: float


@dataclass(frozen=True, kw_only=True)
class LevelResult:
    """Outcome of one level: the splits made, in increasing node order."""

    depth: int
    splits: tuple[NodeSplit, ...]


class TreeGrower:
    """Deterministic, level-wise growth of one tree from summed histograms.

    Parameters
    ----------
    params : GBDTParams
        ``max_depth``, ``eta``, ``reg_lambda``, ``gamma``, ``min_child_weight`` are used.
    bins_per_feature : array_like of int, shape (n_features,)
        Global number of bins of every column.
    features : array_like of int, optional
        Columns this tree may split on (its column sample), increasing; default all.
    cuts : sequence of numpy.ndarray, optional
        Global cut points; they give each split its raw-value threshold. Without them the
        threshold is ``split_bin + 1`` (a tree over bin indices).
    tie_tolerance : float
        Passed to :func:`~bank_node.federated.split.find_best_splits`; 0 for exact sums,
        about 1e-6 for approximate (CKKS) sums.
    """

    def __init__(
        self,
        *,
        params: GBDTParams,
        bins_per_feature: npt.ArrayLike,
        features: npt.ArrayLike | None = None,
        cuts: Sequence[npt.NDArray[np.float32]] | None = None,
        tie_tolerance: float = 0.0,
    ) -> None:
        if not tie_tolerance >= 0.0:
            raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance!r}")
        self._params = params
        self._tie_tolerance = float(tie_tolerance)
        all_bins = np.asarray(bins_per_feature, dtype=np.int64).reshape(-1)
        columns = (
            np.arange(all_bins.size, dtype=np.int64)
            if features is None
            else np.asarray(features, dtype=np.int64).reshape(-1)
        )
        if columns.size == 0 or not np.all(np.diff(columns) > 0):
            raise ValueError("features must be a non-empty, strictly increasing list of columns")
        if columns[0] < 0 or columns[-1] >= all_bins.size:
            raise ValueError(f"features must lie in [0, {all_bins.size})")
        if cuts is not None and len(cuts) != all_bins.size:
            raise ValueError(f"cuts has {len(cuts)} entries for {all_bins.size} features")
        self._cuts = cuts
        self._features = columns
        self._bins = all_bins[columns]
        self._n_bins = int(self._bins.max())
        self._builder: TreeBuilder | None = None
        self._stats: dict[int, tuple[float, float]] = {}
        # Per pending pair: (parent, built child, derived child); the root has no pair.
        self._pairs: list[tuple[int, int, int]] = []
        self._parent_hists: dict[int, FloatArray] = {}
        self._request: LevelRequest | None = self._make_request(0, np.zeros(1, dtype=np.int64))

    def _make_request(self, depth: int, nodes: IntArray) -> LevelRequest:
        return LevelRequest(
            depth=depth,
            nodes=nodes,
            features=self._features,
            bins_per_feature=self._bins,
            n_bins=self._n_bins,
        )

    @property
    def request(self) -> LevelRequest | None:
        """The pending level's request, or None once the tree is finished."""
        return self._request

    @property
    def finished(self) -> bool:
        """Whether the tree is complete."""
        return self._request is None

    def _threshold(self, feature: int, split_bin: int) -> float:
        if self._cuts is None:
            return float(split_bin + 1)
        return float(split_threshold(self._cuts, feature, split_bin))

    def apply_level_sum(self, summed: npt.ArrayLike) -> LevelResult:
        """Consume the sum over banks of this level's payloads and expand the tree.

        Parameters
        ----------
        summed : array_like, shape (request.payload_length,)
            Sum over all banks of :func:`~bank_node.federated.party.make_level_payload`.

        Returns
        -------
        LevelResult
            The splits made; every bank applies them to its rows with
            :func:`~bank_node.federated.party.advance_positions`.
        """
        request = self._request
        if request is None:
            raise RuntimeError("the tree is finished; no level is pending")
        built = unflatten_histograms(
            summed, n_nodes=request.nodes.size, n_bins=self._n_bins, bins_per_feature=self._bins
        )
        params = self._params
        hists: dict[int, FloatArray] = {}
        if self._builder is None:
            g, h = (float(v) for v in node_totals(built)[0])
            self._stats[0] = (g, h)
            self._builder = TreeBuilder(
                root_value=float(leaf_value(g, h, params)),
                root_weight=float(node_weight(g, h, params)),
                root_hess=h,
            )
            hists[0] = built[0]
        else:
            parents = np.stack([self._parent_hists[p] for p, _, _ in self._pairs])
            derived = subtract_histograms(parents, built)
            for i, (_, built_child, derived_child) in enumerate(self._pairs):
                hists[built_child] = built[i]
                hists[derived_child] = derived[i]

        frontier = sorted(hists)
        candidates = find_best_splits(
            np.stack([hists[n] for n in frontier]),
            params,
            node_sums=np.array([self._stats[n] for n in frontier], dtype=np.float64),
            features=self._features,
            tie_tolerance=self._tie_tolerance,
            bins_per_feature=self._bins,
        )
        splits: list[NodeSplit] = []
        chosen = [(node, cand) for node, cand in zip(frontier, candidates, strict=True) if cand is not None]
        if chosen:
            # Weights and leaf values of all the level's splits at once (element-wise the
            # same float64 sums and float32 roundings as the scalar functions).
            stats = np.array(
                [(c.left_grad, c.left_hess, c.right_grad, c.right_hess) for _, c in chosen], dtype=np.float64
            )
            eta = np.float32(params.eta)
            # XGBoost recomputes the parent's statistics as left + right for its record.
            weights = node_weight(stats[:, 0] + stats[:, 2], stats[:, 1] + stats[:, 3], params).tolist()
            left_values = (node_weight(stats[:, 0], stats[:, 1], params) * eta).astype(np.float32).tolist()
            right_values = (node_weight(stats[:, 2], stats[:, 3], params) * eta).astype(np.float32).tolist()
        for i, (node, cand) in enumerate(chosen):
            h = cand.left_hess + cand.right_hess
            threshold = self._threshold(cand.feature, cand.split_bin)
            left, right = self._builder.split(
                node,
                feature=cand.feature,
                split_bin=cand.split_bin,
                threshold=threshold,
                gain=cand.gain,
                weight=weights[i],
                hess=h,
                left_value=left_values[i],
                left_hess=cand.left_hess,
                right_value=right_values[i],
                right_hess=cand.right_hess,
            )
            self._stats[left] = (cand.left_grad, cand.left_hess)
            self._stats[right] = (cand.right_grad, cand.right_hess)
            splits.append(
                NodeSplit(
                    node=node,
                    left=left,
                    right=right,
                    feature=cand.feature,
                    split_bin=cand.split_bin,
                    threshold=float(np.float32(threshold)),
                    gain=cand.gain,
                )
            )

        depth = request.depth + 1
        if splits and depth < params.max_depth:
            build, derive = choose_children_to_build(
                [s.left for s in splits],
                [s.right for s in splits],
                [self._stats[s.left][1] for s in splits],
                [self._stats[s.right][1] for s in splits],
            )
            self._pairs = [
                (s.node, int(b), int(d)) for s, b, d in zip(splits, build, derive, strict=True)
            ]
            self._parent_hists = {s.node: hists[s.node] for s in splits}
            self._request = self._make_request(depth, build)
        else:
            self._pairs, self._parent_hists = [], {}
            self._request = None
        return LevelResult(depth=request.depth, splits=tuple(splits))

    def tree(self) -> Tree:
        """The finished tree.

        Raises
        ------
        RuntimeError
            If levels are still pending.
        """
        if self._request is not None or self._builder is None:
            raise RuntimeError("the tree is not finished; levels are still pending")
        return self._builder.build()
