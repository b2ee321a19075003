"""Exact TreeSHAP contributions of an XGBoost model, read from tables built when the model loads.

XGBoost's own exact contributions (``Booster.predict(pred_contribs=True)``) cost 0.5-0.7 ms for
one transaction of a 100-tree depth-6 model on this project's machine, a quarter of a scoring
request, which must fit inside a card authorisation (the tables: about 0.1 ms; ``bench/scoring.py``
times both). Its cost is the path-dependent TreeSHAP recursion run afresh for every row. Yet the
result of that recursion, for one leaf, depends on the transaction only through which of the
conditions on the leaf's path it satisfies, feature by feature: at most ``2 ** depth`` cases.
:class:`ContributionTables` works out every case of every leaf once, when the model loads, and a
row's contributions are then table look-ups added up per feature (numpy, no Python loop over
trees or leaves).

The algebra, for one leaf of value ``v`` whose path tests the distinct features ``M`` (``m`` of
them): for a feature ``j`` of ``M``, ``z_j`` is the share of the training cover that follows the
path at ``j``'s splits (the product of child cover over parent cover) and ``o_j`` is 1 when the
row satisfies all of ``j``'s conditions on the path, else 0. The path-dependent expectation of
the leaf given the features ``S`` is ``v * prod(o_j for j in S) * prod(z_j for j in M - S)``, and
its Shapley value for ``i`` in ``M`` (features off the path are dummies) is

    phi_i = v * (o_i - z_i) * sum over S within M - {i} of w(|S|) * prod(o_j, j in S) * prod(z_j, j in M - S - {i})

with ``w(s) = s! (m - s - 1)! / m!`` (Lundberg, Erion and Lee, *Consistent individualized feature
attribution for tree ensembles*, 2018: the quantity their recursion computes). With the
``o_j`` in {0, 1} the sum runs over the subsets ``S`` of the satisfied features only: a subset
sum over the ``2 ** m`` bit masks, which the zeta transform gives for all masks at once.

The tables hold float64; XGBoost sums in float32, so the two differ in the last float32
digits. :meth:`ContributionTables.of_booster` checks the tables against XGBoost on probe rows
before anything uses them, and declines a model it cannot represent (other than numerical
splits of a binary tree ensemble) or whose tables would not fit the memory
budget (:class:`TablesDeclined`, with the reason); the caller then asks XGBoost.

The same look-ups tell which leaf of every tree a row reaches (the one whose path the row
satisfies whole), so they also give the probability without another call into XGBoost (whose
Python wrapper cost more than the sum itself: 0.2-0.4 ms a transaction): the leaf values added
in float32 in tree order onto the base margin, then ``1 / (1 + expf(-margin))`` in float32, which
is XGBoost's own arithmetic for ``binary:logistic``. It must give XGBoost's probabilities bit for
bit: it is used only for a model where it does on the probe rows, with the C library's ``expf``
and ``logf`` (XGBoost's), and for margins within +-80; otherwise :meth:`ContributionTables.scores`
answers None and the caller asks XGBoost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import xgboost as xgb
from scipy import sparse

__all__ = ["DEFAULT_TABLE_BUDGET_BYTES", "ContributionTables", "TablesDeclined"]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Tables larger than this are not built (100 full trees of depth 6: 19 MiB; of depth 7: 88 MiB).
DEFAULT_TABLE_BUDGET_BYTES: Final = 64 * 2**20
#: Largest difference from XGBoost's own contributions accepted when the tables are checked,
#: relative to the largest contribution XGBoost gives on the probe rows (float32 sums differ
#: from float64 ones in about the seventh digit).
_AGREEMENT: Final = 1e-4
#: Margins beyond this are left to XGBoost to turn into probabilities (its sigmoid clamps the
#: exponent far out; the copy here is checked on the margins real rows have).
_MARGIN_LIMIT: Final = 80.0
#: Rows looked up together (a block of 100 rows of a 100-tree depth-6 model: 15 MB of work arrays).
_BLOCK: Final = 100


def _libm_float(name: str) -> Callable[[float], float] | None:
    """The C library's single-precision ``name`` (``expf``, ``logf``): the function XGBoost's
    compiled code calls, so that its roundings are XGBoost's. None where there is no such library."""
    found = ctypes.util.find_library("m")
    if found is None:
        return None
    try:
        function = getattr(ctypes.CDLL(found), name)
    except (OSError, AttributeError):
        return None
    function.restype, function.argtypes = ctypes.c_float, [ctypes.c_float]
    return function  # type: ignore[no-any-return]


_EXPF = _libm_float("expf")
_LOGF = _libm_float("logf")


class TablesDeclined(ValueError):
    """A model whose exact contributions the tables do not give (the caller asks XGBoost)."""


@dataclass(frozen=True)
class _Leaf:
    value: float
    features: list[int]  # the distinct features on the path, in order of first test from the root
    zero: list[float]  # z_j of each
    tests: list[tuple[int, float, bool]]  # (feature, threshold, goes left) of every split on the path


def _leaves(tree: dict[str, Any]) -> list[_Leaf] | None:
    """The leaves of one tree of an XGBoost JSON model, None if it has other than numerical splits."""
    left, right = tree["left_children"], tree["right_children"]
    feature, condition, cover = tree["split_indices"], tree["split_conditions"], tree["sum_hessian"]
    if any(int(t) != 0 for t in tree.get("split_type", [])):
        return None
    found: list[_Leaf] = []
    stack: list[tuple[int, list[tuple[int, float, bool]], dict[int, float]]] = [(0, [], {})]
    while stack:
        node, tests, zero = stack.pop()
        if left[node] < 0:
            found.append(_Leaf(float(np.float32(condition[node])), list(zero), list(zero.values()), tests))
            continue
        f, threshold = int(feature[node]), float(np.float32(condition[node]))
        for child, goes_left in ((left[node], True), (right[node], False)):
            share = float(cover[child]) / float(cover[node]) if cover[node] > 0 else 0.0
            stack.append((child, [*tests, (f, threshold, goes_left)], {**zero, f: zero.get(f, 1.0) * share}))
    return found


def _weights(m: int) -> FloatArray:
    """``w(s) = s! (m - s - 1)! / m!`` for s in 0..m-1 (and 0 for s = m, never used)."""
    return np.array([math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) if s < m else 0.0
                     for s in range(m + 1)])


def _tables_of(value: FloatArray, zero: FloatArray) -> FloatArray:
    """phi[leaf, mask, i] for leaves with the same number ``m`` of path features (``zero`` is
    (leaves, m)); ``mask`` has bit j set when the row satisfies feature j's tests."""
    n_leaves, m = zero.shape
    masks = np.arange(2**m)
    bits = ((masks[:, None] >> np.arange(m)[None, :]) & 1).astype(bool)  # (2**m, m)
    weight = _weights(m)[bits.sum(axis=1)]  # w(|S|) per mask S
    phi = np.empty((n_leaves, 2**m, m))
    for i in range(m):
        # prod(z_j for j outside S and j != i), zero when i is in S
        kept = bits | (np.arange(m) == i)[None, :]
        h = np.prod(np.where(kept[None, :, :], 1.0, zero[:, None, :]), axis=2) * weight[None, :]
        h[:, bits[:, i]] = 0.0
        g = h.reshape((n_leaves,) + (2,) * m)  # the subset sums over every mask: a zeta transform
        for axis in range(1, m + 1):
            g = np.cumsum(g, axis=axis)
        phi[:, :, i] = value[:, None] * (bits[:, i][None, :] - zero[:, i][:, None]) * g.reshape(n_leaves, 2**m)
    return phi


class ContributionTables:
    """Exact (path-dependent TreeSHAP) contributions of one binary XGBoost tree ensemble, as
    ``Booster.predict(pred_contribs=True)`` gives them (to float32 rounding)."""

    def __init__(self, leaves: list[_Leaf], n_features: int, bias: float, n_trees: int,
                 base_margin: float | None = None) -> None:
        slots = max((len(leaf.features) for leaf in leaves), default=0)
        n = len(leaves)
        self.n_features = n_features
        self.bias = bias
        # For the probability: every leaf's value (leaves in tree order), and the base margin
        # (None: the probability is not given here).
        self._n_trees = n_trees
        self._leaf_value = np.array([leaf.value for leaf in leaves], dtype=np.float32)
        self.base_margin = None if base_margin is None else np.float32(base_margin)
        # Per leaf and slot (a distinct feature of the path): the feature and the interval that
        # its tests on the path leave, lower <= x < upper in float32 as XGBoost compares (a
        # left branch is x < threshold, a right one its negation). An unused slot has feature
        # n_features (no feature's) and an interval no finite value reaches.
        self._feature = np.full((n, slots), n_features, dtype=np.intp)
        self._lower = np.full((n, slots), np.inf, dtype=np.float32)
        self._upper = np.full((n, slots), -np.inf, dtype=np.float32)
        for row, leaf in enumerate(leaves):
            for k, f in enumerate(leaf.features):
                lower, upper = -np.inf, np.inf
                for tested, threshold, goes_left in leaf.tests:
                    if tested == f:
                        if goes_left:
                            upper = min(upper, threshold)
                        else:
                            lower = max(lower, threshold)
                self._feature[row, k] = f
                self._lower[row, k] = lower
                self._upper[row, k] = upper
        # The column each slot reads: an unused slot reads the first (and is never inside).
        self._column = np.where(self._feature < n_features, self._feature, 0)
        self._bits = (1 << np.arange(slots)).astype(np.float32)
        self._all = np.array([(1 << len(leaf.features)) - 1 for leaf in leaves], dtype=np.int64)
        # The tables, one row per (leaf, mask): the contributions to the leaf's slots.
        table = np.zeros((n, 2**slots, slots))
        for m in range(1, slots + 1):
            rows = np.array([r for r, leaf in enumerate(leaves) if len(leaf.features) == m], dtype=np.intp)
            if rows.size:
                value = np.array([leaves[r].value for r in rows])
                zero = np.array([leaves[r].zero for r in rows])
                table[rows, : 2**m, :m] = _tables_of(value, zero)
        self._table = table.reshape(n * 2**slots, slots)
        self._offset = np.arange(n, dtype=np.int64) * 2**slots
        # Adds each (leaf, slot) contribution to its feature's; the unused slots' row is dropped.
        flat = self._feature.ravel()
        used = flat < n_features
        self._to_features = sparse.csr_matrix((np.ones(int(used.sum())), (flat[used], np.flatnonzero(used))),
                                              shape=(n_features, flat.size))

    @property
    def nbytes(self) -> int:
        return int(self._table.nbytes)

    @staticmethod
    def table_bytes(leaves: list[_Leaf]) -> int:
        slots = max((len(leaf.features) for leaf in leaves), default=0)
        return len(leaves) * 2**slots * slots * 8

    @classmethod
    def of_booster(cls, booster: xgb.Booster, *, budget_bytes: int | None = None,
                   probes: int = 256, seed: int = 0) -> ContributionTables:
        """The tables of ``booster``, checked against its own ``pred_contribs`` on ``probes`` rows
        made to cross its thresholds (``budget_bytes``: default :data:`DEFAULT_TABLE_BUDGET_BYTES`).

        Raises
        ------
        TablesDeclined
            The model is not a binary ensemble of numerical splits, its tables would pass
            ``budget_bytes``, or they do not give XGBoost's contributions.
        """
        document = json.loads(bytes(booster.save_raw("json")))
        learner = document["learner"]
        gbm = learner["gradient_booster"]
        param = learner["learner_model_param"]
        if (gbm.get("name") != "gbtree" or int(param.get("num_class", "0")) > 1
                or int(param.get("num_target", "1")) > 1):
            raise TablesDeclined(f"a {gbm.get('name')} model of {param.get('num_class')} classes and "
                                 f"{param.get('num_target', 1)} targets, not a binary tree ensemble")
        n_features = int(param["num_feature"])
        leaves: list[_Leaf] = []
        trees = gbm["model"]["trees"]
        for tree in trees:
            found = _leaves(tree)
            if found is None:
                raise TablesDeclined("the model has categorical splits")
            leaves.extend(found)
        budget_bytes = DEFAULT_TABLE_BUDGET_BYTES if budget_bytes is None else budget_bytes
        if (size := cls.table_bytes(leaves)) > budget_bytes:
            raise TablesDeclined(f"its tables would take {size / 2**20:.1f} MiB, over the budget of "
                                 f"{budget_bytes / 2**20:.1f} MiB")
        probe = cls._probe_rows(leaves, n_features, probes, seed)
        data = xgb.DMatrix(probe, nthread=1)
        expected = np.asarray(booster.predict(data, pred_contribs=True, validate_features=False), dtype=np.float64)
        tables = cls(leaves, n_features, bias=float(expected[0, -1]), n_trees=len(trees),
                     base_margin=_base_margin(learner))
        probability, got = tables.scores(probe)
        scale = max(float(np.abs(expected).max()), 1e-12)
        gap = float(np.abs(got - expected).max())
        if gap > _AGREEMENT * scale:
            raise TablesDeclined(f"its tables differ from XGBoost's contributions on probe rows by {gap:.3g} "
                                 f"(largest contribution {scale:.3g})")
        log.debug("contribution tables checked on %d rows: largest difference %.2g", probes, gap)
        if tables.base_margin is not None and (
                probability is None
                or not np.array_equal(probability, booster.predict(data, validate_features=False))):
            log.info("probabilities from XGBoost: the tables' sums are not its own on the probe rows")
            tables.base_margin = None
        return tables

    @staticmethod
    def _probe_rows(leaves: list[_Leaf], n_features: int, n: int, seed: int) -> FloatArray:
        """Rows whose values sit on either side of the model's thresholds (each value a threshold
        of its feature, or just below one), so that the probes reach many leaves."""
        rng = np.random.default_rng(seed)
        thresholds: list[list[float]] = [[] for _ in range(n_features)]
        for leaf in leaves:
            for f, threshold, _ in leaf.tests:
                thresholds[f].append(threshold)
        rows = np.zeros((n, n_features))
        for f, values in enumerate(thresholds):
            if values:
                picked = np.asarray(values)[rng.integers(0, len(values), size=n)]
                below = rng.random(n) < 0.5
                rows[:, f] = np.where(below, np.nextafter(picked.astype(np.float32), np.float32(-np.inf)), picked)
            else:
                rows[:, f] = rng.normal(size=n)
        return rows

    def contributions(self, X: npt.ArrayLike) -> FloatArray:
        """Per row, one contribution per feature and the bias last (as ``pred_contribs``).

        Rows must hold finite values: XGBoost sends a missing (NaN) value its own way at each
        split, which the intervals do not represent (the caller asks XGBoost for such rows)."""
        return self.scores(X)[1]

    def scores(self, X: npt.ArrayLike) -> tuple[npt.NDArray[np.float32] | None, FloatArray]:
        """The rows' probabilities (float32, XGBoost's bit for bit; None when this model's or these
        rows' are XGBoost's to give) and their contributions (as :meth:`contributions`)."""
        x = np.asarray(X, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("rows with a missing or infinite value: ask XGBoost")
        out = np.empty((len(x), self.n_features + 1))
        out[:, -1] = self.bias
        margin = np.empty(len(x), dtype=np.float32)
        for start in range(0, len(x), _BLOCK):
            values = np.take(x[start : start + _BLOCK], self._column, axis=1)  # (rows, leaves, slots)
            inside = (values >= self._lower) & (values < self._upper)
            masks = (inside.astype(np.float32) @ self._bits).astype(np.int64)  # exact: at most 2**slots - 1
            found = np.take(self._table, self._offset + masks, axis=0)  # (rows, leaves, slots)
            out[start : start + _BLOCK, :-1] = (self._to_features @ found.reshape(len(found), -1).T).T
            if self.base_margin is not None:
                margin[start : start + _BLOCK] = self._margins(masks == self._all)
        if self.base_margin is None or not (np.abs(margin) < _MARGIN_LIMIT).all():
            return None, out
        return _sigmoid(margin), out

    def _margins(self, reached: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
        """XGBoost's margins: from the base margin, each tree's reached leaf added in float32, in
        tree order (``reached`` is (rows, leaves): the one leaf of every tree a row satisfies)."""
        rows = len(reached)
        picked = self._leaf_value[np.nonzero(reached)[1]]  # row by row, trees in order
        if picked.size != rows * self._n_trees:  # cannot happen for finite rows; never guess
            return np.full(rows, np.inf, dtype=np.float32)
        terms = np.empty((rows, self._n_trees + 1), dtype=np.float32)
        terms[:, 0] = self.base_margin
        terms[:, 1:] = picked.reshape(rows, self._n_trees)
        return np.add.accumulate(terms, axis=1)[:, -1]  # one addition after another, as XGBoost


def _base_margin(learner: dict[str, Any]) -> float | None:
    """``binary:logistic``'s base margin as XGBoost computes it, ``-logf(1 / base_score - 1)`` in
    float32; None for another objective or without the C library."""
    if learner.get("objective", {}).get("name") != "binary:logistic" or _LOGF is None or _EXPF is None:
        return None
    raw = str(learner["learner_model_param"]["base_score"]).strip("[]")
    score = np.float32(float(raw))
    if not 0 < score < 1:
        return None
    return float(-np.float32(_LOGF(float(np.float32(np.float32(1.0) / score - np.float32(1.0))))))


def _sigmoid(margin: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``1 / (1 + expf(-margin))`` in float32, with the C library's ``expf``."""
    assert _EXPF is not None
    one = np.float32(1.0)
    return np.array([one / (np.float32(_EXPF(-m)) + one) for m in margin.tolist()], dtype=np.float32)
