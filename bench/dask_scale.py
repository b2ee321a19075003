"""Features plus one tree's histograms on Dask, for 10M and 50M generated transactions, beside the
pandas path where it fits: rows per second and peak memory (per Dask worker; of the one pandas
process), in one run.

Data: the built-in generator, in chunks of about 1M transactions (10,000 cards each, card and
transaction ids offset per chunk, 50 days), written once as Parquet files under ``--data``; the
features describe the last 15 days (the 35 before are their windows' history). One tree: depth 3,
the federated protocol's local part (each level's histograms summed over the partitions, rows moved
to their children where they lie), 32 bins per feature cut at quantiles of a sample.

The pandas path runs in a child process (its peak memory is then its own): all rows read, features,
the same tree. Dask: a local cluster of ``--workers`` processes of one thread each; each worker's
peak resident memory is read from the worker itself at the end.

Usage: python bench/dask_scale.py [--sizes 10,50] [--pandas-max 10] [--workers 2] [--json OUT] [--png OUT]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _outputs import write_outputs  # noqa: E402

from bank_node.features import compute_features, model_matrix  # noqa: E402
from bank_node.federated.params import GBDTParams  # noqa: E402
from bank_node.generator import generate_transactions  # noqa: E402
from schemas.transaction import to_canonical  # noqa: E402

err = Console(stderr=True)
CHUNK_CARDS = 10_000
DAYS = 50
START_DATE = "2018-04-01"
DESCRIBED = ("2018-05-06", "2018-05-20")
PARAMS = GBDTParams(n_trees=1, max_depth=3)
N_BINS = 32


def generate(folder: Path, millions: int) -> int:
    """Parquet files of about ``millions`` million transactions (kept between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = folder.parent / f"{folder.name}.rows.json"
    if done.exists():
        return int(json.loads(done.read_text())["rows"])
    rows, chunk = 0, 0
    started = time.perf_counter()
    while rows < millions * 1_000_000:
        raw = generate_transactions(n_customers=CHUNK_CARDS, n_terminals=20_000, days=DAYS, seed=1000 + chunk,
                                    start_date=START_DATE)
        tx = to_canonical(raw, require_label=True)[["transaction_id", "timestamp", "customer_id", "terminal_id",
                                                     "amount", "label"]]
        tx = tx.assign(transaction_id=tx["transaction_id"] + chunk * 10_000_000,
                       customer_id=tx["customer_id"] + chunk * CHUNK_CARDS)
        tx.to_parquet(folder / f"part-{chunk:04d}.parquet", index=False)
        rows, chunk = rows + len(tx), chunk + 1
        err.print(f"  generated {rows:,} rows ({rows / (time.perf_counter() - started):,.0f} rows/s)")
    done.write_text(json.dumps({"rows": rows}))
    return rows


def sample_cuts(folder: Path) -> list[np.ndarray]:
    """Cuts at quantiles of the first file's described rows (both paths use the same)."""
    first = pd.read_parquet(sorted(folder.glob("part-*.parquet"))[0])
    X = model_matrix(compute_features(first, start=DESCRIBED[0], end=DESCRIBED[1]))
    return [np.unique(np.quantile(X[:, j], np.linspace(0, 1, N_BINS + 1)[1:-1])).astype(np.float32)
            for j in range(X.shape[1])]


def _pandas_child(folder: str, cuts: list[np.ndarray]) -> dict[str, Any]:
    from bank_node.federated.binning import bin_index
    from bank_node.federated.grower import TreeGrower
    from bank_node.federated.objective import base_margin
    from bank_node.federated.party import advance_positions, make_level_payload, tree_gradients

    started = time.perf_counter()
    frame = pd.read_parquet(folder)
    featured = compute_features(frame, start=DESCRIBED[0], end=DESCRIBED[1])
    features_s = time.perf_counter() - started
    X = model_matrix(featured)
    bins = bin_index(X, cuts)
    labels = featured["label"].to_numpy(dtype=np.float32)
    grad, hess = tree_gradients(np.full(len(labels), float(base_margin(PARAMS.base_score)), dtype=np.float32),
                                labels, PARAMS, tree_index=0)
    grower = TreeGrower(params=PARAMS, bins_per_feature=np.array([len(c) + 1 for c in cuts]),
                        features=np.arange(X.shape[1]), cuts=cuts)
    positions = np.zeros(len(labels), dtype=np.int32)
    while (request := grower.request) is not None:
        result = grower.apply_level_sum(make_level_payload(bins, grad, hess, positions, request))
        positions = advance_positions(bins, positions, result.splits)
    return {"rows_in": len(frame), "rows_described": len(featured), "features_s": features_s,
             "total_s": time.perf_counter() - started,
             "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "tree_features": grower.tree().feature.tolist()}


def run_pandas(folder: Path, cuts: list[np.ndarray]) -> dict[str, Any]:
    """The pandas path in a fresh process of its own (its peak memory is then its own)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_pandas_child, str(folder), cuts).result()


def run_dask(folder: Path, cuts: list[np.ndarray], workers: int) -> dict[str, Any]:
    from bank_node.scale import dask_client, dask_features, dask_tree, read_transactions

    with dask_client(n_workers=workers) as client:
        started = time.perf_counter()
        frame = read_transactions(str(folder))
        featured = dask_features(frame, start=DESCRIBED[0], end=DESCRIBED[1]).persist()
        described = int(featured.shape[0].compute())
        features_s = time.perf_counter() - started
        tree = dask_tree(featured, cuts, PARAMS)
        total_s = time.perf_counter() - started
        peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"rows_described": described, "features_s": features_s, "total_s": total_s,
            "peak_mb_per_worker": sorted(peaks.values()), "tree_features": tree.feature.tolist()}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4))
    labels, rates, peaks = [], [], []
    for row in result["rows"]:
        labels.append(f"{row['rows_in'] / 1e6:.0f}M {row['path']}")
        rates.append(row["rows_in"] / row["total_s"])
        peaks.append(row["peak_mb"] / 1024)
    speed.bar(labels, rates, color=["tab:orange" if "pandas" in l else "tab:blue" for l in labels])
    speed.set_ylabel("input rows per second (features + one tree)")
    memory.bar(labels, peaks, color=["tab:orange" if "pandas" in l else "tab:blue" for l in labels])
    memory.set_ylabel("peak memory, GiB (pandas: the process; Dask: the largest worker)")
    for ax in (speed, memory):
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle(f"Bank node on Dask ({result['workers']} local workers) beside pandas", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,50", help="millions of transactions")
    parser.add_argument("--pandas-max", type=int, default=10, help="largest size (millions) run on pandas too")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path("/tmp/fedfraud-dask-bench"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for millions in [int(s) for s in args.sizes.split(",")]:
        folder = args.data / f"{millions}M"
        err.print(f"{millions}M transactions under {folder} ...")
        rows_in = generate(folder, millions)
        cuts = sample_cuts(folder)
        err.print(f"{millions}M: Dask, {args.workers} workers ...")
        dask_run = run_dask(folder, cuts, args.workers)
        rows.append({"path": "dask", "rows_in": rows_in, **dask_run, "peak_mb": max(dask_run["peak_mb_per_worker"])})
        err.print(f"  {dask_run['total_s']:.1f} s, peak per worker {dask_run['peak_mb_per_worker']} MB")
        if millions <= args.pandas_max:
            err.print(f"{millions}M: pandas ...")
            pandas_run = run_pandas(folder, cuts)
            rows.append({"path": "pandas", **pandas_run})
            err.print(f"  {pandas_run['total_s']:.1f} s, peak {pandas_run['peak_mb']:.0f} MB")
            assert pandas_run["rows_described"] == dask_run["rows_described"]
            assert pandas_run["tree_features"] == dask_run["tree_features"], "the two paths grew different trees"
    table = Table(title=f"features + one tree (depth {PARAMS.max_depth}), {args.workers} Dask workers")
    for column in ("rows", "path", "described rows", "features s", "total s", "input rows/s", "peak memory"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for row in rows:
        memory = (f"{row['peak_mb'] / 1024:.2f} GiB" if row["path"] == "pandas"
                  else " / ".join(f"{m / 1024:.2f}" for m in row["peak_mb_per_worker"]) + " GiB per worker")
        table.add_row(f"{row['rows_in'] / 1e6:.1f}M", row["path"], f"{row['rows_described']:,}",
                      f"{row['features_s']:.1f}", f"{row['total_s']:.1f}", f"{row['rows_in'] / row['total_s']:,.0f}",
                      memory)
    Console().print(table)
    result = {"workers": args.workers, "params": {"max_depth": PARAMS.max_depth, "bins": N_BINS}, "rows": rows}
    write_outputs(result, args.json, args.png, plot)


if __name__ == "__main__":
    main()
