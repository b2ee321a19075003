"""What differential privacy costs the promotion gate: how far the pooled AUC of noisy score
histograms lies from the exact one, and how often the noisy gate decides as the exact one would,
on the handbook protocol at several gate epsilons.

Five banks (``fedfraud simulate``'s split of customers) each score their own test week with two
models trained on the pooled training week (XGBoost: the candidate with ``--trees`` trees of depth
3, the current model with ``--baseline-trees`` trees of ``--baseline-depth`` 2) and build the gate's histograms as
a private run's agents do (``bank_node/federated/evaluation.py``: ``PRIVATE_BINS`` bins per class,
each bank's own Gaussian noise at the gate's epsilon for two models, negative sums read as 0). The
noise is drawn ``--draws`` times per epsilon; the exact metrics (scikit-learn on the pooled rows, and
the histogram's own at 4,096 and at ``PRIVATE_BINS`` bins) are beside them. The gate keeps the
current model when the candidate's AUC is lower by more than the tolerance (0.005); "agrees" is
the share of draws that decide as the exact histograms do.

Usage: python bench/dp_gate.py [--epsilons 0.5,1,2,4,8,16] [--draws 200] [--baseline-trees 10] [--baseline-depth 2]
                           [--json OUT] [--png OUT]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _outputs import write_outputs  # noqa: E402
from bank_node.data import load_transactions  # noqa: E402
from bank_node.federated.evaluation import (  # noqa: E402
    DEFAULT_BINS,
    PRIVATE_BINS,
    metrics_from_histograms,
    score_histogram,
)
from bank_node.federated.privacy import PrivateContribution  # noqa: E402
from fedfraud import simulation as sim  # noqa: E402
from schemas.privacy import ACCOUNTING, run_privacy  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "fraud-detection-handbook-simulated" / "transactions.parquet"
TOLERANCE = 0.005
err = Console(stderr=True)


def _fit(banks: list[sim.BankData], trees: int, depth: int) -> Any:
    import xgboost as xgb

    X = np.concatenate([bank.X_train for bank in banks])
    y = np.concatenate([bank.y_train for bank in banks])
    return xgb.train({"objective": "binary:logistic", "max_depth": depth, "eta": 0.1, "tree_method": "hist",
                      "nthread": 2, "seed": 0}, xgb.DMatrix(X, label=y), num_boost_round=trees)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    epsilons = [row["gate_epsilon"] for row in rows]
    fig, (error, agree) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("candidate", "candidate"), ("current", "current model")):
        error.errorbar(epsilons, [row[f"{key}_auc_bias"] for row in rows], yerr=[row[f"{key}_auc_sd"] for row in rows],
                       marker="o", capsize=3, label=label)
    error.axhline(0, color="grey", linewidth=0.8)
    error.set_xscale("log")
    error.set_xlabel("gate epsilon")
    error.set_ylabel(f"noisy AUC - exact AUC at {result['private_bins']} bins")
    error.legend()
    agree.plot(epsilons, [row["agrees"] for row in rows], marker="o")
    agree.set_xscale("log")
    agree.set_ylim(0, 1.05)
    agree.set_xlabel("gate epsilon")
    agree.set_ylabel("noisy gate decides as the exact one")
    fig.suptitle(f"private promotion gate: {result['banks']} banks, {result['frauds']} frauds in "
                 f"{result['test_rows']:,} test rows, {result['draws']} draws", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilons", default="0.5,1,2,4,8,16")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--baseline-trees", type=int, default=10)
    parser.add_argument("--baseline-depth", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()
    from sklearn.metrics import roc_auc_score

    err.print(f"loading {DATA} ...")
    frame = load_transactions(DATA, require_label=True).frame
    banks = sim.prepare_banks(frame, sim.SimulationConfig(), progress=lambda message: err.print(f"  {message}"))
    import xgboost as xgb

    models = {"candidate": _fit(banks, args.trees, 3), "current": _fit(banks, args.baseline_trees, args.baseline_depth)}
    scores = {name: [model.predict(xgb.DMatrix(bank.X_test)) for bank in banks] for name, model in models.items()}
    labels = [bank.test["label"].to_numpy(dtype=np.float64) for bank in banks]
    y = np.concatenate(labels)
    exact: dict[str, dict[str, float]] = {}
    for name in models:
        pooled = np.concatenate(scores[name])
        exact[name] = {"sklearn": float(roc_auc_score(y, pooled))}
        for bins in (DEFAULT_BINS, PRIVATE_BINS):
            histogram = sum(score_histogram(s, t, n_bins=bins) for s, t in zip(scores[name], labels, strict=True))
            exact[name][f"bins_{bins}"] = metrics_from_histograms(np.asarray(histogram)).auc
        err.print(f"{name}: AUC {exact[name]['sklearn']:.4f} (scikit-learn), {exact[name][f'bins_{DEFAULT_BINS}']:.4f} "
                  f"({DEFAULT_BINS} bins), {exact[name][f'bins_{PRIVATE_BINS}']:.4f} ({PRIVATE_BINS} bins)")
    own = [np.concatenate([score_histogram(scores[name][i], labels[i], n_bins=PRIVATE_BINS) for name in models])
           for i in range(len(banks))]
    exact_keeps = exact["candidate"][f"bins_{PRIVATE_BINS}"] < exact["current"][f"bins_{PRIVATE_BINS}"] - TOLERANCE
    width = 2 * PRIVATE_BINS

    rows = []
    for epsilon in [float(e) for e in args.epsilons.split(",") if e]:
        privacy = run_privacy("xgboost", {"dp_epsilon": 1.0, "gate_dp_epsilon": epsilon})
        assert privacy is not None
        found: dict[str, list[float]] = {name: [] for name in models}
        agrees = 0
        for draw in range(args.draws):
            total = sum(PrivateContribution(privacy, rng=np.random.default_rng([draw, i])).gate_noisy(vector, np.sqrt(2))
                        for i, vector in enumerate(own))
            aucs = [metrics_from_histograms(np.asarray(total)[k * width:(k + 1) * width]).auc for k in range(2)]
            for name, auc in zip(models, aucs, strict=True):
                found[name].append(auc - exact[name][f"bins_{PRIVATE_BINS}"])
            agrees += int((aucs[0] < aucs[1] - TOLERANCE) == exact_keeps)
        row: dict[str, Any] = {"gate_epsilon": epsilon, "gate_noise_multiplier": privacy.gate_multiplier,
                               "agrees": agrees / args.draws}
        for name in models:
            row[f"{name}_auc_bias"] = float(np.mean(found[name]))
            row[f"{name}_auc_sd"] = float(np.std(found[name]))
        difference = np.asarray(found["candidate"]) - np.asarray(found["current"])
        row["difference_sd"] = float(np.std(difference))
        rows.append(row)
        err.print(f"gate epsilon {epsilon:g}: candidate {row['candidate_auc_bias']:+.4f} +- {row['candidate_auc_sd']:.4f}, "
                  f"current {row['current_auc_bias']:+.4f} +- {row['current_auc_sd']:.4f}, agrees {row['agrees']:.0%}")

    table = Table(title=f"private gate, {PRIVATE_BINS} bins per class ({ACCOUNTING.split(';')[0]})")
    for column in ("gate epsilon", "candidate AUC error", "current AUC error", "sd of the difference", "agrees"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(f"{row['gate_epsilon']:g}", f"{row['candidate_auc_bias']:+.4f} ± {row['candidate_auc_sd']:.4f}",
                      f"{row['current_auc_bias']:+.4f} ± {row['current_auc_sd']:.4f}", f"{row['difference_sd']:.4f}",
                      f"{row['agrees']:.0%}")
    Console().print(table)
    result = {"banks": len(banks), "test_rows": int(y.size), "frauds": int(y.sum()), "draws": args.draws,
              "private_bins": PRIVATE_BINS, "tolerance": TOLERANCE, "exact": exact, "exact_keeps_current": bool(exact_keeps),
              "accounting": ACCOUNTING, "rows": rows}
    write_outputs(result, args.json, args.png, plot)


if __name__ == "__main__":
    main()
