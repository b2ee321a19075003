"""Global histogram bins agreed from encrypted counts over a consortium-fixed fine grid.

A bank must not reveal the distribution of its own feature values, yet all banks need the
same cut points. The consortium therefore fixes, per feature and before seeing any data,
a fine grid of float32 edges (:func:`fine_grid`, from a declared :class:`FeatureScale`).
Each bank counts its values per grid cell (:func:`local_grid_counts`, one flat vector to
encrypt); the banks sum the vectors under encryption and, from the decrypted sum, all
derive the same quantile cut points (:func:`global_cuts`). Rows are then mapped to bin
indices (:func:`bin_index`).

Conventions (XGBoost's: ``x < split_condition`` goes left, compared in float32):

* grid cell of ``x`` = number of grid edges ``<= x``, so cell ``k`` holds
  ``edges[k-1] <= x < edges[k]`` and a feature with ``m`` edges has ``m + 1`` cells;
* every global cut is a grid edge; bin of ``x`` = number of cuts ``<= x``;
* the threshold of a split after bin ``b`` is ``cuts[b]`` itself: exactly the values in
  bins ``<= b`` satisfy ``x < cuts[b]``.

Cut points are exact at the grid's resolution: a cut never falls inside a grid cell, so the
pooled counts (not an approximate sketch) decide them, and summing counts over banks
gives the same cuts as counting the pooled rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "FeatureScale",
    "FineGrid",
    "bin_index",
    "bins_per_feature",
    "fine_grid",
    "global_cuts",
    "local_grid_counts",
    "split_threshold",
]

Float32Array = npt.NDArray[np.float32]
FloatArray = npt.NDArray[np.float64]
BinArray = npt.NDArray[np.unsignedinteger]

ScaleKind = Literal["binary", "integer", "linear", "log", "symlog"]

# Upper bound on grid edges per feature: the count vector is encrypted, so it must stay small.
MAX_GRID_EDGES = 65_536


@dataclass(frozen=True, kw_only=True)
class FeatureScale:
    """How a feature's values are spread, declared by the consortium without looking at data.

    Parameters
    ----------
    kind : {"binary", "integer", "linear", "log", "symlog"}
        * ``"binary"``: 0/1 flags (one edge at 1).
        * ``"integer"``: integer counts in ``[low, high]``; one cell per integer.
        * ``"linear"``: values in ``[low, high]`` (e.g. a risk in [0, 1]), ``resolution``
          equal-width cells.
        * ``"log"``: non-negative, right-skewed values such as amounts: an edge at 0, then
          ``resolution`` log-spaced edges from ``low`` (> 0) to ``high``.
        * ``"symlog"``: any real values, for features with no declared range:
          ``resolution`` log-spaced edges from ``low`` (> 0) to ``high`` on each side of 0,
          and 0 itself.
    low, high : float
        Declared range (see ``kind``); values outside it still count, in the end cells.
    resolution : int
        Number of cells across the range for ``"linear"``, ``"log"`` and ``"symlog"``.
    """

    kind: ScaleKind = "symlog"
    low: float = 1e-4
    high: float = 1e9
    resolution: int = 1024

    def __post_init__(self) -> None:
        if self.kind not in ("binary", "integer", "linear", "log", "symlog"):
            raise ValueError(
                "FeatureScale.kind must be one of binary, integer, linear, log, symlog;"
                f" got {self.kind!r}"
            )
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            raise ValueError(
                f"FeatureScale.low and .high must be finite, got {self.low!r}, {self.high!r}"
            )
        if self.kind in ("integer", "linear", "log", "symlog") and not self.low < self.high:
            raise ValueError(
                f"FeatureScale.low must be < high, got low={self.low!r}, high={self.high!r}"
            )
        if self.kind in ("log", "symlog") and self.low <= 0:
            raise ValueError(
                f"FeatureScale.low must be > 0 for kind {self.kind!r}, got {self.low!r}"
            )
        if self.kind == "integer" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(
                "FeatureScale.low and .high must be integers for kind 'integer',"
                f" got {self.low!r}, {self.high!r}"
            )
        if not 1 <= self.resolution <= MAX_GRID_EDGES:
            raise ValueError(
                f"FeatureScale.resolution must be in [1, {MAX_GRID_EDGES}], got {self.resolution!r}"
            )

    def edges(self) -> Float32Array:
        """Return the grid edges: strictly increasing float32 values."""
        if self.kind == "binary":
            raw = np.array([1.0])
        elif self.kind == "integer":
            raw = np.arange(int(self.low) + 1, int(self.high) + 1, dtype=np.float64)
        elif self.kind == "linear":
            raw = np.linspace(self.low, self.high, self.resolution + 1)
        elif self.kind == "log":
            raw = np.concatenate([[0.0], np.geomspace(self.low, self.high, self.resolution)])
        else:
            positive = np.geomspace(self.low, self.high, self.resolution)
            raw = np.concatenate([-positive[::-1], [0.0], positive])
        edges = np.unique(raw.astype(np.float32))
        if edges.size > MAX_GRID_EDGES:
            raise ValueError(
                f"FeatureScale {self} gives {edges.size} grid edges; at most {MAX_GRID_EDGES} allowed"
            )
        return edges


@dataclass(frozen=True, eq=False)
class FineGrid:
    """Per-feature grid edges, and the layout of the flat count vector.

    Parameters
    ----------
    edges : tuple of numpy.ndarray
        Strictly increasing float32 edges, one array per feature.
    """

    edges: tuple[Float32Array, ...]
    offsets: npt.NDArray[np.int64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for j, e in enumerate(self.edges):
            increasing = e.size < 2 or bool(np.all(np.diff(e) > 0))
            if e.dtype != np.float32 or e.ndim != 1 or not increasing:
                raise ValueError(
                    f"grid edges of feature {j} must be a strictly increasing 1-D float32 array"
                )
        cells = np.array([e.size + 1 for e in self.edges], dtype=np.int64)
        object.__setattr__(self, "offsets", np.concatenate([[0], np.cumsum(cells)]).astype(np.int64))

    @property
    def n_features(self) -> int:
        """Number of features."""
        return len(self.edges)

    @property
    def size(self) -> int:
        """Length of the flat count vector (sum over features of edges + 1)."""
        return int(self.offsets[-1])

    def feature_counts(self, counts: npt.ArrayLike, feature: int) -> FloatArray:
        """Slice the counts of one feature out of a flat count vector."""
        flat = np.asarray(counts, dtype=np.float64)
        return flat[self.offsets[feature] : self.offsets[feature + 1]]


def fine_grid(scales: Sequence[FeatureScale]) -> FineGrid:
    """Build the consortium's fine grid from one declared scale per feature.

    Parameters
    ----------
    scales : sequence of FeatureScale
        One entry per feature, in column order.

    Returns
    -------
    FineGrid
        The grid; its ``size`` is the length of every bank's count vector.

    Examples
    --------
    >>> grid = fine_grid([FeatureScale(kind="binary"), FeatureScale(kind="integer", low=0, high=50),
    ...                   FeatureScale(kind="linear", low=0, high=1, resolution=1000),
    ...                   FeatureScale(kind="log", low=0.01, high=1e5, resolution=2000)])
    >>> grid.size
    3057
    """
    return FineGrid(tuple(scale.edges() for scale in scales))


def _as_float32_matrix(X: npt.ArrayLike, n_features: int) -> Float32Array:
    values = np.asarray(X, dtype=np.float32)
    if values.ndim != 2 or values.shape[1] != n_features:
        raise ValueError(f"X must have shape (n_rows, {n_features}), got {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("X must not contain NaN or infinite values (dense data is assumed)")
    return values


def local_grid_counts(X: npt.ArrayLike, grid: FineGrid) -> FloatArray:
    """Count one bank's values per grid cell: the vector it encrypts for the cut round.

    Parameters
    ----------
    X : array_like, shape (n_rows, n_features)
        Raw feature values; compared in float32.
    grid : FineGrid
        The consortium's grid.

    Returns
    -------
    numpy.ndarray, shape (grid.size,)
        float64 counts, feature after feature, cells in increasing order.
    """
    values = _as_float32_matrix(X, grid.n_features)
    parts = [
        np.bincount(np.searchsorted(edges, values[:, j], side="right"), minlength=edges.size + 1)
        for j, edges in enumerate(grid.edges)
    ]
    if not parts:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate(parts).astype(np.float64)


def _feature_cuts(counts: FloatArray, edges: Float32Array, n_bins: int) -> Float32Array:
    occupied = np.flatnonzero(counts > 0)
    # A cut may sit at the lower edge of any occupied cell but the first; a cut anywhere in
    # the empty run below an occupied cell splits the rows the same way, and this choice puts
    # the threshold at the smallest value that can be in that cell, as XGBoost does.
    candidates = occupied[1:]
    if candidates.size <= n_bins - 1:
        chosen = candidates
    else:
        below = np.cumsum(counts)[candidates - 1]
        targets = counts.sum() * np.arange(1, n_bins) / n_bins
        right = np.clip(np.searchsorted(below, targets, side="left"), 0, candidates.size - 1)
        left = np.clip(right - 1, 0, candidates.size - 1)
        left_is_nearer = np.abs(below[left] - targets) <= np.abs(below[right] - targets)
        nearer = np.where(left_is_nearer, left, right)
        chosen = candidates[np.unique(nearer)]
    return edges[chosen - 1].astype(np.float32)


def global_cuts(summed_counts: npt.ArrayLike, grid: FineGrid, n_bins: int) -> list[Float32Array]:
    """Cut points from the consortium-wide grid counts; identical on every bank.

    Parameters
    ----------
    summed_counts : array_like, shape (grid.size,)
        Sum over banks of :func:`local_grid_counts`. Decrypted approximate (CKKS) sums are
        rounded to the nearest integer first, so noise below 0.5 does not change the cuts.
    grid : FineGrid
        The grid the counts were taken on.
    n_bins : int
        Maximum number of bins per feature (at most ``n_bins - 1`` cuts).

    Returns
    -------
    list of numpy.ndarray
        Per feature, strictly increasing float32 cuts, each a grid edge. A feature with at
        most ``n_bins`` occupied cells gets one bin per occupied cell; otherwise the cuts are
        the grid edges nearest to the ``k / n_bins`` quantiles, deduplicated, so a heavy
        value can leave fewer than ``n_bins`` bins.
    """
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    counts = np.rint(np.asarray(summed_counts, dtype=np.float64))
    if counts.shape != (grid.size,):
        raise ValueError(f"summed_counts must have shape ({grid.size},), got {counts.shape}")
    counts = np.maximum(counts, 0.0)
    return [
        _feature_cuts(grid.feature_counts(counts, j), edges, n_bins)
        for j, edges in enumerate(grid.edges)
    ]


def bins_per_feature(cuts: Sequence[Float32Array]) -> npt.NDArray[np.int64]:
    """Number of bins of each feature: ``len(cuts[j]) + 1``."""
    return np.array([len(c) + 1 for c in cuts], dtype=np.int64)


def bin_index(X: npt.ArrayLike, cuts: Sequence[Float32Array]) -> BinArray:
    """Map raw values to global bin indices: bin = number of cuts ``<= x`` (in float32).

    Parameters
    ----------
    X : array_like, shape (n_rows, n_features)
        Raw feature values without NaN.
    cuts : sequence of numpy.ndarray
        Output of :func:`global_cuts`.

    Returns
    -------
    numpy.ndarray, shape (n_rows, n_features)
        uint8 when every feature has at most 256 bins, else uint16.
    """
    values = _as_float32_matrix(X, len(cuts))
    n_max = int(bins_per_feature(cuts).max(initial=1))
    if n_max > 65_536:
        raise ValueError(f"at most 65536 bins per feature are supported, got {n_max}")
    dtype = np.uint8 if n_max <= 256 else np.uint16
    out = np.empty(values.shape, dtype=dtype)
    for j, c in enumerate(cuts):
        out[:, j] = np.searchsorted(np.asarray(c, dtype=np.float32), values[:, j], side="right")
    return out


def split_threshold(cuts: Sequence[Float32Array], feature: int, split_bin: int) -> np.float32:
    """Float32 threshold of the split "bins ``<= split_bin`` go left" on raw values.

    Exactly the values ``x`` with ``bin_index(x) <= split_bin`` satisfy ``x < threshold``.

    Raises
    ------
    ValueError
        If ``split_bin`` is the feature's last bin (nothing would go right).
    """
    feature_cuts = cuts[feature]
    if not 0 <= split_bin < len(feature_cuts):
        raise ValueError(
            f"feature {feature} has {len(feature_cuts) + 1} bins;"
            f" cannot split after bin {split_bin}"
        )
    return np.float32(feature_cuts[split_bin])
