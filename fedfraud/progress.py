"""Progress on stderr for long commands: a spinner on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console


@contextmanager
def status(message: str) -> Iterator[None]:
    """Show ``message`` while a step of unknown length runs."""
    console = Console(stderr=True)
    if console.is_terminal:
        with console.status(message):
            yield
    else:
        print(f"{message} ...", file=sys.stderr, flush=True)
        yield


@contextmanager
def steps(title: str) -> Iterator[Callable[[str], None]]:
    """Yield a callback that reports each step of a long job, with elapsed time."""
    console = Console(stderr=True)
    started = time.perf_counter()

    def report(message: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:7.1f}s[/dim] {title}: {message}", highlight=False)

    yield report
    console.print(f"[dim]{time.perf_counter() - started:7.1f}s[/dim] {title}: done", highlight=False)
