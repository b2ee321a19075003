"""What differential privacy costs the federated models: AUC, AP and CP@100 on the handbook
protocol with consortium terminal features, at several epsilons per run and without DP.

The banks, their features and the consortium terminal statistics are prepared once (as
``fedfraud simulate --consortium-features`` does: 5 banks, training 7 days from 2018-07-25, 7 days'
delay, 7 test days); each setting then trains federated XGBoost and logistic regression through
secure sums in one process, every bank clipping its rows and adding its own Gaussian noise, and
is scored on the test week. Each epsilon is one run's, for all its training sums together
(Renyi DP accounting by dp-accounting). The noisy models are drawn with ``--repeats`` seeds of the
noise and their metrics averaged (the spread is reported).

The sums are taken under the ``plain`` scheme by default (``--scheme ckks`` for the real one):
the noise is the banks' own, before encryption, and CKKS's own error is eight orders of
magnitude below it.

The private variant of the terminal statistics (``--terminal-epsilons``: noisy day counts per
terminal instead of exact events, epsilon per day's release) is measured apart: the models are
trained without DP on its features, so the AP it costs is its own.

Usage: python bench/dp_utility.py [--epsilons 0.5,1,2,4,8,16,64] [--terminal-epsilons 1,4,16] [--repeats 3]
                                  [--json OUT] [--png OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _outputs import write_outputs  # noqa: E402

import crypto  # noqa: E402
from bank_node.data import load_transactions  # noqa: E402
from fedfraud import simulation as sim  # noqa: E402
from schemas.privacy import ACCOUNTING  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "fraud-detection-handbook-simulated" / "transactions.parquet"
#: The handbook protocol's training period ends here (7 days from 2018-07-25); longer periods start earlier.
TRAIN_END = np.datetime64("2018-08-01")
METRICS = (("auc", "AUC"), ("ap", "AP"), ("cp100", "CP@100"))
err = Console(stderr=True)


def _train(banks: list[sim.BankData], model: str, config: sim.SimulationConfig, secret: Any, public: Any,
           origin: Any, total_cards: int) -> dict[str, float]:
    fitted, _ = sim._federated(banks, model, config, secret, public)
    metrics = sim._metrics(banks, sim.ModelScores(sim._predict(fitted, banks)), origin, total_cards)
    return {key: float(metrics[key]) for key, _ in METRICS}


def _private_terminals(banks: list[sim.BankData], base: sim.SimulationConfig, models: tuple[str, ...],
                       args: argparse.Namespace, secret: Any, public: Any, origin: Any,
                       total_cards: int) -> list[dict[str, Any]]:
    """Each model without DP on the features of noisy day counts, at each terminal epsilon."""
    out = []
    for epsilon in [float(e) for e in args.terminal_epsilons.split(",") if e]:
        draws: dict[str, list[dict[str, float]]] = {model: [] for model in models}
        for repeat in range(args.repeats):
            config = dataclasses.replace(base, terminal_dp_epsilon=epsilon, seed=repeat)
            shared, _, _ = sim.with_consortium_features(banks, config, secret, public)
            for model in models:
                draws[model].append(_train(shared, model, config, secret, public, origin, total_cards))
        for model in models:
            mean = {k: float(np.mean([d[k] for d in draws[model]])) for k, _ in METRICS}
            sd = {k + "_sd": float(np.std([d[k] for d in draws[model]])) for k, _ in METRICS}
            out.append({"model": model, "terminal_epsilon": epsilon, **mean, **sd})
            err.print(f"{model}, terminal statistics at epsilon {epsilon:g}: "
                      + ", ".join(f"{label} {mean[k]:.4f}" for k, label in METRICS))
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(13, 4))
    for ax, (key, label) in zip(axes, METRICS, strict=True):
        for model, colour in (("xgboost", "tab:blue"), ("logreg", "tab:orange")):
            private = [r for r in result.get("private_terminal_statistics", []) if r["model"] == model]
            if private:
                ax.errorbar([r["terminal_epsilon"] for r in private], [r[key] for r in private],
                            yerr=[r[key + "_sd"] for r in private], marker="s", linestyle=":", color=colour,
                            label=f"{model}, noisy terminal counts only", capsize=3)
            rows = [r for r in result["rows"] if r["model"] == model and r["epsilon"] is not None]
            if rows:
                ax.errorbar([r["epsilon"] for r in rows], [r[key] for r in rows], yerr=[r[key + "_sd"] for r in rows],
                            marker="o", color=colour, label=f"{model}, DP", capsize=3)
            exact = next((r for r in result["rows"] if r["model"] == model and r["epsilon"] is None), None)
            if exact is not None:
                ax.axhline(exact[key], color=colour, linestyle="--", label=f"{model}, no DP")
            own = result.get("own_terminal_features", {}).get(model)
            if own is not None:
                ax.axhline(own[key], color=colour, linestyle=":", alpha=0.6, label=f"{model}, own terminal features")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("epsilon per run, or per day's terminal counts (delta 1e-5)")
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.suptitle("Federated models with differential privacy, handbook protocol, consortium features", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilons", default="0.5,1,2,4,8,16,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="xgboost,logreg")
    parser.add_argument("--scheme", default="plain", choices=["plain", "ckks"])
    parser.add_argument("--train-days", type=int, default=7, help="the handbook protocol's 7 by default")
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--max-depth", type=int, default=3)
    parser.add_argument("--dp-trees", type=int, default=20, help="trees under DP (fewer sums, less noise each)")
    parser.add_argument("--dp-eta", type=float, default=0.3, help="learning rate under DP")
    parser.add_argument("--bins", type=int, default=16, help="histogram bins under DP (without DP: 256)")
    parser.add_argument("--min-child-weight", type=float, default=1.0, help="under DP")
    parser.add_argument("--reg-lambda", type=float, default=1.0, help="under DP")
    parser.add_argument("--terminal-epsilons", default="",
                        help="also pool noisy day counts per terminal at these epsilons (models without DP)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()
    epsilons = [float(e) for e in args.epsilons.split(",") if e]
    models = tuple(args.models.split(","))

    err.print(f"loading {DATA} ...")
    frame = load_transactions(DATA, require_label=True).frame
    base = sim.SimulationConfig(scheme=args.scheme, models=models, consortium_features=True, n_trees=args.trees,
                                max_depth=args.max_depth, train_days=args.train_days,
                                train_start=str(TRAIN_END - np.timedelta64(args.train_days, "D")))
    err.print("features and consortium terminal statistics ...")
    banks = sim.prepare_banks(frame, base)
    secret = crypto.generate(args.scheme)
    public = crypto.load_context(secret.public_context(), require_public=True)
    shared, _, _ = sim.with_consortium_features(banks, base, secret, public)
    origin, total_cards = base.windows.train_start, sum(b.n_cards for b in shared)

    rows: list[dict[str, Any]] = []
    for model in models:
        started = time.perf_counter()
        exact = _train(shared, model, base, secret, public, origin, total_cards)
        rows.append({"model": model, "epsilon": None, **exact, **{k + "_sd": 0.0 for k, _ in METRICS},
                     "noise_multiplier": None, "releases": None, "seconds": time.perf_counter() - started})
        err.print(f"{model} without DP: " + ", ".join(f"{label} {exact[k]:.4f}" for k, label in METRICS))
        for epsilon in epsilons:
            draws = []
            started = time.perf_counter()
            for repeat in range(args.repeats):
                config = dataclasses.replace(base, dp_epsilon=epsilon, seed=repeat, n_bins=args.bins,
                                             n_trees=args.dp_trees, eta=args.dp_eta,
                                             min_child_weight=args.min_child_weight, reg_lambda=args.reg_lambda)
                draws.append(_train(shared, model, config, secret, public, origin, total_cards))
            setting = config.privacy(model)
            assert setting is not None
            mean = {k: float(np.mean([d[k] for d in draws])) for k, _ in METRICS}
            sd = {k + "_sd": float(np.std([d[k] for d in draws])) for k, _ in METRICS}
            rows.append({"model": model, "epsilon": epsilon, **mean, **sd, "noise_multiplier": setting.multiplier,
                         "releases": setting.releases, "seconds": (time.perf_counter() - started) / args.repeats})
            err.print(f"{model} epsilon {epsilon:g}: " + ", ".join(f"{label} {mean[k]:.4f}" for k, label in METRICS))

    terminal_rows = _private_terminals(banks, base, models, args, secret, public, origin, total_cards)
    # What a bank has without pooling at all: its own terminal features (the floor pooling must beat).
    own_features = {model: _train(banks, model, base, secret, public, origin, total_cards)
                    for model in models} if terminal_rows else {}

    smallest: dict[str, float | None] = {}
    for model in models:
        exact_ap = next(r for r in rows if r["model"] == model and r["epsilon"] is None)["ap"]
        within = [r["epsilon"] for r in rows if r["model"] == model and r["epsilon"] is not None
                  and r["ap"] >= exact_ap - 0.03]
        smallest[model] = min(within) if within else None
    result = {"accounting": ACCOUNTING, "scheme": args.scheme, "repeats": args.repeats, "train_days": args.train_days,
              "dp_settings": {"n_trees": args.dp_trees, "eta": args.dp_eta, "n_bins": args.bins,
                              "min_child_weight": args.min_child_weight,
                              "reg_lambda": args.reg_lambda, "clip": 1.0, "delta": 1e-5},
              "smallest_epsilon_within_0.03_ap": smallest, "rows": rows,
              "private_terminal_statistics": terminal_rows, "own_terminal_features": own_features}
    table = Table(title=f"federated models with DP per run ({ACCOUNTING.split(';')[0]}), handbook protocol, "
                        "consortium features")
    for column in ("model", "epsilon", "noise x", "AUC", "AP", "CP@100"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        table.add_row(r["model"], "none" if r["epsilon"] is None else f"{r['epsilon']:g}",
                      "-" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:.1f}",
                      *(f"{r[k]:.4f}" + ("" if r["epsilon"] is None else f" ±{r[k + '_sd']:.3f}") for k, _ in METRICS))
    Console().print(table)
    if terminal_rows:
        table = Table(title="private terminal statistics (noisy day counts per terminal), models without DP")
        for column in ("model", "terminal epsilon", "AUC", "AP", "CP@100", "AP cost"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for model, own in own_features.items():
            table.add_row(model, "own features only", *(f"{own[k]:.4f}" for k, _ in METRICS), "")
        for r in terminal_rows:
            exact_ap = next(x for x in rows if x["model"] == r["model"] and x["epsilon"] is None)["ap"]
            table.add_row(r["model"], f"{r['terminal_epsilon']:g}",
                          *(f"{r[k]:.4f} ±{r[k + '_sd']:.3f}" for k, _ in METRICS), f"{exact_ap - r['ap']:+.4f}")
        Console().print(table)
    for model, best in smallest.items():
        print(f"{model}: smallest epsilon with AP within 0.03 of the non-private model: "
              f"{'none of those tried' if best is None else f'{best:g}'}")
    write_outputs(result, args.json, args.png, plot)


if __name__ == "__main__":
    main()
