"""What a curious bank learns about another bank from what it legitimately receives, without
differential privacy and at epsilon 1 and 4 per run.

The consortium: 5 banks on the handbook's training week (2018-07-25, 7 days), federated XGBoost
through secure sums in one process (plain scheme: the sums a bank decrypts are the same under
CKKS). The attacker is bank-1; the target is bank-4. The attacker keeps every sum it is sent
and the final model, as its node does, and plays three attacks:

(a) Differencing two nightly runs whose participants differ by the target (the target withdrew
    one night): the bins round of each run is the sum of the banks' transaction counts over the
    consortium's fine grid, so the difference is the target's own per-feature distribution.
    Measure: mean total-variation distance over the 15 features between that reconstruction
    (negative cells set to 0) and the truth (0: exact), beside the attacker's best guess without
    the attack (its own distribution).
(b) The target's frauds, per feature, from the same two runs' first-tree histograms: at the root
    every row has the same margin, so a bin's gradient sum is ``n/2 - frauds`` and its Hessian
    ``n/4``; on the features whose cuts are the same in both runs the difference gives the
    target's fraud count per bin. Measure: share of the target's frauds placed in their exact bin
    (summed over those features, 1: every fraud located), beside the guess from the attacker's own
    frauds' spread.
(c) Membership inference on the final model (loss threshold, Yeom et al. 2018): the target trains
    on a random half of its week; the attacker ranks the target's rows by the model's loss on them.
    Measure: AUC of telling the members from the other half (0.5: nothing learnt), on every row
    and on the frauds.

Usage: python bench/leakage.py [--epsilons 1,4] [--repeats 3] [--json OUT] [--png OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import crypto  # noqa: E402
from bank_node.data import load_transactions  # noqa: E402
from bank_node.features import MODEL_INPUTS  # noqa: E402
from bank_node.federated.binning import bin_index, fine_grid, local_grid_counts  # noqa: E402
from bank_node.federated.feature_scales import scales_for  # noqa: E402
from bank_node.federated.gbdt import federated_gbdt  # noqa: E402
from bank_node.federated.lockstep import run_lockstep  # noqa: E402
from bank_node.federated.privacy import PrivateContribution  # noqa: E402
from bank_node.federated.rounds import Algorithm, SumRequest  # noqa: E402
from consortium.secure_sum import SecureSum  # noqa: E402
from fedfraud import simulation as sim  # noqa: E402
from bank_node.federated.params import GBDTParams  # noqa: E402
from schemas.privacy import ACCOUNTING, run_privacy  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "fraud-detection-handbook-simulated" / "transactions.parquet"
ATTACKER, TARGET = "bank-1", "bank-4"
ROOT_KEY = "gbdt/tree-0/level-0"
err = Console(stderr=True)


def recorded(algorithm: Algorithm[Any], seen: dict[str, tuple[np.ndarray, np.ndarray]]) -> Generator[
        SumRequest, Any, Any]:
    """The algorithm, with every request it sends and every sum it receives kept in ``seen``."""
    try:
        request = next(algorithm)
        while True:
            summed = yield request
            seen[request.key] = (np.asarray(request.vector), np.asarray(summed))
            request = algorithm.send(summed)
    except StopIteration as stop:
        return stop.value


def federated_run(banks: dict[str, tuple[np.ndarray, np.ndarray]], params: dict[str, Any], seed: int,
                  secret: Any) -> tuple[Any, dict[str, tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    """One run among ``banks``: the model, what the attacker saw, and the run's cuts."""
    setting = run_privacy("xgboost", params)
    gbdt = GBDTParams(**{k: v for k, v in params.items() if not k.startswith("dp_")})
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    algorithms = {}
    for i, (name, (X, y)) in enumerate(sorted(banks.items())):
        privacy = None if setting is None else PrivateContribution(
            setting, n_parties=len(banks), rng=np.random.default_rng([seed, i]))
        algorithm = federated_gbdt(X, y, params=gbdt, scales=scales_for(MODEL_INPUTS), party_index=i, privacy=privacy)
        algorithms[name] = recorded(algorithm, seen) if name == ATTACKER else algorithm
    public = crypto.load_context(secret.public_context(), require_public=True)
    run = run_lockstep(algorithms, contexts={b: secret for b in banks}, aggregator=SecureSum(context=public))
    model = run.results[ATTACKER]
    return model, seen, list(model.cuts)


def total_variation(estimate: np.ndarray, truth: np.ndarray) -> float:
    estimate = np.maximum(estimate, 0.0)
    if estimate.sum() <= 0:
        return 1.0
    return float(0.5 * np.abs(estimate / estimate.sum() - truth / truth.sum()).sum())


def attack(banks: dict[str, tuple[np.ndarray, np.ndarray]], target_rows: tuple[np.ndarray, np.ndarray],
           target_others: tuple[np.ndarray, np.ndarray], params: dict[str, Any], seed: int,
           secret: Any) -> dict[str, float]:
    with_target = {**banks, TARGET: target_rows}
    model, seen_with, cuts_with = federated_run(with_target, params, seed, secret)
    _, seen_without, cuts_without = federated_run(banks, params, seed + 1000, secret)
    X, y = target_rows
    grid = fine_grid(scales_for(MODEL_INPUTS))

    # (a) the bins rounds' difference: the target's counts over the fine grid
    difference = seen_with["gbdt/bins"][1] - seen_without["gbdt/bins"][1]
    truth = local_grid_counts(X, grid)
    own = local_grid_counts(banks[ATTACKER][0], grid)  # the attacker's guess without the attack: its own
    tv, prior = [], []
    for j in range(X.shape[1]):
        actual = grid.feature_counts(truth, j)
        tv.append(total_variation(grid.feature_counts(difference, j), actual))
        prior.append(total_variation(grid.feature_counts(own, j), actual))
    # (b) the root histograms' difference on features with the same cuts: the target's frauds per bin
    located, guessed, frauds, features_used = 0.0, 0.0, 0.0, 0
    own_X, own_y = banks[ATTACKER]
    hist_with, hist_without = seen_with[ROOT_KEY][1], seen_without[ROOT_KEY][1]
    offset_with = offset_without = 0
    for j in range(X.shape[1]):
        n_with, n_without = len(cuts_with[j]) + 1, len(cuts_without[j]) + 1
        if n_with == n_without and np.array_equal(cuts_with[j], cuts_without[j]):
            g = hist_with[offset_with:offset_with + 2 * n_with:2] - hist_without[offset_without:offset_without + 2 * n_without:2]
            h = hist_with[offset_with + 1:offset_with + 2 * n_with:2] - hist_without[offset_without + 1:offset_without + 2 * n_without:2]
            estimate = np.maximum(np.rint(0.5 * 4.0 * h - g), 0.0)  # frauds = n/2 - G with n = 4H
            bins = bin_index(X[:, [j]], [cuts_with[j]])[:, 0]
            actual = np.bincount(bins[y == 1], minlength=n_with).astype(np.float64)
            located += float(np.minimum(estimate, actual).sum())
            own_bins = bin_index(own_X[own_y == 1][:, [j]], [cuts_with[j]])[:, 0]
            own_frauds = np.bincount(own_bins, minlength=n_with).astype(np.float64)
            guess = own_frauds / max(own_frauds.sum(), 1.0) * actual.sum()  # its own frauds' spread, rescaled
            guessed += float(np.minimum(guess, actual).sum())
            frauds += float(actual.sum())
            features_used += 1
        offset_with += 2 * n_with
        offset_without += 2 * n_without
    # (c) membership inference by the loss on the target's rows
    members, others = target_rows, target_others
    def losses(rows: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        p = np.clip(model.predict_proba(rows[0]), 1e-12, 1 - 1e-12)
        return -(rows[1] * np.log(p) + (1 - rows[1]) * np.log(1 - p))
    loss_in, loss_out = losses(members), losses(others)
    label = np.r_[np.ones(len(loss_in)), np.zeros(len(loss_out))]
    score = -np.r_[loss_in, loss_out]
    fraud = np.r_[members[1], others[1]] == 1
    return {
        "a_total_variation": float(np.mean(tv)), "a_prior_total_variation": float(np.mean(prior)),
        "b_features_with_equal_cuts": features_used,
        "b_frauds_located": located / frauds if frauds else float("nan"),
        "b_prior_frauds_located": guessed / frauds if frauds else float("nan"),
        "c_membership_auc": float(roc_auc_score(label, score)),
        "c_membership_auc_frauds": float(roc_auc_score(label[fraud], score[fraud])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilons", default="1,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trees", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()
    params = {"n_trees": args.trees, "max_depth": 3, "eta": 0.3, "n_bins": 16, "seed": 0}

    err.print(f"loading {DATA} and the five banks' features ...")
    frame = load_transactions(DATA, require_label=True).frame
    prepared = sim.prepare_banks(frame, sim.SimulationConfig(models=("xgboost",)))
    banks = {b.name: (b.X_train, b.y_train) for b in prepared if b.name != TARGET}
    target = next(b for b in prepared if b.name == TARGET)
    half = np.random.default_rng(0).permutation(len(target.y_train)) % 2 == 0
    target_rows = (target.X_train[half], target.y_train[half])
    target_others = (target.X_train[~half], target.y_train[~half])
    secret = crypto.generate("plain")

    settings: list[float | None] = [None, *(float(e) for e in args.epsilons.split(","))]
    rows = []
    for epsilon in settings:
        run_params = params if epsilon is None else {**params, "dp_epsilon": epsilon}
        draws = [attack(banks, target_rows, target_others, run_params, seed, secret) for seed in range(args.repeats)]
        row: dict[str, Any] = {"epsilon": epsilon}
        for key in draws[0]:
            row[key] = float(np.mean([d[key] for d in draws]))
            row[key + "_sd"] = float(np.std([d[key] for d in draws]))
        rows.append(row)
        err.print(f"epsilon {epsilon}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                     if k != "epsilon" and not k.endswith("_sd")))
    table = Table(title=f"what {ATTACKER} learns about {TARGET} (federated XGBoost, {args.trees} trees, "
                        f"{len(target.y_train):,} target rows, {int(target.y_train.sum())} frauds)")
    for column in ("epsilon per run", "(a) TV distance (own data: prior)", "(b) frauds located (prior)",
                   "(c) membership AUC", "(c) on frauds"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row("no DP" if r["epsilon"] is None else f"{r['epsilon']:g}",
                      f"{r['a_total_variation']:.3f} ({r['a_prior_total_variation']:.3f})",
                      f"{r['b_frauds_located']:.3f} ({r['b_prior_frauds_located']:.3f}; "
                      f"{r['b_features_with_equal_cuts']:.0f} features)",
                      f"{r['c_membership_auc']:.3f}", f"{r['c_membership_auc_frauds']:.3f}")
    Console().print(table)
    result = {"attacker": ATTACKER, "target": TARGET, "params": params, "accounting": ACCOUNTING,
              "target_rows": int(len(target.y_train)), "target_frauds": int(target.y_train.sum()), "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = ["no DP" if r["epsilon"] is None else f"eps {r['epsilon']:g}" for r in rows]
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        for ax, key, title in zip(axes, ("a_total_variation", "b_frauds_located", "c_membership_auc"),
                                  ("(a) TV distance to the target's distribution", "(b) target's frauds located",
                                   "(c) membership AUC (0.5: none)"), strict=True):
            ax.bar(labels, [r[key] for r in rows], yerr=[r[key + "_sd"] for r in rows], color="tab:red")
            prior = {"a_total_variation": "a_prior_total_variation", "b_frauds_located": "b_prior_frauds_located",
                     "c_membership_auc": None}[key]
            reference = np.mean([r[prior] for r in rows]) if prior else 0.5
            ax.axhline(reference, color="grey", linestyle="--",
                       label="guess from its own data" if prior else "chance")
            ax.legend(fontsize=7)
            ax.set_title(title, fontsize=9)
            ax.set_ylim(0, 1)
        fig.suptitle(f"What {ATTACKER} learns about {TARGET}, from the sums and the model", fontsize=10)
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)


if __name__ == "__main__":
    main()
