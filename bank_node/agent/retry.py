"""Bounded exponential backoff with jitter, for requests and for polling."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff", "RetryPolicy"]


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often, and for how long, to repeat a request the consortium could not answer.

    Parameters
    ----------
    max_attempts
        Most tries of one request, the first included.
    base_delay_s
        Pause after the first failure; each further failure doubles it.
    max_delay_s
        Longest single pause.
    total_timeout_s
        Give up once this much time has passed since the first try.
    jitter
        Draw each pause uniformly from ``[delay / 2, delay]`` so that banks restarted together do
        not retry in lockstep.
    """

    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 15.0
    total_timeout_s: float = 120.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or self.total_timeout_s < 0:
            raise ValueError("retry delays and timeout must not be negative")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Pause after ``failures`` consecutive failures (1 for the first)."""
        return _delay(failures, self.base_delay_s, self.max_delay_s, self.jitter, rng)


@dataclass
class Backoff:
    """Growing pauses between polls of a resource that is not ready yet.

    Parameters
    ----------
    initial_s
        First pause.
    max_s
        Longest pause.
    factor
        Growth per poll.
    jitter
        As in :class:`RetryPolicy`.
    """

    initial_s: float = 0.2
    max_s: float = 5.0
    factor: float = 1.5
    jitter: bool = True
    _polls: int = 0

    def next(self, rng: random.Random | None = None) -> float:
        """The next pause."""
        pause = min(self.max_s, self.initial_s * self.factor**self._polls)
        self._polls += 1
        if self.jitter:
            pause = (rng or random).uniform(pause / 2, pause)
        return pause


def _delay(failures: int, base: float, cap: float, jitter: bool, rng: random.Random | None) -> float:
    pause = min(cap, base * 2.0 ** max(failures - 1, 0))
    if jitter:
        pause = (rng or random).uniform(pause / 2, pause)
    return pause
