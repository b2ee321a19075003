"""Online features of 1,000-transaction requests at busy cards and terminals, beside ordinary ones.

A scoring request's features are read off each worker's held rows one transaction at a time
(``bank_node.online.OnlineFeatures``). A busy key must not cost its whole window per
transaction: a card tested in a burst (1,000 of one card in one request), or a merchant terminal
holding tens of thousands of rows in its 30-day window. This bench builds a store whose history
holds one such card and terminal (``--busy-rows`` rows, two minutes apart) among ordinary ones
(generated), and times requests of 1,000 transactions:

- ordinary: distinct generated cards and terminals;
- one card: all 1,000 of the busy card (at the busy terminal);
- one terminal: 1,000 distinct cards at the busy terminal.

Each is the median of ``--repeats`` requests, and is also given as a ratio to the ordinary case
(this machine is shared: ratios taken in one run compare, absolute times drift).

Usage: python bench/scoring_busy.py [--busy-rows 20000] [--repeats 7] [--json OUT] [--png OUT]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _outputs import write_outputs  # noqa: E402
from bank_node.generator import generate_transactions  # noqa: E402
from bank_node.online import NewTransactions, OnlineFeatures  # noqa: E402
from bank_node.store import TransactionStore  # noqa: E402
from schemas.transaction import to_canonical  # noqa: E402

BUSY_CARD, BUSY_TERMINAL = 10**9, 10**9 + 1
err = Console(stderr=True)


def build_store(root: Path, busy_rows: int) -> tuple[TransactionStore, pd.Timestamp, pd.DataFrame]:
    """A store with 30 days of generated transactions plus the busy card's and terminal's rows."""
    raw = generate_transactions(n_customers=2000, n_terminals=3000, days=30, seed=5, start_date="2018-04-01")
    ordinary = to_canonical(raw, None, require_label=True)
    start = ordinary["timestamp"].min()
    busy = pd.DataFrame({
        "transaction_id": np.arange(busy_rows) + 10**12,
        "timestamp": start + pd.to_timedelta(np.arange(busy_rows) * 2, unit="min"),
        "customer_id": BUSY_CARD, "terminal_id": BUSY_TERMINAL, "amount": 1.0 + np.arange(busy_rows) % 50,
        "label": (np.arange(busy_rows) % 97 == 0).astype(int),
    })
    store = TransactionStore(f"sqlite:///{root / 'node.db'}")
    store.ingest(pd.concat([ordinary, busy], ignore_index=True), name="history", sha256="0" * 64, retention_days=None)
    return store, max(ordinary["timestamp"].max(), busy["timestamp"].max()), ordinary


def requests(after: pd.Timestamp, ordinary: pd.DataFrame, rng: np.random.Generator, n: int) -> dict[str, pd.DataFrame]:
    """Requests of ``n`` transactions just after the history, per case."""
    stamps = after + pd.to_timedelta(np.sort(rng.integers(1, 3600, n)), unit="s")
    ids = np.arange(n) + 10**13 + int(rng.integers(0, 10**6)) * n
    cards = rng.choice(ordinary["customer_id"].unique(), n)
    terminals = rng.choice(ordinary["terminal_id"].unique(), n)
    base = {"transaction_id": ids, "timestamp": stamps, "amount": rng.uniform(1, 200, n)}
    return {
        "ordinary": pd.DataFrame({**base, "customer_id": cards, "terminal_id": terminals}),
        "one card": pd.DataFrame({**base, "customer_id": BUSY_CARD, "terminal_id": BUSY_TERMINAL}),
        "one terminal": pd.DataFrame({**base, "customer_id": cards, "terminal_id": BUSY_TERMINAL}),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy-rows", type=int, default=20_000, help="rows of the busy card and terminal")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedfraud-bench-busy-") as folder:
        err.print(f"building a store with a card and a terminal of {args.busy_rows:,} rows ...")
        store, last, ordinary = build_store(Path(folder), args.busy_rows)
        online = OnlineFeatures(store)
        online.recent.load()
        rng = np.random.default_rng(0)
        times: dict[str, list[float]] = {}
        for repeat in range(args.repeats + 1):
            for case, frame in requests(last, ordinary, rng, 1000).items():
                new = NewTransactions.from_frame(frame)
                started = time.perf_counter()
                online.compute(new)
                if repeat:  # the first round warms up
                    times.setdefault(case, []).append((time.perf_counter() - started) * 1e3)
        store.close()
    medians = {case: statistics.median(values) for case, values in times.items()}
    table = Table(title=f"online features of a 1,000-transaction request (median of {args.repeats})")
    for column in ("request", "ms", "x ordinary"):
        table.add_column(column)
    for case, ms in medians.items():
        table.add_row(case, f"{ms:.1f}", f"{ms / medians['ordinary']:.2f}")
    Console().print(table)
    write_outputs({"busy_rows": args.busy_rows, "repeats": args.repeats, "median_ms": medians}, args.json, args.png,
                  plot)


def plot(result: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    medians = result["median_ms"]
    assert isinstance(medians, dict)
    fig, axes = plt.subplots(figsize=(6, 3.5))
    axes.bar(list(medians), list(medians.values()), color=["tab:gray", "tab:blue", "tab:orange"])
    axes.set_ylabel("ms for 1,000 transactions' online features")
    axes.set_title(f"busy card and terminal of {result['busy_rows']:,} rows (median of {result['repeats']})",
                   fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
