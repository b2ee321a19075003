"""Federated evaluation: the consortium's pooled ROC AUC and average precision, from each bank's
score histograms summed under HE, without any bank's own result being revealed.

Each bank scores its recent labelled rows with each model under comparison, counts its scores per
class in a fixed grid of bins (the same on every bank), and sends the counts to a secure sum. The
decrypted sum is the pooled histogram, from which every bank computes the same metrics:

- ROC AUC: the probability that a fraud outscores a genuine transaction, ties counting one half;
  scores in one bin count as tied.
- Average precision as scikit-learn defines it, ``sum_k (R_k - R_{k-1}) P_k`` over thresholds taken
  at the bin edges from the top.

The bins are uniform in log-odds between ``-LOGIT_LIMIT`` and ``LOGIT_LIMIT`` (scores beyond go to
the end bins), so that the crowded low scores of a fraud model are resolved as finely as the rest.
The only approximation is that rows within one bin are ranked as ties.

In a differentially private run the histograms are a release like the training's sums: each bank
adds Gaussian noise to its counts before encrypting (a transaction is in one bin of each model's
histogram, so the L2 sensitivity is the square root of the number of models), in ``PRIVATE_BINS``
bins per class rather than ``DEFAULT_BINS``: a week of validation holds a few hundred frauds, and
the error of the AUC grows with the number of noisy fraud bins above the genuine mass. Negative
noisy counts are read as 0 (post-processing): that lowers both models' AUC alike (empty bins gain
counts) but halves the spread of their difference, which is what the gate decides on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from bank_node.federated.rounds import Algorithm, SumRequest

__all__ = [
    "DEFAULT_BINS",
    "PRIVATE_BINS",
    "PooledMetrics",
    "federated_evaluation",
    "pooled_evaluation",
    "metrics_from_histograms",
    "score_histogram",
]

DEFAULT_BINS: Final = 4096
PRIVATE_BINS: Final = 16
LOGIT_LIMIT: Final = 16.0

FloatArray = npt.NDArray[np.float64]


def _bin_of(scores: FloatArray, n_bins: int) -> npt.NDArray[np.int64]:
    clipped = np.clip(np.asarray(scores, dtype=np.float64), 1e-300, 1 - 1e-16)
    logits = np.log(clipped) - np.log1p(-clipped)
    position = (logits + LOGIT_LIMIT) / (2 * LOGIT_LIMIT) * n_bins
    return np.clip(np.floor(position), 0, n_bins - 1).astype(np.int64)


def score_histogram(scores: npt.ArrayLike, labels: npt.ArrayLike, *, n_bins: int = DEFAULT_BINS) -> FloatArray:
    """Counts of scores per bin, genuine rows then fraud rows: a vector of ``2 * n_bins``.

    Parameters
    ----------
    scores
        Probabilities of fraud in [0, 1].
    labels
        0 (genuine) or 1 (fraud), one per score.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    bins = _bin_of(scores, n_bins)
    fraud = labels.astype(bool)
    return np.concatenate([
        np.bincount(bins[~fraud], minlength=n_bins), np.bincount(bins[fraud], minlength=n_bins)
    ]).astype(np.float64)


@dataclass(frozen=True)
class PooledMetrics:
    """The consortium's metrics of one model on the pooled validation rows."""

    auc: float
    average_precision: float
    rows: int
    frauds: int


def metrics_from_histograms(histogram: FloatArray) -> PooledMetrics:
    """AUC and average precision from a (pooled) histogram of :func:`score_histogram`'s layout.

    Raises
    ------
    ValueError
        The rows hold one class only (the metrics are undefined).
    """
    counts = np.clip(np.rint(np.asarray(histogram, dtype=np.float64)), 0.0, None)  # noisy counts may dip below 0
    n_bins = counts.size // 2
    genuine, fraud = counts[:n_bins], counts[n_bins:]
    negatives, positives = genuine.sum(), fraud.sum()
    if negatives == 0 or positives == 0:
        raise ValueError(f"validation rows hold {int(positives)} frauds and {int(negatives)} genuine: no metric")
    below = np.concatenate([[0.0], np.cumsum(genuine)[:-1]])
    auc = float(np.sum(fraud * (below + 0.5 * genuine)) / (positives * negatives))
    # Thresholds from the highest bin down: true and false positives at or above each.
    tp = np.cumsum(fraud[::-1])
    fp = np.cumsum(genuine[::-1])
    taken = (fraud[::-1] + genuine[::-1]) > 0
    tp, fp = tp[taken], fp[taken]
    precision = tp / (tp + fp)
    recall = tp / positives
    steps = np.diff(np.concatenate([[0.0], recall]))
    return PooledMetrics(auc=auc, average_precision=float(np.sum(steps * precision)),
                         rows=int(negatives + positives), frauds=int(positives))


def federated_evaluation(
    scorers: Sequence[Callable[[FloatArray], FloatArray]],
    X: FloatArray | Sequence[FloatArray],
    y: FloatArray,
    *,
    n_bins: int = DEFAULT_BINS,
    prefix: str = "eval",
    noise: Callable[[FloatArray, float], FloatArray] | None = None,
) -> Algorithm[list[PooledMetrics]]:
    """One bank's part of evaluating several models together, in one secure sum.

    Parameters
    ----------
    scorers
        Each model's scoring function (rows to fraud probabilities), in the same order on every bank.
    X, y
        This bank's validation rows and labels (never leave the bank); ``X`` may also be one
        matrix per scorer (the same rows, built as each model was trained).
    noise
        In a private run: ``noise(counts, sensitivity)`` gives the counts with this bank's noise
        for a release of that L2 sensitivity.

    Returns
    -------
    Algorithm
        Yields one :class:`SumRequest` of ``len(scorers) * 2 * n_bins`` counts; returns each
        model's pooled metrics (the same on every bank).
    """
    inputs: list[FloatArray] = list(X) if isinstance(X, (list, tuple)) else [np.asarray(X)] * len(scorers)
    if len(inputs) != len(scorers):
        raise ValueError(f"{len(inputs)} input matrices for {len(scorers)} scorers")
    histograms = [score_histogram(score(rows), y, n_bins=n_bins) for score, rows in zip(scorers, inputs)]
    return (yield from pooled_evaluation(histograms, prefix=prefix, noise=noise))


def pooled_evaluation(
    histograms: Sequence[FloatArray],
    *,
    prefix: str = "eval",
    noise: Callable[[FloatArray, float], FloatArray] | None = None,
) -> Algorithm[list[PooledMetrics]]:
    """:func:`federated_evaluation` from this bank's score histograms, one per model (each as
    :func:`score_histogram` gives it, of the same number of bins), however they were counted."""
    if not histograms or len({len(h) for h in histograms}) != 1:
        raise ValueError("one score histogram per model, all of the same number of bins")
    counts = np.concatenate([np.asarray(h, dtype=np.float64) for h in histograms])
    if noise is not None:
        counts = noise(counts, math.sqrt(len(histograms)))
    summed = yield SumRequest(f"{prefix}/histograms", counts)
    width = len(histograms[0])
    return [metrics_from_histograms(summed[i * width : (i + 1) * width]) for i in range(len(histograms))]
