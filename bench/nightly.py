"""One nightly run at handbook scale over HTTP, phase by phase, against the same night in one process.

The night: 5 banks (the simulator's card shares), CKKS, 100 trees of depth 3, consortium terminal
features with one new day to pool and one whose labels became known (the night before pooled the
rest), then the promotion gate's
evaluation against the current model. Over HTTP it is the real thing: the aggregator under gunicorn as in
production (``ops/gunicorn.conf.py``, one worker on SQLite; ``--gunicorn-workers 0`` for
werkzeug's development server), one ``fedfraud bank agent`` process per bank training from its node's store (filled with
``fedfraud bank ingest``). In one process it is the same algorithms in lockstep (masks, CKKS
encryption and the aggregator's sums included, one thread).

Phases over HTTP are read from the run's rounds (opened and closed times): before the first
round (agents load their rows and features), terminal statistics, training, evaluation, and
from the last round to the published model. The ratio is the whole run's wall time over the
in-process time of the same work. Both models must agree.

It also prints the processor time the night took: in one process, and over HTTP the aggregator's
and the agents' (where the gap goes: the aggregator is one process that every round waits on).

Usage: make bench-nightly, or python bench/nightly.py [--banks 5] [--trees 100] [--depth 3] [--as-of 2018-08-08]
                               [--gunicorn-workers 1] [--json OUT] [--png OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _outputs import write_outputs  # noqa: E402

import crypto  # noqa: E402
from bank_node.agent.state import StateDir  # noqa: E402
from bank_node.agent.training import TrainingSet, training_rows  # noqa: E402
from bank_node.data import load_transactions  # noqa: E402
from bank_node.federated.evaluation import federated_evaluation  # noqa: E402
from bank_node.federated.feature_scales import scales_for  # noqa: E402
from bank_node.federated.gbdt import federated_gbdt  # noqa: E402
from bank_node.federated.lockstep import run_lockstep  # noqa: E402
from bank_node.federated.params import GBDTParams  # noqa: E402
from bank_node.federated.terminal_stats import (  # noqa: E402
    TerminalStatsConfig,
    consortium_history,
    events_by_day,
    nightly_pooling,
)
from bank_node.federated.xgb_export import from_xgboost_json  # noqa: E402
from bank_node.features import MODEL_INPUTS  # noqa: E402
from bank_node.terminal_history import pooling_scope, terminal_key  # noqa: E402
from consortium.secure_sum import SecureSum  # noqa: E402
from fedfraud.localnet import LocalConsortium, wait_for  # noqa: E402
from fedfraud.simulation import SimulationConfig, partition_customers  # noqa: E402
from schemas.round_key import algorithm_key  # noqa: E402
from schemas.run import RunWindow  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "fraud-detection-handbook-simulated" / "transactions.parquet"
PHASES = ("before the first round", "terminal statistics", "training", "evaluation", "to the published model")
err = Console(stderr=True)


def window_json(window: RunWindow) -> dict[str, Any]:
    return window.to_json()


def in_process(frames: dict[str, pd.DataFrame], window: RunWindow, params: dict[str, Any],
               threshold: int) -> tuple[dict[str, float], float, Any, dict[str, TrainingSet]]:
    """The night in one process: seconds per phase, the processor seconds of the timed phases, the
    model, and each bank's validation rows."""
    banks = sorted(frames)
    secret = crypto.generate("ckks")

    def aggregator() -> SecureSum:
        return SecureSum(context=crypto.load_context(secret.public_context(), require_public=True))

    contexts = {b: secret for b in banks}
    seconds: dict[str, float] = {}
    key = terminal_key(secret.secret_context())
    scope = pooling_scope(window.train_start, window.labels_known_until, window.as_of)
    config = TerminalStatsConfig(threshold=threshold)
    tonight = {scope.days[-1], scope.labels_until - 1}  # the new day, and the one whose labels became known

    t0, cpu0 = time.perf_counter(), time.process_time()
    own = {b: training_rows(frames[b], train_start=window.train_start, train_days=window.train_days) for b in banks}
    validation = {b: training_rows(frames[b], train_start=window.validation_start, train_days=window.validation_days)
                  for b in banks}
    events = {b: events_by_day(frames[b], key, scope.days) for b in banks}
    seconds["before the first round"] = time.perf_counter() - t0
    cpu = time.process_time() - cpu0

    err.print("in-process: the nights before (pooling the whole period, not timed) ...")
    history = run_lockstep({b: consortium_history(events[b], secret=key, config=config, keep_below_threshold=True)
                            for b in banks}, contexts=contexts, aggregator=aggregator()).results[banks[0]]
    err.print("in-process: tonight ...")
    t0, cpu0 = time.perf_counter(), time.process_time()
    run_lockstep({b: nightly_pooling(events[b], stale=tonight, party_index=i, n_participants=len(banks),
                                     secret=key, config=config) for i, b in enumerate(banks)},
                 contexts=contexts, aggregator=aggregator())
    rows = {b: own[b].with_consortium_terminals(history, secret=key) for b in banks}
    checked = {b: validation[b].with_consortium_terminals(history, secret=key) for b in banks}
    seconds["terminal statistics"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    gbdt = GBDTParams(**params)
    model = run_lockstep({b: federated_gbdt(rows[b].X, rows[b].y, params=gbdt, scales=scales_for(MODEL_INPUTS),
                                            party_index=i) for i, b in enumerate(banks)},
                         contexts=contexts, aggregator=aggregator()).results[banks[0]]
    seconds["training"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run_lockstep({b: federated_evaluation([model.predict_proba, model.predict_proba], checked[b].X, checked[b].y)
                  for b in banks}, contexts=contexts, aggregator=aggregator())
    seconds["evaluation"] = time.perf_counter() - t0
    seconds["to the published model"] = 0.0
    return seconds, cpu + time.process_time() - cpu0, model, checked


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def http_phases(run: dict[str, Any], published_at: str) -> dict[str, float]:
    """Seconds per phase of a finished run, from its rounds' opened and closed times."""
    rounds = [r for r in run["rounds"] if r["state"] == "released"]

    def span(prefix: str) -> tuple[datetime, datetime] | None:
        mine = [r for r in rounds if algorithm_key(r["round_key"]).startswith(prefix)]
        if not mine:
            return None
        return min(_moment(r["opened_at"]) for r in mine), max(_moment(r["closed_at"]) for r in mine)

    spans = {"terminal statistics": span("terminals/"), "training": span("gbdt/"), "evaluation": span("eval/")}
    first = min(s[0] for s in spans.values() if s)
    last = max(s[1] for s in spans.values() if s)
    out = {"before the first round": (first - _moment(run["created_at"])).total_seconds()}
    previous_end = first
    for name in ("terminal statistics", "training", "evaluation"):
        found = spans[name]
        if found is None:
            out[name] = 0.0
            continue
        out[name] = (found[1] - previous_end).total_seconds()  # from the previous phase's last sum
        previous_end = found[1]
    out["to the published model"] = (_moment(published_at) - last).total_seconds()
    return out


def processor_seconds(pid: int) -> float:
    """User and system processor seconds of a process and its children (gunicorn's workers)."""
    process = psutil.Process(pid)
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def over_http(frames: dict[str, pd.DataFrame], window: RunWindow, params: dict[str, Any], root: Path, *,
              database_url: str | None = None,
              gunicorn_workers: int = 0) -> tuple[dict[str, float], float, bytes, dict[str, Any], dict[str, Any], float]:
    """The night over HTTP: seconds per phase, wall seconds, the model file and its metadata, each
    agent's account of the rounds, and the aggregator's processor seconds over the night."""
    banks = sorted(frames)
    consortium = LocalConsortium(root=root / "consortium")
    if database_url is not None:
        consortium.env["FEDFRAUD_DATABASE_URL"] = database_url
    agents = []
    try:
        err.print("HTTP: aggregator, enrolment, roster, key ceremony ...")
        consortium.initialise(banks)
        consortium.start(gunicorn_workers=gunicorn_workers)
        consortium.set_up_banks(banks, scheme="ckks")
        for bank in banks:
            path = root / f"{bank}.parquet"
            frames[bank].rename(columns={"transaction_id": "TRANSACTION_ID", "timestamp": "TX_DATETIME",
                                         "customer_id": "CUSTOMER_ID", "terminal_id": "TERMINAL_ID",
                                         "amount": "TX_AMOUNT", "label": "TX_FRAUD"}).to_parquet(path, index=False)
            consortium.cli("bank", "ingest", str(path), "--state-dir", str(consortium.state_dir(bank)),
                           "--retention-days", "3650")
        agents = [consortium.start_store_agent(b, poll_interval_s=0.5) for b in banks]
        err.print("HTTP: the night before (pools the whole period; not timed) ...")
        before = RunWindow(as_of=window.as_of - timedelta(days=1), train_days=window.train_days,
                           validation_days=window.validation_days, label_delay_days=window.label_delay_days)
        small = {"n_trees": 1, "max_depth": 1, "consortium_features": True}
        first = consortium.open_run("xgboost", small, window=window_json(before))
        wait_for(lambda: consortium.run(first, rounds=False)["state"] != "open" or None, 3600, "the night before",
                 interval=1)
        if consortium.run(first)["state"] != "completed":
            raise SystemExit(f"the night before failed: {consortium.run(first)}\n{consortium.agent_logs()}")
        err.print("HTTP: tonight ...")
        assert consortium.process is not None
        t0, aggregator_cpu0 = time.perf_counter(), processor_seconds(consortium.process.pid)
        run_id = consortium.open_run("xgboost", {**params, "consortium_features": True}, window=window_json(window))
        last_report = [0.0]

        def finished() -> dict[str, Any] | None:
            # Without its rounds: the view of a run of hundreds of rounds, polled twice a second,
            # took a few per cent of the aggregator's time late in the run.
            view = consortium.run(run_id, rounds=False)
            if time.perf_counter() - last_report[0] > 30:
                last_report[0] = time.perf_counter()
                err.print(f"  {view['progress']}")
            return view if view["state"] != "open" else None

        wait_for(finished, 4 * 3600, f"run {run_id}", interval=0.5)
        wall = time.perf_counter() - t0
        aggregator_cpu = processor_seconds(consortium.process.pid) - aggregator_cpu0
        run = consortium.run(run_id)  # the rounds' times give the phases
        if run["state"] != "completed":
            raise SystemExit(f"tonight's run ended {run['state']}: {run.get('failure_reason')}\n{consortium.agent_logs()}")
        model = consortium.api("GET", f"/v1/models/{run['model_version']}").json()
        body = consortium.api("GET", f"/v1/models/{run['model_version']}/download").content
        # Each agent's own account of the rounds: its work, and its waiting for the others.
        records = {bank: StateDir(consortium.state_dir(bank)).run_record(run_id) or {} for bank in banks}
        spent = {bank: None if "seconds_in_rounds" not in record else
                 {**record["seconds_in_rounds"], "cpu": record.get("cpu_seconds")} for bank, record in records.items()}
        return http_phases(run, model["created_at"]), wall, body, model, spent, aggregator_cpu
    finally:
        consortium.stop(*agents)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(PHASES))
    ax.bar(x - 0.2, [result["inprocess_s"][p] for p in PHASES], 0.4, label="in one process")
    ax.bar(x + 0.2, [result["http_s"][p] for p in PHASES], 0.4, label="over HTTP (real processes)")
    ax.set_xticks(x, [p.replace(" ", "\n", 1) for p in PHASES], fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title(f"One nightly run, {result['banks']} banks, {result['trees']} trees: HTTP / in-process "
                 f"{result['ratio']:.2f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--banks", type=int, default=5)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--as-of", type=date.fromisoformat, default=date(2018, 8, 8))
    parser.add_argument("--threshold", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the processes' files and logs here.")
    parser.add_argument("--database-url", default=None,
                        help="The aggregator's database (an empty one); default: SQLite in the work folder.")
    parser.add_argument("--gunicorn-workers", type=int, default=1,
                        help="Serve the aggregator as in production, with ops/gunicorn.conf.py and this many "
                             "workers (more than 1 needs --database-url postgresql://...); "
                             "0: werkzeug's development server (`fedfraud consortium serve`).")
    args = parser.parse_args()
    params = {"n_trees": args.trees, "max_depth": args.depth, "eta": 0.1, "n_bins": 256, "seed": 0}
    window = RunWindow(as_of=args.as_of, train_days=7, validation_days=7, label_delay_days=7)

    err.print(f"loading {DATA} ...")
    frame = load_transactions(DATA, require_label=True).frame
    scope = pooling_scope(window.train_start, window.labels_known_until, window.as_of)
    first_day = pd.Timestamp(date(1970, 1, 1) + timedelta(days=scope.first - 1))
    frame = frame[((frame["timestamp"] >= first_day) & (frame["timestamp"] < pd.Timestamp(args.as_of))).to_numpy()]
    owner = partition_customers(frame["customer_id"], SimulationConfig(n_banks=args.banks).shares, seed=0)
    banks = [f"bank-{i + 1}" for i in range(args.banks)]
    frames = {b: frame[owner == i].reset_index(drop=True) for i, b in enumerate(banks)}

    inprocess_s, inprocess_cpu, reference, validation = in_process(frames, window, params, args.threshold)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        http_s, wall, body, model, spent, aggregator_cpu = over_http(frames, window, params, args.workdir,
                                                     database_url=args.database_url,
                                                     gunicorn_workers=args.gunicorn_workers)
    else:
        with tempfile.TemporaryDirectory(prefix="fedfraud-nightly-") as tmp:
            http_s, wall, body, model, spent, aggregator_cpu = over_http(frames, window, params, Path(tmp),
                                                         database_url=args.database_url,
                                                         gunicorn_workers=args.gunicorn_workers)

    published = from_xgboost_json(json.loads(body))
    X = np.vstack([validation[b].X for b in banks])
    diff = float(np.max(np.abs(published.predict_proba(X) - reference.predict_proba(X))))
    total_inprocess = sum(inprocess_s.values())
    result = {
        "banks": args.banks, "trees": args.trees, "depth": args.depth, "scheme": "ckks", "as_of": str(args.as_of),
        "rows": int(sum(len(f) for f in frames.values())), "inprocess_s": inprocess_s, "http_s": http_s,
        "server": (f"gunicorn, {args.gunicorn_workers} workers" if args.gunicorn_workers else "fedfraud consortium serve"),
        "database": "PostgreSQL" if (args.database_url or "").startswith("postgresql") else "SQLite",
        "inprocess_total_s": total_inprocess, "http_wall_s": wall, "ratio": wall / total_inprocess,
        "phase_ratio": {p: (http_s[p] / inprocess_s[p] if inprocess_s[p] else None) for p in PHASES},
        "max_prediction_diff": diff, "assessment": model.get("assessment"), "agents_in_rounds_s": spent,
        "processor_s": {"in_process": inprocess_cpu, "aggregator": aggregator_cpu,
                        "agents": sum((a or {}).get("cpu") or 0.0 for a in spent.values())},
    }
    table = Table(title=f"one nightly run: {args.banks} banks, CKKS, {args.trees} trees of depth {args.depth}, "
                        "consortium features (one new day)")
    table.add_column("phase")
    table.add_column("in one process (s)", justify="right")
    table.add_column("over HTTP (s)", justify="right")
    for phase in PHASES:
        table.add_row(phase, f"{inprocess_s[phase]:.1f}", f"{http_s[phase]:.1f}")
    table.add_row("total", f"{total_inprocess:.1f}", f"{wall:.1f}")
    Console().print(table)
    print(f"HTTP / in-process: {result['ratio']:.2f}; largest prediction difference between the models: {diff:.1e}")
    accounts = [a for a in spent.values() if a]
    if accounts:
        own = np.mean([a["compute"] + a["encrypt"] + a["decrypt"] for a in accounts])
        print(f"an agent in the rounds (mean of {len(accounts)}): {own:.1f} s of its own work, "
              f"{np.mean([a['wait'] for a in accounts]):.1f} s waiting for the others and the consortium; "
              f"processor time over its whole run {np.mean([a['cpu'] or 0.0 for a in accounts]):.1f} s")
    used = result["processor_s"]
    cores = psutil.cpu_count() or 1
    print(f"processor time tonight: in one process {used['in_process']:.1f} s; over HTTP the aggregator "
          f"{used['aggregator']:.1f} s and the agents {used['agents']:.1f} s together, "
          f"{(used['aggregator'] + used['agents']) / (wall * cores):.0%} of this machine's {cores} cores over the night")
    write_outputs(result, args.json, args.png, plot)


if __name__ == "__main__":
    main()
