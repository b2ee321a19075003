"""gunicorn's sync worker with a bound on how long a connection may stay silent.

A sync worker serves one connection at a time and reads it with no time limit: a client that
connects and sends nothing (or stops halfway) holds the worker until gunicorn's timeout kills
it, and two such connections stop a two-worker scoring service for that long, then again. This
worker gives up on a connection silent for ``FEDFRAUD_IDLE_TIMEOUT_S`` seconds (5 by default)
and says so in one log line.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any, Final

from gunicorn.workers.sync import SyncWorker

__all__ = ["IDLE_TIMEOUT_ENV", "IdleLimitedSyncWorker", "quiet_idle_timeouts"]

IDLE_TIMEOUT_ENV: Final = "FEDFRAUD_IDLE_TIMEOUT_S"

# What gunicorn's sync worker logs, with a traceback, for a socket error it does not expect.
_SOCKET_ERROR: Final = "Socket error processing request."


class IdleLimitedSyncWorker(SyncWorker):  # type: ignore[misc]
    """:class:`gunicorn.workers.sync.SyncWorker` whose connections time out when silent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle_timeout_s = idle_timeout_s()

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        client.settimeout(self.idle_timeout_s)  # each read and write; the request's whole time is not bounded
        super().handle(listener, client, addr)


def idle_timeout_s() -> float:
    """``FEDFRAUD_IDLE_TIMEOUT_S`` (seconds, above 0), 5 when unset."""
    text = os.environ.get(IDLE_TIMEOUT_ENV, "5")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"{IDLE_TIMEOUT_ENV} is a number of seconds above 0, not {text!r}")
    return value


class _IdleTimeouts(logging.Filter):
    """Turns gunicorn's traceback for a connection that timed out into one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _SOCKET_ERROR and record.exc_info and isinstance(record.exc_info[1], TimeoutError):
            record.msg, record.args, record.exc_info, record.exc_text = (
                "closed a connection silent for longer than the idle timeout", (), None, None)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_idle_timeouts(error_log: logging.Logger) -> None:
    """Add the filter to gunicorn's error logger (idempotent)."""
    if not any(isinstance(f, _IdleTimeouts) for f in error_log.filters):
        error_log.addFilter(_IdleTimeouts())
