"""Round changes told across processes on PostgreSQL (``LISTEN`` / ``NOTIFY``).

A bank waiting on a round (long poll) is woken at once by a change its own worker process made;
a change made by another gunicorn worker was seen only at the waiter's next read, up to
``LONG_POLL_INTERVAL_S`` later, twice a round (the sum, then the notes). On PostgreSQL every
change is also published on one channel, and each process keeps one connection listening on it,
which wakes its waiters. The periodic read stays as the fallback (a listener that lost its
connection, or SQLite, which has no such channel).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Final

from sqlalchemy import text
from sqlalchemy.engine import Engine

__all__ = ["CHANNEL", "RoundNotifier", "attach"]

logger = logging.getLogger("consortium.notify")

CHANNEL: Final = "fedfraud_round_changes"
_RECONNECT_S: Final = 2.0


class RoundNotifier:
    """Publishes this process's round changes and delivers other processes' to ``wake``.

    Parameters
    ----------
    engine
        The app's PostgreSQL engine (publishing borrows a pooled connection).
    wake
        Called (from the listener thread) at each change published by any process.
    """

    def __init__(self, engine: Engine, wake: Callable[[], None]) -> None:
        self._engine = engine
        self._wake = wake
        self._lock = threading.Lock()
        self._listening_pid: int | None = None
        self._stop = threading.Event()

    def publish(self) -> None:
        """Tell every process listening that a round changed (after the change was committed)."""
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})
                connection.commit()
        except Exception:  # the waiters still read the round at their next look
            logger.warning("could not publish a round change", exc_info=True)

    def ensure_listening(self) -> None:
        """Start this process's listener if it has none (a forked worker starts its own)."""
        if self._listening_pid == os.getpid():
            return
        with self._lock:
            if self._listening_pid == os.getpid():
                return
            self._listening_pid = os.getpid()
            dsn = self._engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            # The thread holds the notifier weakly: it ends once its app is gone (tests build many).
            threading.Thread(target=_listen, args=(weakref.ref(self), dsn), name="fedfraud-round-listener",
                             daemon=True).start()

    def close(self) -> None:
        """Stop listening (a server's listener ends with its process)."""
        self._stop.set()


def _listen(notifier: weakref.ref[RoundNotifier], dsn: str) -> None:
    """Wake ``notifier``'s waiters at every change published, until it is closed or gone."""
    import psycopg

    def alive() -> RoundNotifier | None:
        found = notifier()
        return None if found is None or found._stop.is_set() else found

    while (current := alive()) is not None:
        stop = current._stop
        del current
        try:
            with psycopg.connect(dsn, autocommit=True) as connection:
                connection.execute(f"LISTEN {CHANNEL}")
                changed = True  # at the start: anything missed while not listening is read again
                while (current := alive()) is not None:
                    if changed:
                        current._wake()
                    del current
                    changed = any(True for _ in connection.notifies(timeout=1.0, stop_after=1))
        except Exception as exc:  # noqa: BLE001 - logged; the waiters' periodic read covers the gap
            if alive() is None:
                return
            logger.warning("round change listener lost its connection; listening again",
                           extra={"error": type(exc).__name__})
            stop.wait(_RECONNECT_S)


def attach(engine: Engine, wake: Callable[[], None]) -> RoundNotifier | None:
    """A notifier for ``engine`` if it is PostgreSQL, else None."""
    return RoundNotifier(engine, wake) if engine.dialect.name == "postgresql" else None
