"""The same federated training over HTTP (real processes on 127.0.0.1) and in one process.

Runs federated XGBoost for the handbook's training week with N banks twice: through an
aggregator process and one ``fedfraud bank agent`` process per bank, and through the in-process
lockstep driver. Prints both wall times, their ratio, and checks the two models agree.
The in-process time counts training only; the HTTP time counts from opening the run to the
published model (each agent also loads its data and computes its features, timed separately).

Usage: python bench/http_vs_inprocess.py [--banks 3] [--trees 20] [--depth 3] [--scheme ckks]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import crypto  # noqa: E402
from bank_node.data import load_transactions  # noqa: E402
from bank_node.federated.feature_scales import scales_for  # noqa: E402
from bank_node.federated.gbdt import federated_gbdt  # noqa: E402
from bank_node.federated.lockstep import run_lockstep  # noqa: E402
from bank_node.federated.params import GBDTParams  # noqa: E402
from bank_node.federated.xgb_export import from_xgboost_json  # noqa: E402
from bank_node.features import MODEL_INPUTS  # noqa: E402
from consortium.secure_sum import SecureSum  # noqa: E402
from fedfraud.localnet import LocalConsortium  # noqa: E402
from fedfraud.simulation import SimulationConfig, partition_customers, prepare_banks  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "fraud-detection-handbook-simulated" / "transactions.parquet"
TRAIN_START = "2018-07-25"
err = Console(stderr=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--banks", type=int, default=3)
    parser.add_argument("--trees", type=int, default=20)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--scheme", default="ckks", choices=["ckks", "plain"])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the processes' files and logs here.")
    args = parser.parse_args()
    params = {"n_trees": args.trees, "max_depth": args.depth, "eta": 0.1, "n_bins": 256, "seed": 0}
    banks = [f"bank-{i + 1}" for i in range(args.banks)]
    config = SimulationConfig(n_banks=args.banks, train_start=TRAIN_START)

    err.print(f"loading {DATA} ...")
    frame = load_transactions(DATA, require_label=True).frame
    raw = pd.read_parquet(DATA)
    owner = partition_customers(raw["CUSTOMER_ID"], config.shares, seed=config.seed)
    start = pd.Timestamp(TRAIN_START)
    keep = ((raw["TX_DATETIME"] >= start - pd.Timedelta(days=38)) & (raw["TX_DATETIME"] < start + pd.Timedelta(days=7)))
    keep = keep.to_numpy()

    err.print("in-process run ...")
    prepared = prepare_banks(frame, config)
    secret = crypto.generate(args.scheme)
    aggregator = SecureSum(context=crypto.load_context(secret.public_context(), require_public=True))
    t0 = time.perf_counter()
    local = run_lockstep(
        {b.name: federated_gbdt(b.X_train, b.y_train, params=GBDTParams(**params), scales=scales_for(MODEL_INPUTS),
                                party_index=i) for i, b in enumerate(prepared)},
        contexts={b.name: secret for b in prepared}, aggregator=aggregator,
    )
    inprocess_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="fedfraud-bench-") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        files = {}
        for i, bank in enumerate(banks):
            files[bank] = root / f"{bank}.parquet"
            raw[keep & (owner == i)].to_parquet(files[bank], index=False)
        consortium = LocalConsortium(root=root / "consortium")
        try:
            err.print("HTTP run: aggregator, enrolment, key ceremony ...")
            consortium.initialise(banks)
            consortium.start()
            consortium.set_up_banks(banks, scheme=args.scheme)
            t0 = time.perf_counter()
            run_id = consortium.open_run("xgboost", params, train_start=TRAIN_START)
            agents = [consortium.start_agent(b, files[b], train_start=TRAIN_START) for b in banks]
            for agent in agents:
                if agent.wait(timeout=3600) != 0:
                    raise SystemExit(f"an agent failed:\n{consortium.agent_logs()}")
            published = consortium.published_model(run_id)
            http_s = time.perf_counter() - t0
            rounds = consortium.released_rounds(run_id)
            # Each agent records the seconds from its first round to its model (its training).
            training_s = max(
                float(json.loads((consortium.state_dir(b) / "runs.json").read_text())[run_id]["seconds"])
                for b in banks
            )
        finally:
            consortium.stop()

    model = from_xgboost_json(json.loads(published))
    X = np.vstack([b.X_train for b in prepared])
    diff = float(np.max(np.abs(model.predict_proba(X) - local.results["bank-1"].predict_proba(X))))
    result = {
        "banks": args.banks, "trees": args.trees, "depth": args.depth, "scheme": args.scheme, "rounds": rounds,
        "inprocess_s": inprocess_s, "http_s": http_s, "http_over_inprocess": http_s / inprocess_s,
        "http_training_s": training_s, "http_training_over_inprocess": training_s / inprocess_s,
        "max_prediction_diff": diff,
    }
    print(f"{args.banks} banks, {args.trees} trees of depth {args.depth}, {args.scheme}, {rounds} rounds")
    print(f"in-process (lockstep, one thread): {inprocess_s:8.2f} s")
    print(f"HTTP (aggregator + {args.banks} agent processes): {http_s:8.2f} s  (includes each agent loading its"
          " data and computing its features)")
    print(f"  of which training (first round to model, slowest agent): {training_s:8.2f} s")
    print(f"ratio HTTP / in-process: {http_s / inprocess_s:.2f} end to end, "
          f"{training_s / inprocess_s:.2f} for the training itself")
    print(f"largest prediction difference between the two models: {diff:.2e}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
