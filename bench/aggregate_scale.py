"""A round of 50 banks' CKKS contributions summed as the aggregator sums them, the payloads read
whole into memory (as before) against mapped from the blob store (now): ciphertexts per second and
the peak of the process's own (anonymous) memory, in one run.

Each bank's payload encrypts ``--values`` values (chunked to the key's slots); the payloads are
written to a blob store under a temporary folder, then each way runs in a fresh process of its own:
``read`` does ``BlobStore.get`` for every payload, then ``aggregate``; ``mapped`` does
``BlobStore.mapped`` for every payload, then ``aggregate`` (consortium/rounds.py). Peak anonymous
memory is sampled from /proc every 5 ms (mapped file pages are the kernel's page cache, which it can
drop and read again; they are not counted).

Usage: python bench/aggregate_scale.py [--banks 50] [--values 200000] [--json OUT] [--png OUT]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import crypto  # noqa: E402
from consortium.storage.blobs import BlobStore  # noqa: E402
from _outputs import write_outputs  # noqa: E402

err = Console(stderr=True)


def _anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def _sum_round(way: str, public: bytes, root: str, digests: list[str]) -> dict[str, Any]:
    context = crypto.load_context(public, require_public=True)
    store = BlobStore(root)
    baseline = _anon_kib()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _anon_kib())
            done.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with ExitStack() as stack:
        if way == "read":
            payloads: list[Any] = [store.get(d) for d in digests]
        else:
            payloads = [stack.enter_context(store.mapped(d)) for d in digests]
        total = context.aggregate(payloads)
        del payloads
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return {"way": way, "seconds": seconds, "peak_anon_mb": (peak[0] - baseline) / 1024, "sum_bytes": len(total)}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(9, 3.5))
    labels = [f"{r['way']} {i // 2 + 1}" for i, r in enumerate(rows)]
    colours = ["tab:orange" if r["way"] == "read" else "tab:blue" for r in rows]
    speed.bar(labels, [r["ciphertexts_per_s"] for r in rows], color=colours)
    speed.set_ylabel("ciphertexts summed per second")
    memory.bar(labels, [r["peak_anon_mb"] for r in rows], color=colours)
    memory.set_ylabel("peak anonymous memory, MiB")
    fig.suptitle(f"{result['banks']} banks' payloads ({result['payload_mib']:.0f} MiB) summed: read whole vs mapped",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--banks", type=int, default=50)
    parser.add_argument("--values", type=int, default=200_000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()
    secret = crypto.generate("ckks")
    public = secret.public_context()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedfraud-aggregate-") as root:
        store = BlobStore(Path(root) / "blobs")
        digests = []
        for bank in range(args.banks):
            digests.append(store.put(secret.encrypt(np.full(args.values, float(bank + 1)))))
        payload_mb = sum((Path(root) / "blobs" / d[:2] / d).stat().st_size for d in digests) / 2**20
        chunks = -(-args.values // secret.slot_count)  # type: ignore[attr-defined]
        err.print(f"{args.banks} payloads of {args.values:,} values ({chunks} ciphertexts each), {payload_mb:.0f} MiB")
        spawn = multiprocessing.get_context("spawn")
        from concurrent.futures import ProcessPoolExecutor

        for way in ("read", "mapped", "read", "mapped"):  # alternated: the machine's noise falls on both
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                row = pool.submit(_sum_round, way, public, str(Path(root) / "blobs"), digests).result()
            row["ciphertexts_per_s"] = args.banks * chunks / row["seconds"]
            rows.append(row)
            err.print(f"  {way}: {row['seconds']:.2f} s, {row['ciphertexts_per_s']:,.0f} ciphertexts/s, "
                      f"peak anonymous memory +{row['peak_anon_mb']:.0f} MiB")
        summed = crypto.load_context(public, require_public=True).aggregate([store.get(d) for d in digests])
        assert np.allclose(secret.decrypt(summed)[:3], args.banks * (args.banks + 1) / 2, atol=1e-2)
    table = Table(title=f"a round of {args.banks} banks, {args.values:,} values each ({payload_mb:.0f} MiB of payloads)")
    for column in ("way", "seconds", "ciphertexts/s", "peak anonymous memory"):
        table.add_column(column, justify="left" if column == "way" else "right")
    for row in rows:
        table.add_row(row["way"], f"{row['seconds']:.2f}", f"{row['ciphertexts_per_s']:,.0f}",
                      f"+{row['peak_anon_mb']:.0f} MiB")
    Console().print(table)
    result = {"banks": args.banks, "values": args.values, "payload_mib": payload_mb, "rows": rows}
    write_outputs(result, args.json, args.png, plot)


if __name__ == "__main__":
    main()
