"""One bank's side of a differentially private run: clip each transaction's influence, then add
Gaussian noise to every vector the bank contributes, before it is encrypted.

The noise of a release is ``N(0, (multiplier * sensitivity)^2)`` on every value, where the
multiplier comes from the run's (epsilon, delta) and its number of releases
(:func:`schemas.privacy.noise_multiplier`) and the sensitivity is the L2 norm of the most one
transaction can change the vector, once clipped:

- bin counts: a transaction adds 1 to one cell per feature, so ``sqrt(features)``;
- a tree level's histograms: a transaction is in at most one requested node, and adds its gradient
  (clipped to ``[-clip, clip]``) and Hessian (clipped to ``[0, clip / 4]``) to one bin per feature,
  so ``sqrt(features * (clip^2 + (clip / 4)^2))``;
- logistic regression: features clipped to declared ranges and scaled into ``[-1, 1]`` (``d + 1``
  values with the intercept's), each row's weight clipped to ``clip``; its Hessian bound
  ``0.25 w z z^T`` then changes by at most ``clip (d + 1) / 4`` and a gradient ``w (p - y) z`` by
  ``clip sqrt(d + 1)`` (over the number of rows the sum is divided by).

Noise comes from the operating system's entropy unless a seeded generator is given (tests).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bank_node.federated.params import GBDTParams
from schemas.privacy import RunPrivacy

__all__ = ["PrivateContribution", "clip_gradients"]

FloatArray = npt.NDArray[np.float64]


def clip_gradients(grad: npt.ArrayLike, hess: npt.ArrayLike, *, clip: float,
                   hessian_clip: float) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Each row's gradient into ``[-clip, clip]`` and Hessian into ``[0, hessian_clip]`` (dtypes
    kept): the bounds alone, where the rows are (no noise generator travels with them)."""
    grad, hess = np.asarray(grad), np.asarray(hess)
    return (np.clip(grad, -clip, clip).astype(grad.dtype, copy=False),
            np.clip(hess, 0.0, hessian_clip).astype(hess.dtype, copy=False))


@dataclass
class PrivateContribution:
    """Clipping bounds and the noise generator of one bank in one private run.

    Attributes
    ----------
    privacy
        The run's setting (shared by every bank).
    n_parties
        Banks whose noise the decrypted sums carry (to tell noise from signal afterwards).
    rng
        Source of the noise.
    """

    privacy: RunPrivacy
    n_parties: int = 1
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    @property
    def clip(self) -> float:
        return self.privacy.clip

    @property
    def hessian_clip(self) -> float:
        return self.privacy.clip / 4.0

    def sigma(self, sensitivity: float) -> float:
        """Standard deviation of the noise one bank adds for a release of that sensitivity."""
        return self.privacy.multiplier * sensitivity

    def noisy(self, values: npt.ArrayLike, sensitivity: float) -> FloatArray:
        """``values`` plus this bank's noise for a release of L2 sensitivity ``sensitivity``."""
        array = np.asarray(values, dtype=np.float64)
        return array + self.rng.normal(0.0, self.sigma(sensitivity), size=array.shape)

    def gate_noisy(self, values: npt.ArrayLike, sensitivity: float) -> FloatArray:
        """``values`` plus this bank's noise for the promotion gate's release (its own epsilon)."""
        if self.privacy.gate_multiplier is None:  # pragma: no cover - every setting made by run_privacy has one
            raise ValueError("this run's privacy setting has no gate release")
        array = np.asarray(values, dtype=np.float64)
        return array + self.rng.normal(0.0, self.privacy.gate_multiplier * sensitivity, size=array.shape)

    def summed_sigma(self, sensitivity: float) -> float:
        """Standard deviation of the noise in a sum over every party."""
        return self.sigma(sensitivity) * math.sqrt(self.n_parties)

    # ------------------------------------------------------------------ gradient trees

    def clip_gradients(self, grad: npt.ArrayLike, hess: npt.ArrayLike) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        """Each row's gradient into ``[-clip, clip]`` and Hessian into ``[0, clip / 4]`` (dtypes kept)."""
        return clip_gradients(grad, hess, clip=self.clip, hessian_clip=self.hessian_clip)

    @staticmethod
    def counts_sensitivity(n_features: int) -> float:
        return math.sqrt(n_features)

    def histogram_sensitivity(self, n_features: int) -> float:
        return math.sqrt(n_features * (self.clip**2 + self.hessian_clip**2))

    def growing_params(self, params: GBDTParams, n_features: int, n_bins: int) -> GBDTParams:
        """``params`` with a minimum child weight no smaller than three standard deviations of the
        noise in a child's summed Hessian (a prefix of up to ``n_bins`` noisy cells): a child
        lighter than that is mostly noise, and its leaf weight ``-G / (H + lambda)`` would be too.
        The floor depends on public settings only (post-processing, no privacy spent)."""
        noise = self.summed_sigma(self.histogram_sensitivity(n_features)) * math.sqrt(n_bins)
        return dataclasses.replace(params, min_child_weight=max(params.min_child_weight, 3.0 * noise))

    def denoised_counts(self, summed: npt.ArrayLike, n_features: int) -> FloatArray:
        """Summed bin counts with the cells that noise alone could explain (under three standard
        deviations of the summed noise) set to 0: post-processing, which costs no privacy."""
        counts = np.asarray(summed, dtype=np.float64)
        floor = 3.0 * self.summed_sigma(self.counts_sensitivity(n_features))
        return np.where(counts > floor, counts, 0.0)

    # ------------------------------------------------------------------ logistic regression

    def bound_sensitivity(self, n_columns: int) -> float:
        """Of ``0.25 * w z z^T`` for a row of ``n_columns`` values in ``[-1, 1]``, ``w <= clip``."""
        return 0.25 * self.clip * n_columns

    def gradient_sensitivity(self, n_columns: int) -> float:
        """Of ``w (p - y) z`` for such a row."""
        return self.clip * math.sqrt(n_columns)
