"""Summing a round's ciphertexts: in the calling thread for small rounds, in pieces by a pool of
processes for large ones, and for those off the request that completed the round.

TenSEAL holds the GIL while it deserializes and adds (two threads on halves of a round took longer
than one), so a sum uses more than one core only in processes of its own. Each process sums one
piece of whole ciphertexts (:meth:`crypto.scheme.HEScheme.pieces`) of every contribution, reading
them through read-only maps of the blob files, so memory holds a chunk per bank and process, never a
round. Every file's SHA-256 is checked against its name by exactly one of the processes, which is
what lets the pieces skip the payload's own body digest (checked when the contribution was accepted).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from consortium.storage.blobs import BlobStore

__all__ = ["Summer", "sum_piece"]

logger = logging.getLogger("consortium.aggregation")


@dataclass(frozen=True)
class _Piece:
    """One process's share of a sum: the blob store, the public context's blob, the round's
    contributions in summing order, the value positions to sum, and which files to check whole."""

    root: str
    context_digest: str
    digests: tuple[str, ...]
    values: range
    check: frozenset[str]


_CONTEXTS: dict[str, Any] = {}  # the public contexts a pool process loaded, by blob digest
_PARENT_CHECK_S = 1.0


def _end_with_parent(parent: int) -> None:
    """In a pool process: exit once the worker that started it is gone. A worker killed outright
    (gunicorn's timeout, the kernel's out-of-memory killer) shuts nothing down, and the standard
    library's pool processes would otherwise live on, idle, holding their memory."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="fedfraud-parent-watch", daemon=True).start()


def sum_piece(piece: _Piece) -> bytes:
    """Sum ``piece`` (in a pool process): the framed sum of its value positions."""
    from crypto.registry import load_context

    store = BlobStore(piece.root)
    context = _CONTEXTS.get(piece.context_digest)
    if context is None:
        context = _CONTEXTS[piece.context_digest] = load_context(store.get(piece.context_digest), require_public=True)
    return _mapped_sum(context, store, piece.digests, checked=piece.check, values=piece.values)


def _mapped_sum(context: Any, store: BlobStore, digests: Sequence[str], *, checked: Collection[str],
                values: range | None = None, guard: contextlib.AbstractContextManager[Any] | None = None) -> bytes:
    """The sum of the blobs ``digests`` (of ``values`` only, if given) read through read-only maps,
    those in ``checked`` checked against their names; the payloads' own body digests, checked when
    they were accepted, are not checked again."""
    with contextlib.ExitStack() as stack:
        payloads = [stack.enter_context(store.mapped(digest, check=digest in checked)) for digest in digests]
        with guard or contextlib.nullcontext():
            total: bytes = context.aggregate(payloads, values=values, check_bodies=False)
        del payloads
    return total


class Summer:
    """Sums rounds for one app: decides where each sum runs and owns the processes and the
    background thread that run them (started at the first large round).

    Parameters
    ----------
    store
        The app's blob store.
    processes
        Processes a large sum is spread over; 0 means one per core; 1 sums in the calling thread.
    background_min_bytes
        Rounds whose contributions add up to at least this many bytes are large: summed by the
        processes, and off the request that completed the round.
    """

    def __init__(self, store: BlobStore, *, processes: int, background_min_bytes: int) -> None:
        if processes < 0:
            raise ValueError(f"AGGREGATION_PROCESSES: {processes} is negative (0 means one per core)")
        if background_min_bytes < 0:
            raise ValueError(f"AGGREGATION_BACKGROUND_MIN_BYTES: {background_min_bytes} is negative")
        self._store = store
        self.processes = processes or os.cpu_count() or 1
        self.background_min_bytes = background_min_bytes
        self._lock = threading.Lock()
        self._pool: Executor | None = None
        self._releaser: ThreadPoolExecutor | None = None

    def is_large(self, total_bytes: int) -> bool:
        """Whether a round of contributions adding up to ``total_bytes`` is summed off the request."""
        return total_bytes >= self.background_min_bytes

    def total(self, context: Any, context_digest: str, digests: Sequence[str], *, n_values: int, total_bytes: int,
              guard: contextlib.AbstractContextManager[Any]) -> tuple[bytes, int]:
        """The framed sum of the blobs ``digests`` (in this order, ``n_values`` values each) under
        ``context``, the public context stored as blob ``context_digest``.

        A large round with more than one process is summed in pieces by the pool; otherwise in this
        thread under ``guard`` (the app's lock on its shared context object), each blob checked
        against its name as it is mapped.

        Returns
        -------
        bytes, int
            The sum, and how many pieces it was made in (1: in this thread).

        Raises
        ------
        BlobMissingError, BlobCorruptError, PayloadError, AggregationError
            A contribution is missing, damaged on disk, or cannot be summed.
        """
        pieces = context.pieces(n_values, self.processes) if self.processes > 1 and self.is_large(total_bytes) else []
        if len(pieces) < 2:
            return _mapped_sum(context, self._store, digests, checked=frozenset(digests), guard=guard), 1
        shares = [frozenset(digests[index::len(pieces)]) for index in range(len(pieces))]
        work = [_Piece(root=str(self._store.root), context_digest=context_digest, digests=tuple(digests),
                       values=values, check=share) for values, share in zip(pieces, shares, strict=True)]
        try:
            parts = list(self._processes().map(sum_piece, work))
        except BrokenProcessPool:
            # A process died (killed, out of memory): a new pool for this sum and the next ones. A
            # sum that breaks it again is given up (the round's lease runs out; the sweep retries).
            self._forget_pool()
            try:
                parts = list(self._processes().map(sum_piece, work))
            except BrokenProcessPool:
                self._forget_pool()
                raise
        with guard:
            return context.concatenate(parts), len(parts)

    def in_background(self, task: Callable[[], None]) -> Future[None]:
        """Run ``task`` (a release) on the one background thread; its errors are logged."""
        def logged() -> None:
            try:
                task()
            except Exception:
                logger.exception("a round's release in the background failed; the round stays open, and the "
                                 "sweep hands it on again once its lease runs out")

        with self._lock:
            if self._releaser is None:
                self._releaser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedfraud-release")
            return self._releaser.submit(logged)

    def _processes(self) -> Executor:
        with self._lock:
            if self._pool is None:
                # spawn: a web worker holds threads and open database connections; a fork copies them.
                self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_end_with_parent, initargs=(os.getpid(),))
            return self._pool

    def _forget_pool(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Wait for a release under way, then stop the processes."""
        with self._lock:
            releaser, pool, self._releaser, self._pool = self._releaser, self._pool, None, None
        if releaser is not None:
            releaser.shutdown(wait=True)
        if pool is not None:
            pool.shutdown(wait=True)
