"""The ``fedfraud`` command line.

Every subcommand imports its heavy modules lazily, so ``fedfraud --help`` is instant, and every
input problem reaches the user as one readable line (exit status 2), never a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import click

from fedfraud import __version__

F = TypeVar("F", bound=Callable[..., Any])


def readable_errors(func: F) -> F:
    """Turn fedfraud's input and crypto errors into a one-line CLI error."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from crypto.scheme import CryptoError
        from schemas.errors import FedfraudInputError

        try:
            return func(*args, **kwargs)
        except FedfraudInputError as exc:
            raise click.UsageError(str(exc)) from None
        except CryptoError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper  # type: ignore[return-value]


class _Date(click.ParamType):
    """A calendar date written YYYY-MM-DD."""

    name = "YYYY-MM-DD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> date:
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a date of the form YYYY-MM-DD", param, ctx)


DATE = _Date()


def _mapping_option(func: F) -> F:
    return click.option(
        "--columns",
        "columns",
        default="",
        metavar="FIELD=COLUMN,...",
        help="Your column names for the canonical fields "
        "(transaction_id, timestamp, customer_id, terminal_id, amount, label); "
        "the handbook's names (TX_AMOUNT, ...) are recognised without it.",
    )(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fedfraud")
def main() -> None:
    """fedfraud: banks train one fraud model together, sharing only encrypted sums."""


@main.command()
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--days", type=click.IntRange(min=1), default=90, show_default=True, help="Days to simulate.")
@click.option("--customers", type=click.IntRange(min=1), default=5000, show_default=True, help="Number of cards.")
@click.option("--terminals", type=click.IntRange(min=1), default=10000, show_default=True, help="Number of terminals.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed; the same seed gives the same file.")
@click.option("--start-date", type=DATE, default="2018-04-01", show_default=True, help="First simulated day.")
@readable_errors
def generate(output: Path, days: int, customers: int, terminals: int, seed: int, start_date: date) -> None:
    """Generate simulated card transactions (handbook-style, with three fraud scenarios) to OUTPUT."""
    from bank_node.data import write_table
    from bank_node.generator import generate_transactions

    with _status(f"generating {days} days for {customers} cards and {terminals} terminals"):
        frame = generate_transactions(
            n_customers=customers, n_terminals=terminals, days=days, seed=seed, start_date=start_date.isoformat()
        )
    write_table(frame, output)
    frauds = int(frame["TX_FRAUD"].sum())
    click.echo(f"wrote {len(frame):,} transactions ({frauds:,} frauds, {frauds / max(len(frame), 1):.2%}) to {output}")


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--start", type=DATE, default=None, help="First day to write (earlier history still feeds the windows).")
@click.option("--end", type=DATE, default=None, help="Last day to write, inclusive.")
@_mapping_option
@readable_errors
def features(input_path: Path, output: Path, start: date | None, end: date | None, columns: str) -> None:
    """Compute the handbook's 14 features for the transactions of INPUT and write them to OUTPUT."""
    from bank_node.data import load_transactions, write_table
    from bank_node.features import compute_features
    from schemas.errors import FedfraudInputError
    from schemas.transaction import from_canonical, parse_column_mapping

    if start is not None and end is not None and end < start:
        raise FedfraudInputError(f"--end {end} is before --start {start}", {"end": ["must not be before --start"]})
    with _status(f"loading {input_path}"):
        loaded = load_transactions(input_path, parse_column_mapping(columns), require_label=True)
    with _status(f"computing features over {len(loaded.frame):,} transactions"):
        result = compute_features(
            loaded.frame,
            start=None if start is None else start.isoformat(),
            end=None if end is None else end.isoformat(),
        )
    write_table(from_canonical(result, loaded.columns), output)
    click.echo(f"wrote {len(result):,} rows with features to {output}")


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/demo"),
              show_default=True, help="Folder for the generated data and results.")
@click.option("--banks", type=click.IntRange(min=3, max=64), default=5, show_default=True)
@click.option("--scheme", type=click.Choice(["ckks", "paillier", "plain"]), default="ckks", show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@readable_errors
def demo(out_dir: Path, banks: int, scheme: str, seed: int) -> None:
    """Run the main job on built-in generated data (no external data needed)."""
    from fedfraud.demo import run_demo

    run_demo(out_dir=out_dir, n_banks=banks, scheme=scheme, seed=seed)


class _status:
    """A spinner on stderr for a step of unknown length (quiet when stderr is not a terminal)."""

    def __init__(self, message: str) -> None:
        self.message = message
        self._ctx: Any = None

    def __enter__(self) -> None:
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal:
            self._ctx = console.status(self.message)
            self._ctx.__enter__()
        else:
            print(f"{self.message} ...", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


if __name__ == "__main__":  # pragma: no cover
    main()
