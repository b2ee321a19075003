"""Per-app resources besides the database: blob store, write lock, clock and the HE public context."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

from consortium.aggregation import Summer
from consortium.notify import attach
from consortium.storage.blobs import BlobStore
from consortium.storage.database import Database

if TYPE_CHECKING:
    from crypto.scheme import HEScheme

__all__ = ["RecentSums", "blob_store", "close_resources", "init_resources", "key_facts_cache", "now", "public_context", "recent_sums",
           "round_changed", "round_generation", "summer", "wait_for_round_change", "write_lock"]

_KEY = "fedfraud_resources"


class RecentSums:
    """The last released sums, in memory: every bank of a round asks for the same sum within
    milliseconds of its release, so it is read from disk and checked against its name once (or
    not at all when this process made it), not once per bank.

    Parameters
    ----------
    store
        The blob store the sums are in (content-addressed: a digest's bytes never change).
    entries, max_bytes
        How many sums are kept, and the largest one kept (larger ones are read every time).
    """

    def __init__(self, store: BlobStore, *, entries: int = 8, max_bytes: int = 16 * 1024 * 1024) -> None:
        self._store = store
        self._entries = entries
        self._max_bytes = max_bytes
        self._kept: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, digest: str, data: bytes) -> None:
        """Keep ``data``, the blob stored as ``digest`` (the caller made or checked it)."""
        if len(data) > self._max_bytes:
            return
        with self._lock:
            self._kept[digest] = data
            self._kept.move_to_end(digest)
            while len(self._kept) > self._entries:
                self._kept.popitem(last=False)

    def get(self, digest: str) -> bytes:
        """The sum stored as ``digest``: kept, or read from the store (checked) and kept."""
        with self._lock:
            data = self._kept.get(digest)
            if data is not None:
                self._kept.move_to_end(digest)
                return data
        data = self._store.get(digest)
        self.keep(digest, data)
        return data


def init_resources(app: Flask) -> None:
    """Attach the blob store, the write lock and the context cache to ``app``."""
    store = BlobStore(app.config["BLOB_DIR"])
    store.root.mkdir(parents=True, exist_ok=True)
    store.remove_stale_temporaries()
    sqlite = Database.engine_for(app).dialect.name == "sqlite"
    app.extensions[_KEY] = {
        "blobs": store,
        # SQLite has one writer at a time and turns contention into errors rather than waits:
        # serialize this process's state changes. PostgreSQL relies on row locks instead.
        "write_lock": threading.RLock() if sqlite else None,
        "contexts": {},
        "recent_sums": RecentSums(store),
        "key_facts": {},
        "context_lock": threading.Lock(),
        "round_changes": threading.Condition(),
        "round_generation": 0,
        "notifier": None,
        "summer": Summer(store, processes=int(app.config["AGGREGATION_PROCESSES"]),
                         background_min_bytes=int(app.config["AGGREGATION_BACKGROUND_MIN_BYTES"])),
    }
    resources = app.extensions[_KEY]
    resources["notifier"] = attach(Database.engine_for(app), lambda: _wake(resources))


def round_changed(app: Flask | None = None) -> None:
    """Wake the requests waiting on a round (after a release, a failure or a note was committed):
    this process's at once, other processes' through PostgreSQL's notifications
    (:mod:`consortium.notify`), or at their next read on SQLite."""
    resources = _resources(app)
    _wake(resources)
    if resources["notifier"] is not None:
        resources["notifier"].publish()


def _wake(resources: dict[str, Any]) -> None:
    changes: threading.Condition = resources["round_changes"]
    with changes:
        resources["round_generation"] += 1
        changes.notify_all()


def close_resources(app: Flask) -> None:
    """Stop the app's background work: the round listener and the summing processes."""
    resources = _resources(app)
    if resources["notifier"] is not None:
        resources["notifier"].close()
    resources["summer"].close()


def round_generation(app: Flask | None = None) -> int:
    """How many round changes this process has seen (read it before reading a round's state)."""
    return int(_resources(app)["round_generation"])


def wait_for_round_change(seen: int, timeout_s: float, app: Flask | None = None) -> None:
    """Sleep until a round change after generation ``seen``, or ``timeout_s`` passed."""
    resources = _resources(app)
    if resources["notifier"] is not None:
        resources["notifier"].ensure_listening()
    changes: threading.Condition = resources["round_changes"]
    with changes:
        changes.wait_for(lambda: resources["round_generation"] != seen, timeout_s)


def _resources(app: Flask | None = None) -> dict[str, Any]:
    return (app or current_app).extensions[_KEY]  # type: ignore[no-any-return]


def blob_store(app: Flask | None = None) -> BlobStore:
    """The app's content-addressed blob store."""
    return _resources(app)["blobs"]  # type: ignore[no-any-return]


def key_facts_cache(app: Flask | None = None) -> dict[str, Any]:
    """Key id to what a contribution needs of that key (``consortium.rounds.run_key_facts``)."""
    return _resources(app)["key_facts"]  # type: ignore[no-any-return]


def recent_sums(app: Flask | None = None) -> RecentSums:
    """The app's :class:`RecentSums` (released sums, read once)."""
    return _resources(app)["recent_sums"]  # type: ignore[no-any-return]


def summer(app: Flask | None = None) -> Summer:
    """The app's :class:`consortium.aggregation.Summer` (where and how rounds are summed)."""
    return _resources(app)["summer"]  # type: ignore[no-any-return]


def write_lock(app: Flask | None = None) -> AbstractContextManager[Any]:
    """Hold while changing round, run or proposal state (a no-op on PostgreSQL)."""
    lock = _resources(app)["write_lock"]
    return lock if lock is not None else contextlib.nullcontext()


def now(app: Flask | None = None) -> datetime:
    """The current naive-UTC time by the app's clock."""
    clock: Callable[[], datetime] = (app or current_app).config["CLOCK"]
    return clock()


def public_context(digest: str, app: Flask | None = None) -> HEScheme:
    """The public HE context stored under ``digest``, loaded once per process.

    The loaded object is shared by request threads, so callers use it under
    :func:`context_guard`.
    """
    from crypto.registry import load_context

    resources = _resources(app)
    cache: dict[str, HEScheme] = resources["contexts"]
    if digest not in cache:
        cache[digest] = load_context(blob_store(app).get(digest), require_public=True)
    return cache[digest]


def context_guard(app: Flask | None = None) -> threading.Lock:
    """Lock serializing use of the shared HE context objects (TenSEAL is not thread-safe)."""
    return _resources(app)["context_lock"]  # type: ignore[no-any-return]
