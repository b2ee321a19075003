"""The scoring service under gunicorn with a real load generator, beside in-process XGBoost.

The node: every card of the handbook (5,000 cards, 10,000 terminals, as one large bank), June and
July 2018 in its store (590,000 transactions), a model of 100 trees of depth 6 over consortium
terminal features, and the pooled consortium history those features come from (built directly
from the same transactions split over three banks: what the pooling protocol decodes; this bench
measures scoring, not pooling). The service: ``gunicorn -c ops/gunicorn-scoring.conf.py`` (two
worker processes) on 127.0.0.1; the load: locust (``bench/locust_scoring.py``) on the same
machine, sending August's transactions in time order, each once, each answer checked.

Phases, each on its own slice of the stream:
0. the floor: the same service, load generator and rate, each request a ``GET /v1/health``
   (no scoring): what the client sees of gunicorn, Flask, the connections and locust itself on
   two shared cores, whatever the scoring costs;
1. single transactions at a fixed 200 requests/s: latency p50 / p99, as locust sees it and as
   the service's access log times it (from the request read to the answer written), and the
   processor time a request of the workers and of locust;
2. single transactions as fast as answers come (closed loop): the maximum sustained rate;
3. batches of 1,000 transactions (closed loop): transactions a second.
Every request computes the online features (card and terminal windows, consortium terminal
features), scores, explains (exact TreeSHAP for one transaction, the approximation for 1,000)
and records the transactions in the store.

In-process, on the same rows' batch features: ``Booster.inplace_predict`` one row at a time
(latency) and 1,000 rows at a time (throughput); and one row's exact reasons and probability
from XGBoost (``pred_contribs``) against the tables the service reads them from
(``bank_node/treeshap.py``), with the tables' build time and size.

Usage: python bench/scoring.py [--workdir DIR] [--seconds 30] [--json OUT] [--png OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import crypto  # noqa: E402
from bank_node.agent.ceremony import load_secret_scheme  # noqa: E402
from bank_node.agent.state import StateDir  # noqa: E402
from bank_node.agent.training import FEATURES_ATTRIBUTE  # noqa: E402
from bank_node.features import MODEL_INPUTS, FeatureConfig, compute_features, model_matrix, timestamps_ns  # noqa: E402
from bank_node.federated.terminal_stats import (  # noqa: E402
    ConsortiumHistory,
    terminal_tags,
    with_consortium_terminal_features,
)
from bank_node.recent import RecentTransactions  # noqa: E402
from bank_node.service.auth import issue_token  # noqa: E402
from bank_node.store import TransactionStore  # noqa: E402
from bank_node.terminal_history import PooledHistory, terminal_key  # noqa: E402
from fedfraud.localnet import ProcessExitedError, free_port, wait_until_serving  # noqa: E402
from fedfraud.simulation import partition_customers  # noqa: E402
from schemas.transaction import to_canonical  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "fraud-detection-handbook-simulated" / "transactions.parquet"
HISTORY_FROM, STREAM_FROM = pd.Timestamp("2018-06-01"), pd.Timestamp("2018-08-01")
THRESHOLD = 3
err = Console(stderr=True)


def pooled_history(frame: pd.DataFrame, key: bytes) -> ConsortiumHistory:
    """The consortium's events of every day, as three banks' pooling would decode them."""
    owner = partition_customers(frame["customer_id"], (0.5, 0.3, 0.2), seed=0)
    tags = terminal_tags(frame["terminal_id"].to_numpy(), key)
    presence = pd.DataFrame({"tag": tags, "bank": owner}).groupby("tag")["bank"].nunique()
    seconds = timestamps_ns(frame["timestamp"]) // 10**9
    events = pd.DataFrame({"tag": tags, "second": seconds, "fraud": frame["label"].to_numpy()})
    events = events[events["tag"].map(presence).to_numpy() >= THRESHOLD]
    grouped = events.groupby(["tag", "second"])["fraud"].agg(["size", "sum"]).reset_index()
    days = np.unique(seconds // 86_400)
    return ConsortiumHistory(
        tag=grouped["tag"].to_numpy(np.int64), time_ns=grouped["second"].to_numpy(np.int64) * 10**9,
        count=grouped["size"].to_numpy(np.int64), frauds=grouped["sum"].to_numpy(np.int64),
        presence_tags=presence.index.to_numpy(np.int64), presence_banks=presence.to_numpy(np.int64),
        days=tuple(int(d) for d in days), threshold=THRESHOLD)


def build_node(root: Path, frame: pd.DataFrame) -> dict[str, Any]:
    """The node's state directory: store, HE secret, pooled history, model, a scorer token."""
    import xgboost as xgb

    state = StateDir(root)
    state.ensure()
    secret = crypto.generate("plain").secret_context()
    state.save_secret_context(secret)
    key = terminal_key(secret)
    err.print("pooled consortium history ...")
    history = pooled_history(frame, key)
    store = TransactionStore.in_state_dir(root)
    PooledHistory(store.engine).save(load_secret_scheme(state).key_id, history, banks=["bank-1", "bank-2", "bank-3"],
                                     run_id="bench", labels_until=max(history.days))
    err.print("training the model (100 trees of depth 6) ...")
    past = frame[frame["timestamp"] < STREAM_FROM]
    train, _ = with_consortium_terminal_features(compute_features(past, start="2018-07-01", end="2018-07-24"),
                                                 history, secret=key)
    booster = xgb.train({"max_depth": 6, "eta": 0.3, "objective": "binary:logistic", "nthread": 2},
                        xgb.DMatrix(model_matrix(train), label=train["label"], feature_names=list(MODEL_INPUTS)), 100)
    booster.set_attr(**{FEATURES_ATTRIBUTE: json.dumps({"terminal_features": "consortium",
                                                        "terminal_threshold": THRESHOLD})})
    body = bytes(booster.save_raw("json"))
    path = state.save_model("1", "xgboost", body)
    state.update_run("bench", {"status": "published", "model": "xgboost", "version": "1", "model_file": str(path),
                               "promoted": True, "matches_proposal": True, "digest": hashlib.sha256(body).hexdigest()})
    err.print(f"ingesting {int((frame['timestamp'] >= HISTORY_FROM).sum() - (frame['timestamp'] >= STREAM_FROM).sum()):,}"
              " transactions into the store ...")
    store.ingest(past[past["timestamp"] >= HISTORY_FROM], name="history", sha256="b" * 64, retention_days=None)
    token = issue_token(store.engine, "scorer")
    store.close()

    stream = frame[frame["timestamp"] >= STREAM_FROM]
    labels_unknown = frame.copy()
    labels_unknown.loc[labels_unknown["timestamp"] >= STREAM_FROM, "label"] = 0
    featured, _ = with_consortium_terminal_features(compute_features(labels_unknown, start=STREAM_FROM), history,
                                                    secret=key)
    featured = featured.set_index("transaction_id").loc[stream["transaction_id"]].reset_index()
    return {"token": token, "stream": stream, "X": model_matrix(featured), "booster": booster}


def recent_memory(root: Path) -> dict[str, float]:
    """Bytes a worker holds for its in-memory recent transactions."""
    store = TransactionStore.in_state_dir(root)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    recent = RecentTransactions(store, keep_days=FeatureConfig().lookback_days)
    recent.load()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    rows = len(recent)
    store.close()
    return {"rows": rows, "mib": held / 2**20, "bytes_per_row": held / max(rows, 1)}


def as_json(rows: pd.DataFrame) -> list[dict[str, Any]]:
    return [{"transaction_id": int(r.transaction_id), "timestamp": r.timestamp.isoformat(),
             "customer_id": int(r.customer_id), "terminal_id": int(r.terminal_id), "amount": float(r.amount)}
            for r in rows.itertuples()]


def locust(url: str, token: str, rows: list[dict[str, Any]], *, users: int, rate: float, batch: int,
           seconds: float, workdir: Path, name: str, path: str | None = None) -> dict[str, Any]:
    """One locust run (headless); latencies recorded per request, as floats; and the processor
    time locust took, in ms a request (``path="/v1/health"``: the floor, see the locustfile)."""
    rows_file = workdir / f"{name}.rows.json"
    rows_file.write_text(json.dumps(rows))
    latencies = workdir / f"{name}.latencies.json"
    env = {**os.environ, "SCORING_TOKEN": token, "SCORING_ROWS": str(rows_file), "SCORING_BATCH": str(batch),
           "SCORING_RATE": str(rate), "SCORING_LATENCIES": str(latencies), "SCORING_PATH": path or ""}
    cpu_before = _children_cpu_s()
    started = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).with_name("locust")), "-f", str(REPO / "bench" / "locust_scoring.py"), "--headless",
         "--host", url, "-u", str(users), "-r", str(users), "-t", f"{int(seconds)}s", "--only-summary",
         "--loglevel", "WARNING", "--stop-timeout", "10"],
        env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    cpu_s = _children_cpu_s() - cpu_before
    if not latencies.exists():
        raise SystemExit(f"locust run {name} failed:\n{done.stderr[-3000:]}")
    recorded = json.loads(latencies.read_text())
    times = np.asarray(recorded["ms"], dtype=np.float64)
    ok = int(recorded["ok"])
    return {"requests": ok, "failures": int(recorded["failures"]), "seconds": recorded["seconds"],
            "rps": ok / recorded["seconds"], "p50_ms": float(np.percentile(times, 50)),
            "p99_ms": float(np.percentile(times, 99)), "users": users, "batch": batch, "wall_s": wall,
            "locust_cpu_ms_per_request": cpu_s * 1e3 / max(ok + int(recorded["failures"]), 1)}


def _children_cpu_s() -> float:
    """Processor seconds (user and system) of this process's finished children so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def workers_cpu_s(service: subprocess.Popen[bytes]) -> float:
    """Processor seconds the service's workers have taken so far."""
    import psutil

    total = 0.0
    for worker in psutil.Process(service.pid).children():
        times = worker.cpu_times()
        total += times.user + times.system
    return total


def served_ms(log_path: Path, offset: int, path: str) -> dict[str, float]:
    """The service's own time for the successful requests to ``path`` that its access log holds
    after byte ``offset``: from the request read to the answer written (gunicorn's ``duration_us``;
    without the wait for a worker, the connection or the load generator)."""
    time.sleep(0.5)  # the last answers' lines are written just after the answers
    with open(log_path, "rb") as log:
        log.seek(offset)
        lines = log.read().splitlines()
    durations = []
    for line in lines:
        if line.startswith(b"{"):
            entry = json.loads(line)
            if entry.get("type") == "access" and entry.get("path") == path and entry.get("status") == 200:
                durations.append(entry["duration_us"] / 1e3)
    if not durations:
        raise SystemExit(f"no access line for {path} in the service's log: is its access log on?")
    return {"requests": len(durations), "p50_ms": float(np.percentile(durations, 50)),
            "p99_ms": float(np.percentile(durations, 99))}


def in_process(booster: Any, X: np.ndarray) -> dict[str, float]:
    """``inplace_predict`` one row at a time, and 1,000 rows at a time; and what the service adds
    for one row's exact reasons: XGBoost's own (a DMatrix, ``pred_contribs``, ``predict``), as the
    service did before, against the tables it builds at load (``bank_node/treeshap.py``), timed
    row by row in turn on the same rows."""
    import xgboost as xgb

    from bank_node.treeshap import ContributionTables

    booster.set_param({"nthread": 1})
    single = []
    for i in range(min(3000, len(X))):
        started = time.perf_counter()
        booster.inplace_predict(X[i : i + 1])
        single.append((time.perf_counter() - started) * 1e3)
    rows = X[: 100_000]
    started = time.perf_counter()
    for start in range(0, len(rows), 1000):
        booster.inplace_predict(rows[start : start + 1000])
    batch_rows_per_s = len(rows) / (time.perf_counter() - started)

    started = time.perf_counter()
    tables = ContributionTables.of_booster(booster)
    build_s = time.perf_counter() - started
    by_xgboost, by_tables = [], []
    for i in range(min(2000, len(X))):
        row = X[i : i + 1]
        started = time.perf_counter()
        data = xgb.DMatrix(row, nthread=1)
        booster.predict(data, pred_contribs=True, validate_features=False)
        booster.predict(data, validate_features=False)
        by_xgboost.append((time.perf_counter() - started) * 1e3)
        started = time.perf_counter()
        probability, _ = tables.scores(row)
        by_tables.append((time.perf_counter() - started) * 1e3)
        if probability is None or probability[0] != booster.inplace_predict(row)[0]:
            raise SystemExit(f"the tables' probability of row {i} is not XGBoost's")
    return {"p50_ms": float(np.percentile(single, 50)), "p99_ms": float(np.percentile(single, 99)),
            "batch_rows_per_s": batch_rows_per_s,
            "exact_reasons_xgboost_p50_ms": float(np.percentile(by_xgboost, 50)),
            "exact_reasons_tables_p50_ms": float(np.percentile(by_tables, 50)),
            "tables_build_s": build_s, "tables_mib": tables.nbytes / 2**20}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="where the node and logs go (default: a temp dir)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each load phase")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args(argv)
    if not DATA.exists():
        raise SystemExit(f"the handbook data is not at {DATA}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fedfraud-bench-scoring-"))
    workdir.mkdir(parents=True, exist_ok=True)
    root = workdir / "node"
    if root.exists():
        raise SystemExit(f"{root} exists: give an empty --workdir")

    err.print("loading the handbook transactions ...")
    raw = pd.read_parquet(DATA)
    frame = to_canonical(raw, None, require_label=True).sort_values(["timestamp", "transaction_id"])
    frame = frame[frame["timestamp"] >= HISTORY_FROM - pd.Timedelta(days=40)].reset_index(drop=True)
    node = build_node(root, frame)
    memory = recent_memory(root)
    stream = as_json(node["stream"])

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDFRAUD_", "PROMETHEUS_"))}
    env.update(FEDFRAUD_STATE_DIR=str(root), FEDFRAUD_SCORING_BIND=f"127.0.0.1:{port}", FEDFRAUD_LOG_LEVEL="WARNING")
    log = open(workdir / "scoring-service.log", "wb")  # noqa: SIM115 - closed below
    service = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), "-c",
                                str(REPO / "ops" / "gunicorn-scoring.conf.py")], env=env, stdout=log, stderr=log)
    results: dict[str, Any] = {"memory": memory}
    try:
        try:
            wait_until_serving(f"{url}/v1/ready", service, workdir / "scoring-service.log", 300, "the scoring service")
        except ProcessExitedError as exc:
            raise SystemExit(str(exc)) from None
        used = 0

        def take(n: int) -> list[dict[str, Any]]:
            nonlocal used
            part = stream[used : used + n]
            used += n
            if len(part) < n:
                raise SystemExit("the stream ran out of transactions; use fewer --seconds")
            return part

        err.print("warming up ...")
        locust(url, node["token"], take(400), users=4, rate=0, batch=1, seconds=10, workdir=workdir, name="warmup")
        log_file = workdir / "scoring-service.log"
        err.print(f"the floor: GET /v1/health at 200 requests/s for {args.seconds:.0f} s ...")
        offset = log_file.stat().st_size
        results["floor_200"] = locust(url, node["token"], [{}] * int(200 * args.seconds), users=20, rate=10, batch=1,
                                      seconds=args.seconds, workdir=workdir, name="floor_200", path="/v1/health")
        results["floor_200"]["served"] = served_ms(log_file, offset, "/v1/health")
        err.print(f"phase 1: single transactions at 200 requests/s for {args.seconds:.0f} s ...")
        offset, cpu_before = log_file.stat().st_size, workers_cpu_s(service)
        results["fixed_200"] = locust(url, node["token"], take(int(200 * args.seconds)), users=20, rate=10, batch=1,
                                      seconds=args.seconds, workdir=workdir, name="fixed_200")
        fixed = results["fixed_200"]
        fixed["workers_cpu_ms_per_request"] = ((workers_cpu_s(service) - cpu_before) * 1e3
                                               / max(fixed["requests"] + fixed["failures"], 1))
        fixed["served"] = served_ms(log_file, offset, "/v1/score")
        err.print(f"phase 2: single transactions, closed loop, {args.seconds:.0f} s ...")
        results["max_rate"] = locust(url, node["token"], take(int(1500 * args.seconds)), users=12, rate=0, batch=1,
                                     seconds=args.seconds, workdir=workdir, name="max_rate")
        used -= int(1500 * args.seconds) - results["max_rate"]["requests"] - results["max_rate"]["failures"]
        err.print(f"phase 3: batches of 1,000, closed loop, {args.seconds / 2:.0f} s ...")
        batch_rows = min(len(stream) - used, 40_000 * int(args.seconds / 2)) // 1000 * 1000
        results["batch_1000"] = locust(url, node["token"], take(batch_rows), users=3, rate=0, batch=1000,
                                       seconds=args.seconds / 2, workdir=workdir, name="batch_1000")
        results["batch_1000"]["tx_per_s"] = results["batch_1000"]["rps"] * 1000
    finally:
        service.terminate()
        service.wait(timeout=30)
        log.close()
    err.print("in-process inplace_predict on the same rows ...")
    results["in_process"] = in_process(node["booster"], node["X"])
    report(results, args.json, args.png)


def report(results: dict[str, Any], json_path: Path | None, png_path: Path | None) -> None:
    fixed, top, batch, local = results["fixed_200"], results["max_rate"], results["batch_1000"], results["in_process"]
    table = Table(title="scoring: gunicorn (2 workers) + locust on 127.0.0.1, 2 cores shared, vs in-process")
    for column in ("measure", "service", "in-process inplace_predict", "target"):
        table.add_column(column)
    table.add_row("single tx at 200 req/s: achieved req/s", f"{fixed['rps']:.0f}", "", "200")
    table.add_row("single tx at 200 req/s: p50 ms", f"{fixed['p50_ms']:.2f}", f"{local['p50_ms']:.3f}", "")
    table.add_row("single tx at 200 req/s: p99 ms", f"{fixed['p99_ms']:.2f}", f"{local['p99_ms']:.3f}", "< 10")
    served, floor = fixed["served"], results["floor_200"]
    table.add_row("  the service's own time (access log): p50 / p99 ms",
                  f"{served['p50_ms']:.2f} / {served['p99_ms']:.2f}", "", "")
    table.add_row("  processor ms a request: the 2 workers / locust",
                  f"{fixed['workers_cpu_ms_per_request']:.2f} / {fixed['locust_cpu_ms_per_request']:.2f}", "", "")
    table.add_row("the floor: GET /v1/health at 200 req/s, p50 / p99 ms",
                  f"{floor['p50_ms']:.2f} / {floor['p99_ms']:.2f}", "", "")
    table.add_row("  its own time (access log): p50 / p99 ms",
                  f"{floor['served']['p50_ms']:.2f} / {floor['served']['p99_ms']:.2f}", "", "")
    table.add_row("max sustained req/s (closed loop, 12 users)", f"{top['rps']:.0f}", "", "")
    table.add_row("  its p50 / p99 ms", f"{top['p50_ms']:.1f} / {top['p99_ms']:.1f}", "", "")
    table.add_row("batch 1,000: transactions/s", f"{batch['tx_per_s']:,.0f}", f"{local['batch_rows_per_s']:,.0f}",
                  "> 20,000")
    table.add_row("batch 1,000: p50 / p99 ms", f"{batch['p50_ms']:.0f} / {batch['p99_ms']:.0f}", "", "")
    table.add_row("one tx, exact reasons and probability: XGBoost / tables p50 ms", "",
                  f"{local['exact_reasons_xgboost_p50_ms']:.3f} / {local['exact_reasons_tables_p50_ms']:.3f} "
                  f"({local['exact_reasons_xgboost_p50_ms'] / local['exact_reasons_tables_p50_ms']:.1f}x)", "")
    table.add_row("  the tables: built in s, MiB", "", f"{local['tables_build_s']:.2f}, {local['tables_mib']:.1f}", "")
    table.add_row("failed requests (all phases)", str(fixed["failures"] + top["failures"] + batch["failures"]), "", "0")
    memory = results["memory"]
    table.add_row("recent transactions in memory a worker",
                  f"{memory['rows']:,} rows, {memory['mib']:.0f} MiB ({memory['bytes_per_row']:.0f} B/row)", "", "")
    Console(width=130).print(table)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2))
    if png_path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        names = ["service p50", "service p99", "floor p50", "floor p99", "in-process p50", "in-process p99"]
        values = [fixed["p50_ms"], fixed["p99_ms"], floor["p50_ms"], floor["p99_ms"], local["p50_ms"], local["p99_ms"]]
        left.bar(names, values, color=["tab:blue", "tab:blue", "tab:orange", "tab:orange", "tab:gray", "tab:gray"])
        left.axhline(10, color="tab:red", linestyle="--", label="p99 target")
        left.set_ylabel("ms per transaction")
        left.set_title("one transaction a request, 200 req/s")
        left.legend()
        left.tick_params(axis="x", rotation=20)
        right.bar(["service", "in-process"], [batch["tx_per_s"], local["batch_rows_per_s"]],
                  color=["tab:blue", "tab:gray"])
        right.axhline(20_000, color="tab:red", linestyle="--", label="target")
        right.set_yscale("log")
        right.set_ylabel("transactions / s")
        right.set_title("1,000 transactions a request")
        right.legend()
        fig.tight_layout()
        png_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png_path, dpi=120)


if __name__ == "__main__":
    main()
