"""A round of 50 banks' CKKS contributions summed as the aggregator sums them: as it did before
large rounds were split (one thread, payloads mapped, every body digest checked again), in one thread
now (the file checked against its name stands for the body digest), and in pieces by two processes
(what a large round gets, off the request): ciphertexts per second and the peak of the service's own
(anonymous) memory, processes included, in one run.

Each bank's payload encrypts ``--values`` values (chunked to the key's slots); the payloads are
written to a blob store under a temporary folder, then each way runs in a fresh process of its own,
alternated (``--repeats`` times). The two-process way is timed on its second sum (the service keeps
its processes; their start is paid once). Peak anonymous memory is sampled from /proc every 5 ms
over the process and its children (mapped file pages are the kernel's page cache, which it can drop
and read again; they are not counted). Every way's sum is checked to be the same bytes.

Usage: python bench/aggregate_scale.py [--banks 50] [--values 200000] [--repeats 2] [--json OUT] [--png OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
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
from consortium.aggregation import Summer  # noqa: E402
from consortium.storage.blobs import BlobStore  # noqa: E402
from _outputs import write_outputs  # noqa: E402

err = Console(stderr=True)


def _anon_kib(pid: int | str = "self") -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:  # the child ended meanwhile
        return 0
    for line in lines:
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def _children() -> list[str]:
    pids: list[str] = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            pids += (task / "children").read_text().split()
    return pids


def _service_kib() -> int:
    return _anon_kib() + sum(_anon_kib(pid) for pid in _children())


WAYS = {"one thread, as before": "before", "one thread": "thread", "two processes": "processes"}


def _sum_round(way: str, public: bytes, root: str, digests: list[str], n_values: int) -> dict[str, Any]:
    context = crypto.load_context(public, require_public=True)
    store = BlobStore(root)
    context_digest = store.put(public)
    summer = Summer(store, processes=2 if way == "processes" else 1, background_min_bytes=0)
    total_bytes = sum((Path(root) / d[:2] / d).stat().st_size for d in digests)

    def once() -> bytes:
        if way == "before":
            with ExitStack() as stack:
                payloads: list[Any] = [stack.enter_context(store.mapped(d)) for d in digests]
                return context.aggregate(payloads)
        total, _ = summer.total(context, context_digest, digests, n_values=n_values, total_bytes=total_bytes,
                                guard=contextlib.nullcontext())
        return total

    if way == "processes":
        once()  # the processes start and load the context once in the service's life
    baseline = _service_kib()
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _service_kib())
            done.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    total = once()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    summer.close()
    return {"way": way, "seconds": seconds, "peak_anon_mb": (peak[0] - baseline) / 1024,
            "sum_sha256": hashlib.sha256(total).hexdigest(), "sum_bytes": len(total)}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = {code: name for name, code in WAYS.items()}
    labels = [f"{names[r['way']]} ({r['repeat']})" for r in rows]
    palette = {"before": "tab:orange", "thread": "tab:blue", "processes": "tab:green"}
    colours = [palette[r["way"]] for r in rows]
    speed.bar(labels, [r["ciphertexts_per_s"] for r in rows], color=colours)
    speed.set_ylabel("ciphertexts summed per second")
    memory.bar(labels, [r["peak_anon_mb"] for r in rows], color=colours)
    memory.set_ylabel("peak anonymous memory, MiB (with processes)")
    for axes in (speed, memory):
        axes.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.suptitle(f"{result['banks']} banks' payloads ({result['payload_mib']:.0f} MiB) summed", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--banks", type=int, default=50)
    parser.add_argument("--values", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=2)
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

        for repeat in range(1, args.repeats + 1):  # alternated: the machine's noise falls on every way
            for name, way in WAYS.items():
                with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                    row = pool.submit(_sum_round, way, public, str(Path(root) / "blobs"), digests, args.values).result()
                row["ciphertexts_per_s"] = args.banks * chunks / row["seconds"]
                row["repeat"] = repeat
                rows.append(row)
                err.print(f"  {name} ({repeat}): {row['seconds']:.2f} s, {row['ciphertexts_per_s']:,.0f} ciphertexts/s, "
                          f"peak anonymous memory +{row['peak_anon_mb']:.0f} MiB")
        summed = crypto.load_context(public, require_public=True).aggregate([store.get(d) for d in digests])
        assert np.allclose(secret.decrypt(summed)[:3], args.banks * (args.banks + 1) / 2, atol=1e-2)
        assert {row["sum_sha256"] for row in rows} == {hashlib.sha256(summed).hexdigest()}, "the ways' sums differ"
    table = Table(title=f"a round of {args.banks} banks, {args.values:,} values each ({payload_mb:.0f} MiB of payloads)")
    for column in ("way", "seconds", "ciphertexts/s", "peak anonymous memory"):
        table.add_column(column, justify="left" if column == "way" else "right")
    names = {code: name for name, code in WAYS.items()}
    for row in rows:
        table.add_row(f"{names[row['way']]} ({row['repeat']})", f"{row['seconds']:.2f}", f"{row['ciphertexts_per_s']:,.0f}",
                      f"+{row['peak_anon_mb']:.0f} MiB")
    Console().print(table)
    result = {"banks": args.banks, "values": args.values, "payload_mib": payload_mb, "rows": rows}
    write_outputs(result, args.json, args.png, plot)


if __name__ == "__main__":
    main()
