"""Row and column subsampling from shared seeds, reproducible on every bank.

Both samplers draw raw 64-bit words from NumPy's PCG64 seeded through ``SeedSequence``,
whose streams NumPy keeps stable across versions (unlike ``Generator`` methods), so banks
running different NumPy releases still agree on the column sample.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .params import GBDTParams

__all__ = ["column_sample", "row_sample_mask"]

# Separate streams for the two purposes, so a column draw never reuses row words.
_COLUMNS, _ROWS = 0, 1


def _raw_words(entropy: list[int], n: int) -> npt.NDArray[np.uint64]:
    return np.random.PCG64(np.random.SeedSequence(entropy)).random_raw(n)


def column_sample(n_features: int, params: GBDTParams, tree_index: int) -> npt.NDArray[np.int64]:
    """Features tree ``tree_index`` may split on; identical on every bank.

    Parameters
    ----------
    n_features : int
        Number of columns.
    params : GBDTParams
        ``colsample_bytree`` and ``seed`` are used.
    tree_index : int
        0-based index of the tree.

    Returns
    -------
    numpy.ndarray of int64
        ``max(1, int(colsample_bytree * n_features))`` column indices, increasing.
    """
    if params.colsample_bytree >= 1.0:
        return np.arange(n_features, dtype=np.int64)
    k = max(1, int(params.colsample_bytree * n_features))
    keys = _raw_words([params.seed, _COLUMNS, tree_index], n_features)
    return np.sort(np.argsort(keys, kind="stable")[:k]).astype(np.int64)


def row_sample_mask(
    n_rows: int, params: GBDTParams, tree_index: int, party_index: int
) -> npt.NDArray[np.bool_]:
    """Rows of one bank that take part in tree ``tree_index`` (Bernoulli(``subsample``)).

    Parameters
    ----------
    n_rows : int
        Number of the bank's training rows.
    params : GBDTParams
        ``subsample`` and ``seed`` are used.
    tree_index : int
        0-based index of the tree.
    party_index : int
        A stable, non-negative number of the bank (e.g. its enrolment order), so that banks
        draw independent samples and a rerun draws the same.

    Returns
    -------
    numpy.ndarray of bool, shape (n_rows,)
    """
    if params.subsample >= 1.0:
        return np.ones(n_rows, dtype=bool)
    words = _raw_words([params.seed, _ROWS, tree_index, party_index], n_rows)
    uniform = (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return uniform < params.subsample
