"""Throughput of the HE schemes: encrypt, aggregate, decrypt, and bytes on the wire.

Each bank encrypts its own vector of uniform values in [-1e5, 1e5]; a public-only aggregator
(loaded from the public context, as on the consortium) sums the payloads; a bank decrypts the
sum. All rates are single-process values per second:

- encrypt: values encrypted per second (all banks together);
- aggregate: input values summed per second (banks x values / time), deserialization included;
- decrypt: values of the sum decrypted per second.

Paillier is two to three orders of magnitude slower than CKKS, so it runs on a shorter vector
(``--paillier-values``); rates are per value, so they stay comparable. Also measured: the CKKS
precision criterion (64 banks, values in [-1e5, 1e5]: max error <= 1e-6 x max |sum|).

Usage::

    python bench/he_throughput.py [--values N] [--paillier-values N] [--banks K]
                                  [--paillier-bits B] [--schemes ckks,plain] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from crypto.registry import SCHEMES, generate, load_context
from crypto.scheme import HEScheme

VALUE_RANGE = 1e5
PRECISION_BANKS = 64


@dataclass
class SchemeResult:
    """Measurements for one scheme."""

    scheme: str
    parameters: dict[str, Any]
    values: int
    banks: int
    encrypt_values_per_s: float
    aggregate_values_per_s: float
    decrypt_values_per_s: float
    bytes_per_value: float
    public_context_bytes: int
    secret_context_bytes: int
    max_abs_error: float
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class PrecisionResult:
    """The CKKS precision criterion on a 64-bank sum."""

    banks: int
    values: int
    max_abs_error: float
    max_abs_sum: float
    max_error_over_max_sum: float
    median_abs_error: float
    median_elementwise_relative_error: float
    passes: bool


def measure_scheme(
    scheme: HEScheme, *, values: int, banks: int, rng: np.random.Generator, progress: Progress
) -> SchemeResult:
    """Encrypt ``banks`` vectors of ``values`` values, aggregate them publicly, decrypt the sum."""
    task = progress.add_task(f"{scheme.name}: encrypt", total=banks + 2)
    vectors = [rng.uniform(-VALUE_RANGE, VALUE_RANGE, values) for _ in range(banks)]

    payloads = []
    started = time.perf_counter()
    for vector in vectors:
        payloads.append(scheme.encrypt(vector))
        progress.advance(task)
    encrypt_s = time.perf_counter() - started

    progress.update(task, description=f"{scheme.name}: aggregate")
    aggregator = load_context(scheme.public_context(), require_public=True)
    started = time.perf_counter()
    total = aggregator.aggregate(payloads)
    aggregate_s = time.perf_counter() - started
    progress.advance(task)

    progress.update(task, description=f"{scheme.name}: decrypt")
    started = time.perf_counter()
    decrypted = scheme.decrypt(total)
    decrypt_s = time.perf_counter() - started
    progress.advance(task)
    progress.update(task, description=f"{scheme.name}: done")

    exact = np.sum(vectors, axis=0)
    return SchemeResult(
        scheme=scheme.name,
        parameters=dict(scheme.parameters),
        values=values,
        banks=banks,
        encrypt_values_per_s=banks * values / encrypt_s,
        aggregate_values_per_s=banks * values / aggregate_s,
        decrypt_values_per_s=values / decrypt_s,
        bytes_per_value=float(np.mean([len(payload) for payload in payloads])) / values,
        public_context_bytes=len(scheme.public_context()),
        secret_context_bytes=len(scheme.secret_context()),
        max_abs_error=float(np.max(np.abs(decrypted - exact))),
        seconds={"encrypt": encrypt_s, "aggregate": aggregate_s, "decrypt": decrypt_s},
    )


def measure_ckks_precision(
    *, values: int, rng: np.random.Generator, progress: Progress
) -> PrecisionResult:
    """Check the acceptance criterion: 64 banks, values in [-1e5, 1e5]."""
    scheme = generate("ckks")
    aggregator = load_context(scheme.public_context(), require_public=True)
    task = progress.add_task("ckks precision: encrypt", total=PRECISION_BANKS + 1)
    vectors = [rng.uniform(-VALUE_RANGE, VALUE_RANGE, values) for _ in range(PRECISION_BANKS)]
    payloads = []
    for vector in vectors:
        payloads.append(scheme.encrypt(vector))
        progress.advance(task)
    decrypted = scheme.decrypt(aggregator.aggregate(payloads))
    progress.advance(task)
    exact = np.sum(vectors, axis=0)
    error = np.abs(decrypted - exact)
    max_abs_sum = float(np.max(np.abs(exact)))
    return PrecisionResult(
        banks=PRECISION_BANKS,
        values=values,
        max_abs_error=float(error.max()),
        max_abs_sum=max_abs_sum,
        max_error_over_max_sum=float(error.max()) / max_abs_sum,
        median_abs_error=float(np.median(error)),
        median_elementwise_relative_error=float(np.median(error / np.abs(exact))),
        passes=bool(error.max() <= 1e-6 * max_abs_sum),
    )


def rate(value: float) -> str:
    """Compact engineering notation: 1.23k, 4.56M."""
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return f"{value:.3g}"


def render(console: Console, results: Sequence[SchemeResult], precision: PrecisionResult | None) -> None:
    """Print the measurements as tables."""
    table = Table(title="HE throughput (values per second, single process)")
    for column in ("scheme", "values x banks", "encrypt/s", "aggregate/s", "decrypt/s", "B/value",
                   "public ctx", "max |err|"):
        table.add_column(column, justify="left" if column == "scheme" else "right")
    for result in results:
        table.add_row(
            result.scheme,
            f"{result.values:,} x {result.banks}",
            rate(result.encrypt_values_per_s),
            rate(result.aggregate_values_per_s),
            rate(result.decrypt_values_per_s),
            f"{result.bytes_per_value:.2f}",
            f"{result.public_context_bytes:,} B",
            f"{result.max_abs_error:.2e}",
        )
    console.print(table)

    by_name = {result.scheme: result for result in results}
    if "plain" in by_name:
        plain = by_name["plain"]
        ratios = Table(title="HE overhead relative to the plaintext scheme (x slower / x larger)")
        for column in ("scheme", "encrypt", "aggregate", "decrypt", "bytes"):
            ratios.add_column(column, justify="left" if column == "scheme" else "right")
        for result in results:
            if result.scheme == "plain":
                continue
            ratios.add_row(
                f"{result.scheme}/plain",
                f"{plain.encrypt_values_per_s / result.encrypt_values_per_s:,.1f}",
                f"{plain.aggregate_values_per_s / result.aggregate_values_per_s:,.1f}",
                f"{plain.decrypt_values_per_s / result.decrypt_values_per_s:,.1f}",
                f"{result.bytes_per_value / plain.bytes_per_value:,.2f}",
            )
        console.print(ratios)

    if precision is not None:
        verdict = "PASS" if precision.passes else "FAIL"
        console.print(
            f"CKKS precision, {precision.banks} banks x {precision.values:,} values in "
            f"[-1e5, 1e5]: max |error| {precision.max_abs_error:.2e} = "
            f"{precision.max_error_over_max_sum:.1e} x max |sum| ({precision.max_abs_sum:.3g}); "
            f"median |error| {precision.median_abs_error:.1e}, median elementwise relative "
            f"error {precision.median_elementwise_relative_error:.1e}  [{verdict}: <= 1e-6]"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", type=int, default=1_000_000,
                        help="values per bank for CKKS and plain (default 1000000)")
    parser.add_argument("--paillier-values", type=int, default=5_000,
                        help="values per bank for Paillier, which is ~300x slower (default 5000)")
    parser.add_argument("--banks", type=int, default=10, help="banks whose payloads are summed (default 10)")
    parser.add_argument("--paillier-bits", type=int, default=2048, help="Paillier key size (default 2048)")
    parser.add_argument("--schemes", default=",".join(SCHEMES),
                        help=f"comma-separated subset of {','.join(SCHEMES)}")
    parser.add_argument("--precision-values", type=int, default=8_192,
                        help="vector length for the 64-bank CKKS precision check (0 skips it)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the test vectors")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)
    unknown = set(args.schemes.split(",")) - set(SCHEMES)
    if unknown:
        parser.error(f"unknown scheme(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCHEMES)}")
    if min(args.values, args.paillier_values, args.banks) < 1:
        parser.error("--values, --paillier-values and --banks must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=110)
    rng = np.random.default_rng(args.seed)
    names = [name for name in SCHEMES if name in args.schemes.split(",")]
    console.print(
        f"fedfraud HE benchmark: {args.banks} banks, {args.values:,} values per bank "
        f"({args.paillier_values:,} for Paillier, {args.paillier_bits}-bit key); "
        f"Python {platform.python_version()} on {platform.machine()}"
    )
    results: list[SchemeResult] = []
    precision: PrecisionResult | None = None
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        for name in names:
            params: dict[str, Any] = {"key_bits": args.paillier_bits} if name == "paillier" else {}
            values = args.paillier_values if name == "paillier" else args.values
            results.append(
                measure_scheme(generate(name, **params), values=values, banks=args.banks, rng=rng,
                               progress=progress)
            )
        if "ckks" in names and args.precision_values > 0:
            precision = measure_ckks_precision(values=args.precision_values, rng=rng, progress=progress)
    render(console, results, precision)
    if args.json is not None:
        document = {
            "arguments": {key: str(value) if isinstance(value, Path) else value
                          for key, value in vars(args).items()},
            "results": [asdict(result) for result in results],
            "ckks_precision": asdict(precision) if precision is not None else None,
        }
        args.json.write_text(json.dumps(document, indent=2))
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
