"""The model the scoring service uses, swapped atomically when the consortium promotes another.

A request takes the holder's current :class:`Serving` once and scores every one of its rows with
it, so no request mixes two models and each answer names the version that scored it. A new model
is loaded and checked completely before it replaces the old one; one that fails leaves the old
one serving, and says so in the log and in :attr:`ModelHolder.last_error`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
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
    history_version: tuple[int, int, str] | None = None


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
        self._key: tuple[bytes, str, bytes] | None = None  # (secret digest, key id, terminal key)
        self.last_error = ""

    @property
    def serving(self) -> Serving | None:
        """The model in use (one attribute read: atomic)."""
        return self._serving

    def refresh(self) -> bool:
        """Load the newest promoted model if it is not the one in use, or the pooled history if it
        changed since; True if what serves changed.

        A model that fails to load (whatever the error) leaves the one in use serving; a worker
        that has none yet (just started) serves the newest kept model that loads instead, as the
        workers started before the failing model arrived do."""
        with self._lock:
            found = current_model_file(self.state, self.family)
            if found is None:
                return False
            version, path, record = found
            key = self._consortium_key()
            history_version = None if key is None or self.history is None else self.history.version(key[0])
            held = self._serving
            if held is not None and held.model.version == version and held.history_version == history_version:
                return False
            try:
                serving = self._load(version, path, record, key, history_version, held)
            except Exception as exc:  # noqa: BLE001 - no model file may stop the service or its watch
                error = f"model {version} not loaded, model {held.model.version if held else 'none'} " \
                        f"stays in use: {exc}"
                fallback = self._fallback(version, key, history_version) if held is None else None
                if fallback is not None:
                    error = f"model {version} not loaded, model {fallback.model.version} in use: {exc}"
                if error != self.last_error:  # once, not at every look for a new model
                    log.error("%s", error)
                self.last_error = error
                if fallback is None:
                    return False
                self._serving = fallback
                return True
            self._serving = serving
            self.last_error = ""
            log.info("scoring with model %s (%s%s)", version, self.family,
                     ", consortium terminal features" if serving.consortium else "")
            return True

    def _load(self, version: str, path: Path, record: dict[str, Any], key: tuple[str, bytes] | None,
              history_version: tuple[int, int, str] | None, held: Serving | None) -> Serving:
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()
        if digest != record.get("digest"):  # not the bytes the agent verified and signed for
            raise ValueError(f"its file's sha256 {digest[:16]} is not the verified model's "
                             f"{str(record.get('digest'))[:16]}")
        model = load_model(body, version=version, family=self.family, exact_reasons_max=self.exact_reasons_max)
        consortium = (self._consortium(model, key, held.consortium if held is not None else None)
                      if model.features.consortium else None)
        return Serving(model=model, record=record, consortium=consortium, history_version=history_version)

    def _fallback(self, failed: str, key: tuple[str, bytes] | None,
                  history_version: tuple[int, int, str] | None) -> Serving | None:
        """The newest other kept model that loads, for a worker that holds none."""
        for record in self.state.kept_models(self.family):
            version = str(record["version"])
            if version == failed:
                continue
            try:
                serving = self._load(version, self.state.model_path(version, self.family), record, key,
                                     history_version, None)
            except Exception:  # noqa: BLE001, S112 - an older model that fails too: try the next
                continue
            log.warning("scoring with model %s (%s): the newest, %s, could not be loaded", version, self.family,
                        failed)
            return serving
        return None

    def _consortium_key(self) -> tuple[str, bytes] | None:
        """The HE key id and the terminal key of the node's secret context (None before the
        ceremony); the context is parsed again only when its bytes change."""
        from bank_node.agent.ceremony import load_secret_scheme
        from bank_node.agent.errors import CeremonyError

        secret = self.state.load_secret_context()
        if secret is None:
            return None
        digest = hashlib.sha256(secret).digest()
        if self._key is None or self._key[0] != digest:
            try:
                key_id = load_secret_scheme(self.state).key_id
            except CeremonyError as exc:
                log.error("the node's HE secret context is unusable: %s", exc)
                return None
            self._key = (digest, key_id, terminal_key(secret))
        return self._key[1], self._key[2]

    def _consortium(self, model: LoadedModel, key: tuple[str, bytes] | None,
                    previous: ConsortiumTerminals | None) -> ConsortiumTerminals:
        if self.history is None or key is None:
            raise ValueError("it uses consortium terminal features and this node holds no pooled history")
        history_id = model.features.history_id(key[0])
        days = sorted(self.history.pooled(history_id))
        if not days:
            raise ValueError("it uses consortium terminal features and this node has pooled none yet"
                             + ("" if history_id == key[0] else " as noisy day counts at its epsilon"))
        history = self.history.load(history_id, days, threshold=model.features.threshold)
        history.windows  # noqa: B018 - sorted here, at load, not in the first request
        if previous is not None and previous.key == key[1]:  # the tags made so far stay good
            return previous.over(history)
        return ConsortiumTerminals(history=history, key=key[1])
