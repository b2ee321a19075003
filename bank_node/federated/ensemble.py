"""The boosted ensemble: trees plus base score, predicting as XGBoost does."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .objective import base_margin, sigmoid
from .tree import Tree

__all__ = ["GBDTModel"]

Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True, kw_only=True, eq=False)
class GBDTModel:
    """A ``binary:logistic`` tree ensemble.

    Margins start at the margin of ``base_score`` and add one tree at a time in float32,
    in the order XGBoost adds them, so :meth:`predict_margin` equals ``Booster.predict``
    with ``output_margin=True`` on the exported model.

    Parameters
    ----------
    trees : tuple of Tree
        Trees in boosting order.
    base_score : float
        Initial probability.
    n_features : int
        Number of input columns.
    cuts : tuple of numpy.ndarray, optional
        Global cut points the trees were grown on; None when the trees split bin indices
        directly (their thresholds are then ``bin + 1``).
    """

    trees: tuple[Tree, ...]
    base_score: float
    n_features: int
    cuts: tuple[npt.NDArray[np.float32], ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.base_score < 1.0:
            raise ValueError(f"GBDTModel.base_score must be in (0, 1), got {self.base_score!r}")
        if self.n_features < 1:
            raise ValueError(f"GBDTModel.n_features must be >= 1, got {self.n_features!r}")
        if self.cuts is not None and len(self.cuts) != self.n_features:
            raise ValueError(
                f"GBDTModel.cuts has {len(self.cuts)} entries for {self.n_features} features"
            )

    @property
    def base_margin(self) -> np.float32:
        """Margin every prediction starts from."""
        return base_margin(self.base_score)

    def _check(self, X: npt.ArrayLike) -> npt.NDArray[Any]:
        values = np.asarray(X)
        if values.ndim != 2 or values.shape[1] != self.n_features:
            raise ValueError(f"expected shape (n_rows, {self.n_features}), got {values.shape}")
        return values

    def _accumulate(self, leaf_values: Iterable[Float32Array], n_rows: int) -> Float32Array:
        margin = np.full(n_rows, self.base_margin, dtype=np.float32)
        for values in leaf_values:
            margin += values
        return margin

    def predict_margin(self, X: npt.ArrayLike, *, n_trees: int | None = None) -> Float32Array:
        """Raw scores (log-odds) from raw feature values; NaN goes right at every split.

        Parameters
        ----------
        X : array_like, shape (n_rows, n_features)
        n_trees : int, optional
            Use only the first ``n_trees`` trees.

        Returns
        -------
        numpy.ndarray of float32, shape (n_rows,)
        """
        values = np.asarray(self._check(X), dtype=np.float32)
        trees = self.trees[:n_trees]
        return self._accumulate((t.predict(values) for t in trees), values.shape[0])

    def predict_margin_bins(
        self, bins: npt.NDArray[np.integer], *, n_trees: int | None = None
    ) -> Float32Array:
        """Raw scores from global bin indices (as used in training)."""
        b = self._check(bins)
        trees = self.trees[:n_trees]
        return self._accumulate((t.predict_bins(b) for t in trees), b.shape[0])

    def predict_proba(self, X: npt.ArrayLike, *, n_trees: int | None = None) -> Float32Array:
        """Probability of the positive class (fraud) per row, as ``Booster.predict`` gives.

        Parameters
        ----------
        X : array_like, shape (n_rows, n_features)
            Raw feature values.
        n_trees : int, optional
            Use only the first ``n_trees`` trees.

        Returns
        -------
        numpy.ndarray of float32, shape (n_rows,)
        """
        return sigmoid(self.predict_margin(X, n_trees=n_trees))
