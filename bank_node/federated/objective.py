"""The ``binary:logistic`` objective in XGBoost's float32 arithmetic.

Trees grown from the same histograms as XGBoost are identical to XGBoost's only when the
gradients are identical bit for bit, so this module reproduces XGBoost's single-precision
formulas, including its use of the C library's ``expf``:

* ``p = 1 / (expf(min(-margin, 88.7)) + 1)``
* ``grad = (p - y) * w`` and ``hess = max(p * (1 - p), 1e-16) * w``, where ``w`` is
  ``scale_pos_weight`` for positive rows and 1 otherwise;
* the margin of ``base_score`` is ``-logf(1 / base_score - 1)``.

NumPy's float32 ``exp`` differs from glibc's ``expf`` in the last bit on about 40% of inputs.
``exp`` in float64 rounded to float32 (correct rounding for all practical purposes) differs on
about 0.06%, and only where the exact value lies within a few thousandths of a unit in the
last place (ulp) of a float32 rounding midpoint: glibc's ``expf`` is accurate to 0.502 ulp.
:func:`expf` therefore rounds the float64 result and asks the C library only about the few
per cent of inputs that lie within 1/64 ulp of a midpoint, which gives libm's answer at
NumPy speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

__all__ = [
    "EXPF_FROM_LIBM",
    "base_margin",
    "expf",
    "logistic_gradients",
    "sigmoid",
]

Float32Array = npt.NDArray[np.float32]

# XGBoost clips -margin here so that expf stays finite.
_EXP_ARG_MAX = np.float32(88.7)
_HESS_FLOOR = np.float32(1e-16)
# XGBoost's kRtEps: base_score is clipped to [kRtEps, 1 - kRtEps] before the logit.
_PROB_EPS = np.float32(1e-6)
# Inputs whose float64 exp lies closer than this (in float32 ulps) to a rounding midpoint are
# handed to libm; glibc's expf error bound (0.502 ulp) needs 0.002.
_MIDPOINT_GUARD = 1.0 / 64.0
_F32_TINY = float(np.finfo(np.float32).tiny)
_F32_MAX = float(np.finfo(np.float32).max)


def _libm_function(name: str) -> Callable[[float], float] | None:
    path = ctypes.util.find_library("m")
    try:
        library = ctypes.CDLL(path) if path else ctypes.CDLL(None)
        function = getattr(library, name)
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.c_float
    function.argtypes = [ctypes.c_float]
    return function  # type: ignore[no-any-return]


_LIBM_EXPF = _libm_function("expf")
_LIBM_LOGF = _libm_function("logf")

#: True when the C library's ``expf`` was found; without it :func:`expf` is correctly rounded
#: and may differ from XGBoost's gradients in the last bit on about 0.06% of rows.
EXPF_FROM_LIBM: bool = _LIBM_EXPF is not None


def expf(x: npt.ArrayLike) -> Float32Array:
    """Single-precision exponential, equal to the C library's ``expf`` element by element.

    Parameters
    ----------
    x : array_like
        Arguments; converted to float32.

    Returns
    -------
    numpy.ndarray
        ``expf(x)`` as float32, same shape as ``x``.
    """
    args = np.asarray(x, dtype=np.float32)
    wide = np.exp(args.astype(np.float64))
    out = wide.astype(np.float32)
    if _LIBM_EXPF is None:
        return out
    rounded = out.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        above = np.nextafter(out, np.float32(np.inf)).astype(np.float64)
        below = np.nextafter(out, np.float32(-np.inf)).astype(np.float64)
        rounded_down = wide >= rounded
        neighbour = np.where(rounded_down, above, below)
        gap = np.abs(neighbour - rounded)
        to_midpoint = np.abs((rounded + neighbour) / 2.0 - wide) / gap
        suspect = ~(to_midpoint >= _MIDPOINT_GUARD)  # also catches NaN
        suspect |= ~((wide >= _F32_TINY) & (wide <= _F32_MAX))
    flat_args = args.reshape(-1)
    flat_out = out.reshape(-1)
    for i in np.flatnonzero(suspect.reshape(-1)).tolist():
        flat_out[i] = _LIBM_EXPF(float(flat_args[i]))
    return out


def sigmoid(margin: npt.ArrayLike) -> Float32Array:
    """Probability from margin, as XGBoost computes it: ``1 / (expf(min(-m, 88.7)) + 1)``.

    Parameters
    ----------
    margin : array_like
        Raw scores (log-odds); converted to float32.

    Returns
    -------
    numpy.ndarray
        Probabilities as float32, same shape as ``margin``.
    """
    m = np.asarray(margin, dtype=np.float32)
    e = expf(np.minimum(-m, _EXP_ARG_MAX))
    # XGBoost adds 1e-16f as well; in float32 that never changes e + 1 >= 1.
    return np.float32(1.0) / (e + np.float32(1.0))


def logistic_gradients(
    margin: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    scale_pos_weight: float = 1.0,
) -> tuple[Float32Array, Float32Array]:
    """Gradients and hessians of the logistic loss, bit-identical to XGBoost's.

    Parameters
    ----------
    margin : array_like, shape (n_rows,)
        Current raw scores of the rows (float32).
    labels : array_like, shape (n_rows,)
        Labels in [0, 1]; rows labelled exactly 1 are weighted by ``scale_pos_weight``.
    scale_pos_weight : float
        Weight of positive rows.

    Returns
    -------
    grad, hess : numpy.ndarray, shape (n_rows,)
        float32 first and second derivatives of the loss at ``margin``.
    """
    y = np.asarray(labels, dtype=np.float32)
    p = sigmoid(margin)
    if y.shape != p.shape:
        raise ValueError(f"labels shape {y.shape} does not match margin shape {p.shape}")
    if y.size and not (np.all(y >= 0.0) and np.all(y <= 1.0)):
        raise ValueError("labels must lie in [0, 1]")
    grad = p - y
    hess = np.maximum(p * (np.float32(1.0) - p), _HESS_FLOOR)
    spw = np.float32(scale_pos_weight)
    if spw != np.float32(1.0):
        weight = np.where(y == np.float32(1.0), spw, np.float32(1.0)).astype(np.float32)
        grad = grad * weight
        hess = hess * weight
    return grad, hess


def base_margin(base_score: float) -> np.float32:
    """The margin XGBoost starts from for ``base_score`` (a probability).

    Parameters
    ----------
    base_score : float
        Initial probability, clipped to [1e-6, 1 - 1e-6] as XGBoost does.

    Returns
    -------
    numpy.float32
        ``-logf(1 / base_score - 1)`` in float32.
    """
    p = np.float32(base_score)
    p = min(max(p, _PROB_EPS), np.float32(1.0) - _PROB_EPS)
    odds_inverse = np.float32(1.0) / p - np.float32(1.0)
    if _LIBM_LOGF is not None:
        return np.float32(-_LIBM_LOGF(float(odds_inverse)))
    return np.float32(-np.log(np.float64(odds_inverse)))
