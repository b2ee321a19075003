"""Time ``compute_features`` over the handbook's 1.6M simulated transactions.

Usage::

    python bench/features_speed.py                      # every day of transactions.parquet
    python bench/features_speed.py --start 2018-07-25 --end 2018-08-14
    python bench/features_speed.py --generated          # no data set: simulate 183 days instead

Prints progress, then the seconds and rows per second of each repetition.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bank_node.features import compute_features  # noqa: E402
from bank_node.generator import HANDBOOK_TO_CANONICAL, generate_transactions  # noqa: E402

DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "fraud-detection-handbook-simulated"
# The handbook simulator's size: 5,000 cards, 10,000 terminals, 183 days.
GENERATED_SIZE = {"n_customers": 5_000, "n_terminals": 10_000, "days": 183}


def _load(generated: bool, data_dir: Path) -> pd.DataFrame:
    if generated:
        print(f"generating transactions {GENERATED_SIZE} ...", flush=True)
        started = time.perf_counter()
        raw = generate_transactions(**GENERATED_SIZE, seed=0)
        elapsed = time.perf_counter() - started
        print(f"  {len(raw):,} rows in {elapsed:.2f} s ({len(raw) / elapsed:,.0f} rows/s)", flush=True)
    else:
        path = data_dir / "transactions.parquet"
        if not path.exists():
            sys.exit(f"{path} not found; pass --data-dir or --generated")
        print(f"loading {path} ...", flush=True)
        raw = pd.read_parquet(path)
        print(f"  {len(raw):,} rows", flush=True)
    return raw.rename(columns=HANDBOOK_TO_CANONICAL)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark from the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument(
        "--generated", action="store_true", help="simulate transactions instead of loading them"
    )
    parser.add_argument("--start", default=None, help="first day described (history before it is used)")
    parser.add_argument("--end", default=None, help="last day described, inclusive")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    tx = _load(args.generated, args.data_dir)
    print(f"computing features for [{args.start or 'first day'}, {args.end or 'last day'}], "
          f"{args.repeat} repetition(s) ...", flush=True)
    timings = []
    for run in range(1, args.repeat + 1):
        started = time.perf_counter()
        out = compute_features(tx, start=args.start, end=args.end)
        elapsed = time.perf_counter() - started
        timings.append(elapsed)
        print(f"  run {run}: {len(out):,} rows described from {len(tx):,} input rows in {elapsed:.2f} s "
              f"({len(tx) / elapsed:,.0f} input rows/s)", flush=True)
    best = min(timings)
    print(f"best: {best:.2f} s for {len(tx):,} input rows, {len(tx) / best:,.0f} rows/s")


if __name__ == "__main__":
    main()
