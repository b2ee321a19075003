"""How expected failures reach a person at the command line: one readable line, no traceback.

Every ``fedfraud`` command group (the main one, ``fedfraud bank``, ``fedfraud consortium``)
wraps its commands with :func:`readable_errors`, so the same failure reads the same everywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Failures that are the user's or the environment's, not bugs (imported lazily)."""
    from bank_node.agent.errors import ConsortiumError
    from crypto.scheme import CryptoError
    from crypto.signing import SignatureError

    return (ConsortiumError, CryptoError, SignatureError, FileNotFoundError)


def readable_errors(func: F) -> F:
    """Bad input becomes a usage error (status 2); other expected failures status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from schemas.errors import FedfraudInputError

        try:
            return func(*args, **kwargs)
        except FedfraudInputError as exc:
            raise click.UsageError(str(exc)) from None
        except _expected_errors() as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def dask_options(what: str) -> Callable[[F], F]:
    """``--dask``, ``--dask-scheduler`` and ``--dask-workers``, said the same way by every command
    that can compute on Dask (``what``: what the flag does there)."""

    def decorate(func: F) -> F:
        func = click.option("--dask-workers", type=click.IntRange(min=1), default=2, show_default=True,
                            help="Worker processes of the local cluster.")(func)
        func = click.option("--dask-scheduler", default=None, metavar="ADDRESS",
                            help="Use the Dask cluster at ADDRESS (e.g. tcp://10.0.0.5:8786); implies --dask.")(func)
        return click.option("--dask", "on_dask", is_flag=True,
                            help=f"{what} (a local cluster unless --dask-scheduler).")(func)

    return decorate
