"""The model the scoring service uses, swapped atomically when the consortium promotes another.

A request takes the holder's current :class:`Serving` once and scores every one of its rows with
it, so no request mixes two models and each answer names the version that scored it. A new model
is loaded and checked completely before it replaces the old one; one that fails leaves the old
one serving, and says so in the log and in :attr:`ModelHolder.last_error`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from bank_node.agent.state import StateDir
from bank_node.online import ConsortiumTerminals
from bank_node.scoring import LoadedModel, current_model_file, load_model
from bank_node.terminal_history import PooledHistory, terminal_key

__all__ = ["ModelHolder", "Serving"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Serving:
    """A loaded model and what it needs to build its inputs."""

    model: LoadedModel
    record: dict[str, Any] = field(default_factory=dict)
    consortium: ConsortiumTerminals | None = None
    pooled_days: int = 0


class ModelHolder:
    """The current model of one family, from the node's state directory.

    Parameters
    ----------
    state
        The node's state directory (the agent keeps verified models there).
    family
        ``xgboost`` or ``logreg``.
    history
        The node's pooled consortium terminal history (for models that use it).
    exact_reasons_max
        Largest request whose reasons are exact.
    """

    def __init__(self, state: StateDir, *, family: str, history: PooledHistory | None,
                 exact_reasons_max: int) -> None:
        self.state = state
        self.family = family
        self.history = history
        self.exact_reasons_max = exact_reasons_max
        self._serving: Serving | None = None
        self._lock = threading.Lock()
        self.last_error = ""

    @property
    def serving(self) -> Serving | None:
        """The model in use (one attribute read: atomic)."""
        return self._serving

    def refresh(self) -> bool:
        """Load the newest promoted model if it is not the one in use; True if it changed."""
        with self._lock:
            found = current_model_file(self.state, self.family)
            if found is None:
                return False
            version, path, record = found
            held = self._serving
            pooled_days = self._pooled_days()
            if held is not None and held.model.version == version and held.pooled_days == pooled_days:
                return False
            try:
                model = load_model(path.read_bytes(), version=version, family=self.family,
                                   exact_reasons_max=self.exact_reasons_max)
                consortium = self._consortium(model) if model.features.consortium else None
            except (OSError, ValueError) as exc:
                self.last_error = f"model {version} not loaded, model {held.model.version if held else 'none'} " \
                                  f"stays in use: {exc}"
                log.error("%s", self.last_error)
                return False
            self._serving = Serving(model=model, record=record, consortium=consortium, pooled_days=pooled_days)
            self.last_error = ""
            log.info("scoring with model %s (%s%s)", version, self.family,
                     ", consortium terminal features" if consortium else "")
            return True

    def _pooled_days(self) -> int:
        if self.history is None:
            return 0
        return sum(len(self.history.pooled(key_id)) for key_id in self._key_ids())

    def _key_ids(self) -> list[str]:
        from bank_node.agent.ceremony import load_secret_scheme

        try:
            return [load_secret_scheme(self.state).key_id]
        except Exception:  # noqa: BLE001 - no key yet: no consortium history to use
            return []

    def _consortium(self, model: LoadedModel) -> ConsortiumTerminals:
        secret = self.state.load_secret_context()
        key_ids = self._key_ids()
        if self.history is None or secret is None or not key_ids:
            raise ValueError("it uses consortium terminal features and this node holds no pooled history")
        days = sorted(self.history.pooled(key_ids[0]))
        if not days:
            raise ValueError("it uses consortium terminal features and this node has pooled none yet")
        return ConsortiumTerminals(history=self.history.load(key_ids[0], days, threshold=model.features.threshold),
                                   key=terminal_key(secret))
