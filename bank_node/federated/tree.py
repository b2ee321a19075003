"""One regression tree in flat arrays, built level by level, routed on bins or raw values."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Tree", "TreeBuilder"]

IntArray = npt.NDArray[np.int32]
Float32Array = npt.NDArray[np.float32]
FloatArray = npt.NDArray[np.float64]
# (rows, their current nodes) -> whether each row goes left
_GoLeft = Callable[[npt.NDArray[np.intp], IntArray], npt.NDArray[np.bool_]]

NO_NODE = -1


@dataclass(frozen=True, eq=False)
class Tree:
    """A binary tree in XGBoost's node layout; node 0 is the root.

    All arrays have shape ``(n_nodes,)``. For a leaf, ``left == right == -1``, ``feature``
    is 0 and ``split_bin`` is -1. A row goes left when its bin is ``<= split_bin`` or,
    equivalently, its raw value is ``< threshold`` (compared in float32).

    Attributes
    ----------
    left, right, parent : numpy.ndarray of int32
        Children and parent of each node (-1 where none).
    feature : numpy.ndarray of int32
        Split feature (column index).
    split_bin : numpy.ndarray of int32
        Split bin.
    threshold : numpy.ndarray of float32
        Split threshold on raw values (on bin indices, ``split_bin + 1``, when the tree
        was grown without cut points).
    value : numpy.ndarray of float32
        Leaf value, learning rate applied (0 for internal nodes).
    base_weight : numpy.ndarray of float32
        Unscaled optimal weight of internal nodes; the leaf value for leaves (as XGBoost
        writes it).
    loss_change : numpy.ndarray of float32
        Gain of each split (0 for leaves).
    sum_hess : numpy.ndarray of float64
        Hessian sum of each node.
    """

    left: IntArray
    right: IntArray
    parent: IntArray
    feature: IntArray
    split_bin: IntArray
    threshold: Float32Array
    value: Float32Array
    base_weight: Float32Array
    loss_change: Float32Array
    sum_hess: FloatArray

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return int(self.left.size)

    @property
    def is_leaf(self) -> npt.NDArray[np.bool_]:
        """Boolean mask of leaves."""
        return self.left < 0

    @property
    def depth(self) -> int:
        """Length of the longest root-to-leaf path (0 for a single leaf)."""
        depth = np.zeros(self.n_nodes, dtype=np.int64)
        for node in range(1, self.n_nodes):  # parents precede children in level order
            depth[node] = depth[self.parent[node]] + 1
        return int(depth.max(initial=0))

    def _route(self, go_left_of: _GoLeft, n_rows: int) -> IntArray:
        position = np.zeros(n_rows, dtype=np.int32)
        while True:
            internal = np.flatnonzero(self.left[position] >= 0)
            if internal.size == 0:
                return position
            nodes = position[internal]
            go_left = go_left_of(internal, nodes)
            position[internal] = np.where(go_left, self.left[nodes], self.right[nodes])

    def apply_bins(self, bins: npt.NDArray[np.integer]) -> IntArray:
        """Leaf reached by each row, routing on global bin indices.

        Parameters
        ----------
        bins : numpy.ndarray, shape (n_rows, n_features)

        Returns
        -------
        numpy.ndarray of int32, shape (n_rows,)
        """
        b = np.asarray(bins)
        return self._route(
            lambda rows, nodes: b[rows, self.feature[nodes]] <= self.split_bin[nodes], b.shape[0]
        )

    def apply(self, X: npt.ArrayLike) -> IntArray:
        """Leaf reached by each row, routing on raw values with ``x < threshold`` (float32).

        NaN values go right, as in an XGBoost export with ``default_left = 0``.

        Parameters
        ----------
        X : array_like, shape (n_rows, n_features)

        Returns
        -------
        numpy.ndarray of int32, shape (n_rows,)
        """
        values = np.asarray(X, dtype=np.float32)
        return self._route(
            lambda rows, nodes: values[rows, self.feature[nodes]] < self.threshold[nodes],
            values.shape[0],
        )

    def predict(self, X: npt.ArrayLike) -> Float32Array:
        """Leaf value of each row (raw values)."""
        return self.value[self.apply(X)]

    def predict_bins(self, bins: npt.NDArray[np.integer]) -> Float32Array:
        """Leaf value of each row (bin indices)."""
        return self.value[self.apply_bins(bins)]


class TreeBuilder:
    """Grow a :class:`Tree` one split at a time; children get consecutive ids.

    Splitting the nodes of a level in increasing id order numbers the nodes as XGBoost's
    depth-wise ``hist`` does.

    Parameters
    ----------
    root_value : float
        Leaf value of the root while it is not split.
    root_weight : float
        Unscaled weight of the root.
    root_hess : float
        Hessian sum of the root.
    """

    def __init__(self, *, root_value: float, root_weight: float, root_hess: float) -> None:
        self._left: list[int] = []
        self._right: list[int] = []
        self._parent: list[int] = []
        self._feature: list[int] = []
        self._split_bin: list[int] = []
        self._threshold: list[float] = []
        self._value: list[float] = []
        self._base_weight: list[float] = []
        self._loss_change: list[float] = []
        self._sum_hess: list[float] = []
        self._add_leaf(NO_NODE, value=root_value, hess=root_hess)
        self._base_weight[0] = float(np.float32(root_weight))

    @property
    def n_nodes(self) -> int:
        """Number of nodes so far."""
        return len(self._left)

    def _add_leaf(self, parent: int, *, value: float, hess: float) -> int:
        self._left.append(NO_NODE)
        self._right.append(NO_NODE)
        self._parent.append(parent)
        self._feature.append(0)
        self._split_bin.append(-1)
        self._threshold.append(0.0)
        self._value.append(float(np.float32(value)))
        self._base_weight.append(float(np.float32(value)))
        self._loss_change.append(0.0)
        self._sum_hess.append(float(hess))
        return len(self._left) - 1

    def split(
        self,
        node: int,
        *,
        feature: int,
        split_bin: int,
        threshold: float,
        gain: float,
        weight: float,
        hess: float,
        left_value: float,
        left_hess: float,
        right_value: float,
        right_hess: float,
    ) -> tuple[int, int]:
        """Turn leaf ``node`` into a split with two new leaves.

        Parameters
        ----------
        node : int
            A current leaf.
        feature, split_bin : int
            Rows with ``bin <= split_bin`` of ``feature`` go left.
        threshold : float
            The same split on raw values: ``x < threshold`` goes left.
        gain : float
            Loss change of the split.
        weight, hess : float
            Unscaled weight and hessian sum of ``node``.
        left_value, right_value : float
            Leaf values of the children (learning rate applied).
        left_hess, right_hess : float
            Hessian sums of the children.

        Returns
        -------
        left, right : int
            Ids of the new children.
        """
        if not 0 <= node < self.n_nodes or self._left[node] != NO_NODE:
            raise ValueError(f"node {node} is not a leaf of this tree")
        left = self._add_leaf(node, value=left_value, hess=left_hess)
        right = self._add_leaf(node, value=right_value, hess=right_hess)
        self._left[node] = left
        self._right[node] = right
        self._feature[node] = int(feature)
        self._split_bin[node] = int(split_bin)
        self._threshold[node] = float(np.float32(threshold))
        self._value[node] = 0.0
        self._base_weight[node] = float(np.float32(weight))
        self._loss_change[node] = float(np.float32(gain))
        self._sum_hess[node] = float(hess)
        return left, right

    def build(self) -> Tree:
        """Return the tree grown so far."""
        return Tree(
            left=np.array(self._left, dtype=np.int32),
            right=np.array(self._right, dtype=np.int32),
            parent=np.array(self._parent, dtype=np.int32),
            feature=np.array(self._feature, dtype=np.int32),
            split_bin=np.array(self._split_bin, dtype=np.int32),
            threshold=np.array(self._threshold, dtype=np.float32),
            value=np.array(self._value, dtype=np.float32),
            base_weight=np.array(self._base_weight, dtype=np.float32),
            loss_change=np.array(self._loss_change, dtype=np.float32),
            sum_hess=np.array(self._sum_hess, dtype=np.float64),
        )
