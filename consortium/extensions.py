"""Per-app resources besides the database: blob store, write lock, clock and the HE public context."""

from __future__ import annotations

import contextlib
import threading
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

__all__ = ["blob_store", "close_resources", "init_resources", "now", "public_context", "round_changed", "round_generation", "summer",
           "wait_for_round_change", "write_lock"]

_KEY = "fedfraud_resources"


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
