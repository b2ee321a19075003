"""Where a bank's training rows live while a federated algorithm runs over them.

An algorithm keeps its per-row state (bins, margins, node of each row, standardised features) in
a *part*: an immutable object over some of the bank's rows, whose methods give the next state or
what those rows contribute to a secure sum. A :class:`Parts` holds every part of the bank:

- :class:`Local`: one part over all the rows, in this process (the default path);
- :class:`bank_node.scale.DaskParts`: one part per partition of a ``dask.dataframe``, each on
  the worker that computed it (transaction histories larger than one machine's memory).

The algorithm is written once against :class:`Parts`: a step is applied to every part where it
lies, and only the parts' contributions (histograms, sums of derivatives) travel, to be added up
in partition order. Sums of counts are exact; float sums in another order may differ in the last
bit, below the resolution of the fixed point a secure sum carries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = ["Local", "Parts"]

FloatArray = npt.NDArray[np.float64]
T = TypeVar("T")


class Parts(Protocol[T]):
    """A bank's rows in parts, and the two things an algorithm does with them."""

    @property
    def whole(self) -> bool:
        """One part holds every row, in the bank's order (what row subsampling needs)."""

    def apply(self, step: Callable[[T], T]) -> Parts[T]:
        """Every part replaced by ``step(part)``, computed where the part lies."""

    def total(self, value: Callable[[T], npt.ArrayLike]) -> FloatArray:
        """The sum of ``value(part)`` over the parts, in partition order."""


@dataclass(frozen=True)
class Local(Generic[T]):
    """All the bank's rows in one part, in this process."""

    part: T

    @property
    def whole(self) -> bool:
        return True

    def apply(self, step: Callable[[T], T]) -> Local[T]:
        return Local(step(self.part))

    def total(self, value: Callable[[T], npt.ArrayLike]) -> FloatArray:
        return np.asarray(value(self.part), dtype=np.float64)
