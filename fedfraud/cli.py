"""The ``fedfraud`` command line.

Every subcommand imports its heavy modules lazily, so ``fedfraud --help`` is instant, and every
input problem reaches the user as one readable line (exit status 2), never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import click

from fedfraud import __version__
from fedfraud.progress import status as _status
from schemas.cli import dask_options, readable_errors

F = TypeVar("F", bound=Callable[..., Any])


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
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--start", type=DATE, default=None, help="First day to write (earlier history still feeds the windows).")
@click.option("--end", type=DATE, default=None, help="Last day to write, inclusive.")
@_mapping_option
@dask_options("Compute on Dask, for data larger than memory: INPUT a Parquet file or folder of Parquet files, OUTPUT "
              "a folder of Parquet files holding the six fields (under INPUT's names) and the features")
@readable_errors
def features(input_path: Path, output: Path, start: date | None, end: date | None, columns: str, on_dask: bool,
             dask_scheduler: str | None, dask_workers: int) -> None:
    """Compute the handbook's 14 features for the transactions of INPUT and write them to OUTPUT."""
    from bank_node.data import load_transactions, write_table
    from bank_node.features import AMOUNT, MODEL_AMOUNT, compute_features
    from schemas.errors import FedfraudInputError
    from schemas.transaction import from_canonical, parse_column_mapping

    if start is not None and end is not None and end < start:
        raise FedfraudInputError(f"--end {end} is before --start {start}", {"end": ["must not be before --start"]})
    if on_dask or dask_scheduler:
        _features_on_dask(input_path, output, start, end, parse_column_mapping(columns), dask_scheduler, dask_workers)
        return
    if input_path.is_dir():
        raise FedfraudInputError(f"{input_path} is a folder: a folder of Parquet files is read with --dask",
                                 {"input": ["a folder"]})
    with _status(f"loading {input_path}"):
        loaded = load_transactions(input_path, parse_column_mapping(columns), require_label=True)
    with _status(f"computing features over {len(loaded.frame):,} transactions"):
        result = compute_features(
            loaded.frame,
            start=None if start is None else start.isoformat(),
            end=None if end is None else end.isoformat(),
        )
    written = from_canonical(result, loaded.columns)
    if MODEL_AMOUNT not in written.columns:  # the model's name for the amount, whatever the file's
        written[MODEL_AMOUNT] = result[AMOUNT].to_numpy()
    write_table(written, output)
    click.echo(f"wrote {len(result):,} rows with features to {output}; a model's inputs are the columns "
               f"{MODEL_AMOUNT} and the 14 features")


def _features_on_dask(input_path: Path, output: Path, start: date | None, end: date | None,
                      mapping: dict[str, str], scheduler: str | None, workers: int) -> None:
    from bank_node.features import AMOUNT, MODEL_AMOUNT
    from bank_node.scale import dask_client, dask_features, read_transactions, source_names
    from schemas.errors import FedfraudInputError

    if not input_path.exists():
        raise FedfraudInputError(f"{input_path}: no such file or folder", {"input": ["no such file or folder"]})
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FedfraudInputError(f"{output} exists: with --dask OUTPUT is a new folder", {"output": ["exists"]})
    where = f"the Dask cluster at {scheduler}" if scheduler else f"a local Dask cluster of {workers} workers"
    click.echo(f"computing on {where}", err=True)
    with dask_client(scheduler, n_workers=workers) as client:
        frame = read_transactions(str(input_path), mapping)
        result = dask_features(frame, start=None if start is None else start.isoformat(),
                               end=None if end is None else end.isoformat())
        # The input's own names for the fields, as the pandas path writes them back (its other
        # columns are not carried: only the fields and the features are read and written).
        names = {field: column for field, column in source_names(str(input_path), mapping).items() if field != column}
        result = result.rename(columns=names)
        if MODEL_AMOUNT not in result.columns:
            result = result.assign(**{MODEL_AMOUNT: result[names.get(AMOUNT, AMOUNT)]})
        with _status(f"computing features on {len(client.scheduler_info()['workers'])} Dask workers"):
            result.to_parquet(output, write_index=False)
    click.echo(f"wrote features to the Parquet files of {output}; a model's inputs are the columns "
               f"{MODEL_AMOUNT} and the 14 features")


def _comma_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


@main.command()
@click.option("--data", "data_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Transactions with labels (Parquet or CSV).")
@_mapping_option
@click.option("--banks", type=click.IntRange(min=2, max=64), default=5, show_default=True)
@click.option("--sizes", default="", metavar="S1,S2,...", help="Each bank's share of the cards (default: uneven).")
@click.option("--train-start", type=DATE, default="2018-07-25", show_default=True)
@click.option("--train-days", type=click.IntRange(min=1), default=7, show_default=True)
@click.option("--delay-days", type=click.IntRange(min=0), default=7, show_default=True)
@click.option("--test-days", type=click.IntRange(min=1), default=7, show_default=True)
@click.option("--models", default="xgboost,logreg", show_default=True)
@click.option("--scheme", type=click.Choice(["ckks", "paillier", "plain"]), default="ckks", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--trees", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--max-depth", type=click.IntRange(min=1, max=12), default=3, show_default=True)
@click.option("--eta", type=click.FloatRange(min=0, min_open=True, max=1), default=0.1, show_default=True)
@click.option("--bins", type=click.IntRange(min=2, max=1024), default=256, show_default=True)
@click.option("--consortium-features", is_flag=True,
              help="Also train with consortium-wide terminal features (encrypted per-terminal event tables), "
                   "against a centralized model on full-data features.")
@click.option("--terminal-threshold", type=click.IntRange(min=1), default=3, show_default=True,
              help="Fewest banks that must have seen a terminal for it to get consortium values.")
@click.option("--dp-epsilon", type=float, default=None, metavar="E",
              help="Train the federated models with differential privacy: epsilon E per run, for all its training "
                   "sums together (each bank clips its rows and adds the noise). The spend is reported.")
@click.option("--dp-delta", type=float, default=1e-5, show_default=True, metavar="D", help="The runs' delta.")
@click.option("--terminal-dp-epsilon", type=float, default=None, metavar="E",
              help="With --consortium-features: pool noisy day counts per terminal (epsilon E for each day's "
                   "release) instead of exact events; neither the time of day nor single events are revealed.")
@click.option("--dp-clip", type=float, default=1.0, show_default=True,
              help="Bound on one transaction's gradient under differential privacy.")
@click.option("--reg-lambda", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="XGBoost's L2 regularisation of leaf weights (a private run may want more).")
@click.option("--min-child-weight", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="XGBoost's minimum hessian sum in a child (a private run may want more).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the results as JSON here.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write ROC / precision-recall curves and per-bank bars (PNG) here.")
@readable_errors
def simulate(data_path: Path, columns: str, banks: int, sizes: str, train_start: date, train_days: int,
             delay_days: int, test_days: int, models: str, scheme: str, seed: int, trees: int, max_depth: int,
             eta: float, bins: int, consortium_features: bool, terminal_threshold: int, dp_epsilon: float | None,
             dp_delta: float, terminal_dp_epsilon: float | None, dp_clip: float, reg_lambda: float, min_child_weight: float, json_path: Path | None,
             report_dir: Path | None) -> None:
    """Federated vs local-only vs centralized training of N simulated banks, in one process."""
    from bank_node.data import load_transactions
    from schemas.transaction import parse_column_mapping

    with _status(f"loading {data_path}"):
        frame = load_transactions(data_path, parse_column_mapping(columns), require_label=True).frame
    _run_simulation(frame, _simulation_config(
        n_banks=banks, sizes=sizes, train_start=train_start, train_days=train_days, delay_days=delay_days,
        test_days=test_days, models=models, scheme=scheme, seed=seed, n_trees=trees, max_depth=max_depth,
        eta=eta, n_bins=bins, consortium_features=consortium_features, terminal_threshold=terminal_threshold,
        dp_epsilon=dp_epsilon, dp_delta=dp_delta, dp_clip=dp_clip, reg_lambda=reg_lambda,
        min_child_weight=min_child_weight, terminal_dp_epsilon=terminal_dp_epsilon), json_path=json_path, report_dir=report_dir)


def _simulation_config(*, sizes: str, models: str, train_start: date, **kwargs: Any) -> Any:
    from fedfraud.simulation import SimulationConfig
    from schemas.errors import FedfraudInputError

    try:
        shares = tuple(float(x) for x in _comma_list(sizes))
    except ValueError:
        raise FedfraudInputError(f"--sizes {sizes!r} is not a list of numbers", {"sizes": ["not numbers"]}) from None
    return SimulationConfig(sizes=shares, models=_comma_list(models), train_start=train_start.isoformat(), **kwargs)


def _run_simulation(frame: Any, config: Any, *, json_path: Path | None, report_dir: Path | None) -> Any:
    import json

    from fedfraud.progress import steps
    from fedfraud.report import plot_report, print_summary
    from fedfraud.simulation import simulate as run

    with steps("simulation") as progress:
        result = run(frame, config, progress=progress)
    print_summary(result)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result.to_json(), indent=2, default=float))
        click.echo(f"results written to {json_path}")
    if report_dir is not None:
        click.echo(f"report written to {plot_report(result, report_dir)}")
    return result


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("out/demo"),
              show_default=True, help="Folder for the generated data and results.")
@click.option("--banks", type=click.IntRange(min=3, max=64), default=5, show_default=True)
@click.option("--scheme", type=click.Choice(["ckks", "paillier", "plain"]), default="ckks", show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@readable_errors
def demo(out_dir: Path, banks: int, scheme: str, seed: int) -> None:
    """Run the main job on built-in generated data (no external data needed)."""
    from bank_node.data import write_table
    from bank_node.generator import generate_transactions
    from schemas.transaction import to_canonical

    with _status("generating 90 days of transactions for 2,000 cards and 4,000 terminals"):
        raw = generate_transactions(n_customers=2000, n_terminals=4000, days=90, seed=seed)
    write_table(raw, out_dir / "transactions.parquet")
    click.echo(f"generated {len(raw):,} transactions ({int(raw['TX_FRAUD'].sum()):,} frauds) "
               f"in {out_dir / 'transactions.parquet'}")
    config = _simulation_config(n_banks=banks, sizes="", models="xgboost,logreg", scheme=scheme, seed=seed,
                                train_start=date(2018, 6, 1), n_trees=100, max_depth=3, consortium_features=True)
    frame = to_canonical(raw, require_label=True)
    result = _run_simulation(frame, config, json_path=out_dir / "results.json", report_dir=out_dir)
    if "xgboost" in result.models:
        from fedfraud.demo_scoring import score_through_the_api

        score_through_the_api(frame, result.models["xgboost"], config, out_dir)


@main.group()
def ledger() -> None:
    """Check the consortium's contribution ledger offline."""


@ledger.command("verify")
@click.argument("export", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", "public_key", default=None, metavar="BASE64",
              help="The consortium's ledger public key, as pinned (GET /v1/ledger/key); default: the export's own.")
@click.option("--receipts", "receipts_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A folder of receipts (*.json) to prove still in the log, e.g. a bank agent's state/receipts.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@readable_errors
def ledger_verify(export: Path, public_key: str | None, receipts_dir: Path | None, as_json: bool) -> None:
    """Check an exported ledger (JSON Lines) from its first entry; name the first bad entry.

    Exit status 0 when every entry and receipt holds, 1 otherwise."""
    from crypto.signing import b64decode_key
    from fedfraud.ledger import check_export, load_receipts

    if public_key is not None:
        b64decode_key(public_key, what="--key")
    receipts = load_receipts(receipts_dir) if receipts_dir is not None else []
    outcome = check_export(export, public_key=public_key, receipts=receipts)
    if as_json:
        click.echo(json.dumps(outcome.to_json(), indent=2))
    else:
        for line in outcome.lines():
            click.echo(line)
    if not outcome.ok:
        raise SystemExit(1)


def _mount_subcommands() -> None:
    """The bank node's and the consortium's command groups, imported lazily by click itself."""
    from bank_node.agent.cli import bank_cli
    from consortium.cli import consortium_cli

    main.add_command(bank_cli, name="bank")
    main.add_command(consortium_cli, name="consortium")


_mount_subcommands()

if __name__ == "__main__":  # pragma: no cover
    main()
