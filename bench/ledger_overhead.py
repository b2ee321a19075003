"""A training run's wall time with the contribution ledger on and off.

Real processes on 127.0.0.1: an aggregator and one ``fedfraud bank agent`` per bank (CKKS,
XGBoost on handbook transactions). With the ledger on, every contribution, release and run event
is a signed entry written in its state change's transaction, each contribution's answer carries a
receipt the agent checks and keeps, and each agent checks a consistency proof at every poll. Off,
the aggregator runs through ``bench/ledger_off.py`` (no entries, no receipts, no ledger endpoints)
and the agents take part ``--without-ledger``. Only the run is timed, from its opening to its
published model; set-up (enrolment, roster, key ceremony, agents started and polling) is not.

Runs alternate on, off, off, on, ... so that drift of this shared machine weighs on both alike;
the ratio is the sum of the "on" times over the sum of the "off" times.

Usage: python bench/ledger_overhead.py [--banks 3] [--trees 20] [--depth 3] [--pairs 2] [--json OUT] [--png OUT]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _outputs import write_outputs  # noqa: E402

from bank_node.data import load_transactions  # noqa: E402
from fedfraud.localnet import FEDFRAUD, LocalConsortium, wait_for  # noqa: E402
from fedfraud.simulation import SimulationConfig, partition_customers  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "fraud-detection-handbook-simulated" / "transactions.parquet"
LEDGER_OFF = (sys.executable, str(REPO / "bench" / "ledger_off.py"))
err = Console(stderr=True)


def one_run(files: dict[str, Path], root: Path, *, ledger_on: bool, params: dict[str, Any],
            train_start: date, train_days: int) -> tuple[float, int, int]:
    """Seconds from opening the run to its published model; the run's rounds; the log's size."""
    banks = sorted(files)
    launcher = FEDFRAUD if ledger_on else LEDGER_OFF
    consortium = LocalConsortium(root=root)
    agents: list[subprocess.Popen[bytes]] = []
    try:
        consortium.initialise(banks)
        consortium.start(launcher=launcher)
        consortium.set_up_banks(banks, scheme="ckks")
        for bank in banks:
            log = (root / f"{bank}-agent.log").open("ab")
            agents.append(subprocess.Popen(
                [*launcher, "bank", "--retry-timeout", "120", "agent", "--state-dir", str(consortium.state_dir(bank)),
                 "--data", str(files[bank]), "--train-start", train_start.isoformat(), "--train-days", str(train_days),
                 "--poll-interval", "0.5", *(() if ledger_on else ("--without-ledger",))],
                env=consortium.env, stdout=log, stderr=log))
        wait_for(lambda: all("polling" in (root / f"{b}-agent.log").read_text() for b in banks), 120,
                 "the agents' first poll", interval=0.2)
        time.sleep(1.0)  # each agent's first look at the (empty) run list is behind it
        run_id = consortium.open_run("xgboost", params, train_start=train_start.isoformat(), train_days=train_days)
        # Looked at every 2 s only (a run's view is not free for the aggregator); the time is the
        # run's own, from its opening to its end, as the aggregator recorded them.
        def ended() -> dict[str, Any] | None:
            view = consortium.run(run_id)  # an error answer (busy database) is read again later
            return view if view.get("state") not in (None, "open") else None

        run = wait_for(ended, 3600, f"run {run_id}", interval=2.0)
        seconds = (datetime.fromisoformat(run["finished_at"]) - datetime.fromisoformat(run["created_at"])).total_seconds()
        if run["state"] != "completed":
            raise SystemExit(f"the run ended {run['state']}: {run.get('failure_reason')}\n{consortium.agent_logs()}")
        entries = 0
        if ledger_on:
            entries = int(consortium.api("GET", "/v1/ledger/checkpoint").json()["size"])
        else:
            assert consortium.api("GET", "/v1/ledger/checkpoint").status_code == 404
        return seconds, len(run["rounds"]), entries
    finally:
        consortium.stop(*agents)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    runs = result["runs"]
    colours = ["tab:blue" if r["ledger"] == "on" else "tab:grey" for r in runs]
    ax.bar(range(len(runs)), [r["seconds"] for r in runs], color=colours)
    ax.set_xticks(range(len(runs)), [f"{i + 1}\n{r['ledger']}" for i, r in enumerate(runs)])
    ax.set_ylabel("seconds, opening to published model")
    ax.set_title(f"Training run with the ledger on / off: x{result['ratio']:.3f} "
                 f"({result['banks']} banks, {result['trees']} trees, CKKS)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--banks", type=int, default=3)
    parser.add_argument("--trees", type=int, default=20)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=2, help="runs each way")
    parser.add_argument("--train-start", type=date.fromisoformat, default=date(2018, 7, 1))
    parser.add_argument("--train-days", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()

    err.print(f"loading {DATA} ...")
    frame = load_transactions(DATA, require_label=True).frame
    start = pd.Timestamp(args.train_start)
    frame = frame[((frame["timestamp"] >= start)
                   & (frame["timestamp"] < start + pd.Timedelta(days=args.train_days))).to_numpy()]
    owner = partition_customers(frame["customer_id"], SimulationConfig(n_banks=args.banks).shares, seed=0)
    banks = [f"bank-{i + 1}" for i in range(args.banks)]
    params = {"n_trees": args.trees, "max_depth": args.depth, "eta": 0.3, "n_bins": 64, "seed": 0}
    order = [i % 4 in (0, 3) for i in range(2 * args.pairs)]  # on, off, off, on, ...
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fedfraud-ledger-overhead-") as tmp:
        files = {}
        for i, bank in enumerate(banks):
            files[bank] = Path(tmp) / f"{bank}.parquet"
            frame[owner == i].to_parquet(files[bank], index=False)
        for n, ledger_on in enumerate(order):
            err.print(f"run {n + 1} of {len(order)}: ledger {'on' if ledger_on else 'off'} ...")
            seconds, rounds, entries = one_run(files, Path(tmp) / f"run-{n}", ledger_on=ledger_on, params=params,
                                               train_start=args.train_start, train_days=args.train_days)
            runs.append({"ledger": "on" if ledger_on else "off", "seconds": seconds, "rounds": rounds,
                         "log_entries": entries})
            err.print(f"  {seconds:.1f} s, {rounds} rounds" + (f", {entries} ledger entries" if ledger_on else ""))
    on = sum(r["seconds"] for r in runs if r["ledger"] == "on")
    off = sum(r["seconds"] for r in runs if r["ledger"] == "off")
    result = {"banks": args.banks, "trees": args.trees, "depth": args.depth, "scheme": "ckks",
              "rows": len(frame), "runs": runs, "on_s": on, "off_s": off, "ratio": on / off}
    table = Table(title=f"a training run with the ledger on and off ({args.banks} banks, CKKS, "
                        f"{args.trees} trees of depth {args.depth}, {len(frame):,} rows)")
    for column in ("run", "ledger", "seconds", "rounds", "ledger entries"):
        table.add_column(column, justify="right")
    for n, r in enumerate(runs):
        table.add_row(str(n + 1), r["ledger"], f"{r['seconds']:.1f}", str(r["rounds"]), str(r["log_entries"] or "-"))
    Console().print(table)
    print(f"ledger on / off: {on:.1f} s / {off:.1f} s = x{result['ratio']:.3f}")
    write_outputs(result, args.json, args.png, plot)


if __name__ == "__main__":
    main()
