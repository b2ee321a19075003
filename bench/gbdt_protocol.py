"""Cost of federated GBDT training, per tree: bank compute vs HE, sequential vs parallel banks.

All banks' ``federated_gbdt`` generators run in lockstep in ONE thread, so every second is
attributed exactly. Each round:

1. every bank's generator computes and yields its request       -> "compute" (outside HE)
2. every bank masks its vector (fixed point, pairwise and self masks) -> "mask"
   and encrypts it                                               -> "encrypt"
3. a public-only ``SecureSum`` checks and sums the payloads      -> "aggregate"
4. every bank decrypts the released sum                          -> "decrypt"
   and removes the revealed self masks                           -> "mask"
5. the sum is sent back into every generator (step 1 of the next round).

Reported per scheme:

- sequential seconds per tree: the whole single-thread run / trees;
- parallel-banks seconds per tree: sum over rounds of (max over banks of that bank's compute +
  encrypt + decrypt) + aggregate: the wall time of a deployment with one machine per bank;
- inside-HE (encrypt + aggregate + decrypt) vs outside-HE (everything else) time, and the share
  of the whole run spent masking and unmasking;
- bytes uploaded per bank and bytes per histogram value, split into the scheme's bytes per slot
  and ciphertext padding (slots left empty in the last ciphertext of each payload);
- that the CKKS model's trees equal the plain model's (features, bins, thresholds; leaf values
  within 1e-6) and that predictions agree within 1e-4.

Scheme names: ``ckks`` (library default, N=4096), ``ckks8192`` (N=8192, primes (60, 60)), ``plain``,
``paillier``. Usage::

    python bench/gbdt_protocol.py [--trees 100] [--depth 6] [--bins 256] [--banks 5]
                                  [--schemes ckks,plain] [--json OUT] [--profile OUT.prof]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import crypto
from bank_node.federated.ensemble import GBDTModel
from bank_node.federated.feature_scales import scales_for
from bank_node.federated.gbdt import federated_gbdt
from bank_node.federated.lockstep import run_lockstep
from bank_node.federated.params import GBDTParams
from bank_node.features import MODEL_INPUTS
from consortium.secure_sum import SecureSum

DATA = Path("/work/shared/data/fraud-detection-handbook-simulated/transactions.parquet")

TARGET_S_PER_TREE = 1.0
TARGET_OUTSIDE_OVER_INSIDE = 0.5
TARGET_BYTES_PER_VALUE = 32.0
LEAF_TOLERANCE = 1e-6
PREDICTION_TOLERANCE = 1e-4

SCHEME_SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "ckks": ("ckks", {}),
    "ckks8192": ("ckks", {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": (60, 60)}),
    "plain": ("plain", {}),
    "paillier": ("paillier", {}),
}

err = Console(stderr=True)


@dataclass
class SchemeResult:
    """Everything measured for one scheme."""

    scheme: str
    parameters: dict[str, Any]
    trees: int
    rounds: int = 0
    wall_s: float = 0.0
    compute_s: float = 0.0
    encrypt_s: float = 0.0
    aggregate_s: float = 0.0
    decrypt_s: float = 0.0
    mask_s: float = 0.0
    parallel_s: float = 0.0
    compute_per_bank_s: list[float] = field(default_factory=list)
    uploaded_bytes_per_bank: list[int] = field(default_factory=list)
    values_per_bank: int = 0
    ciphertexts_per_bank: int = 0
    slot_count: int = 0

    @property
    def inside_s(self) -> float:
        return self.encrypt_s + self.aggregate_s + self.decrypt_s

    @property
    def outside_s(self) -> float:
        return self.wall_s - self.inside_s

    def summary(self) -> dict[str, float]:
        uploaded = self.uploaded_bytes_per_bank[0] if self.uploaded_bytes_per_bank else 0
        slots_sent = self.ciphertexts_per_bank * self.slot_count
        return {
            "s_per_tree_sequential": self.wall_s / self.trees,
            "s_per_tree_parallel_banks": self.parallel_s / self.trees,
            "inside_he_s": self.inside_s,
            "outside_he_s": self.outside_s,
            "outside_over_inside": self.outside_s / self.inside_s if self.inside_s else math.inf,
            "mask_s": self.mask_s,
            "mask_share": self.mask_s / self.wall_s if self.wall_s else 0.0,
            "uploaded_bytes_per_bank": float(uploaded),
            "bytes_per_value": uploaded / self.values_per_bank if self.values_per_bank else 0.0,
            "bytes_per_slot": uploaded / slots_sent if slots_sent else 0.0,
            "slot_fill": self.values_per_bank / slots_sent if slots_sent else 0.0,
        }


def load_banks(n_banks: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The handbook's training week split over ``n_banks`` banks (features computed per bank)."""
    from bank_node.data import load_transactions
    from fedfraud.simulation import SimulationConfig, prepare_banks

    tx = load_transactions(DATA, require_label=True).frame
    banks = prepare_banks(tx, SimulationConfig(n_banks=n_banks))
    return [(b.X_train, b.y_train) for b in banks]


def train_scheme(
    name: str,
    banks: Sequence[tuple[np.ndarray, np.ndarray]],
    params: GBDTParams,
    progress: Progress,
    profiler: cProfile.Profile | None = None,
) -> tuple[SchemeResult, list[GBDTModel]]:
    """Train once with the shared lockstep driver; return its costs and every bank's model."""
    scheme_name, options = SCHEME_SETTINGS[name]
    secret = crypto.generate(scheme_name, **options)
    public = crypto.load_context(secret.public_context(), require_public=True)
    aggregator = SecureSum(context=public, min_banks=min(3, len(banks)))
    names = [f"bank-{i + 1}" for i in range(len(banks))]
    scales = scales_for(MODEL_INPUTS)
    task = progress.add_task(name, total=params.n_trees)
    algorithms = {
        bank: federated_gbdt(X, y, params=params, scales=scales, party_index=i)
        for i, (bank, (X, y)) in enumerate(zip(names, banks, strict=True))
    }

    def on_round(key: str) -> None:
        if key.endswith("/level-0"):
            progress.advance(task)

    if profiler is not None:
        profiler.enable()
    try:
        run = run_lockstep(algorithms, contexts=dict.fromkeys(names, secret), aggregator=aggregator, on_round=on_round)
    finally:
        if profiler is not None:
            profiler.disable()
    costs = run.costs
    progress.update(task, completed=params.n_trees)
    result = SchemeResult(
        scheme=name,
        parameters=dict(secret.parameters),
        trees=params.n_trees,
        rounds=costs.rounds,
        wall_s=costs.wall_s,
        compute_s=costs.outside_he_s,
        encrypt_s=sum(costs.encrypt_s.values()),
        aggregate_s=costs.aggregate_s,
        decrypt_s=sum(costs.decrypt_s.values()),
        mask_s=sum(costs.mask_s.values()),
        parallel_s=costs.parallel_s,
        compute_per_bank_s=[costs.compute_s[b] for b in names],
        uploaded_bytes_per_bank=[costs.uploaded_bytes[b] for b in names],
        values_per_bank=costs.values_sent[names[0]],
        ciphertexts_per_bank=costs.ciphertext_slots[names[0]] // max(1, int(secret.slot_count)),
        slot_count=int(secret.slot_count),
    )
    return result, [run.results[b] for b in names]


def compare_models(a: GBDTModel, b: GBDTModel, X: np.ndarray) -> dict[str, Any]:
    """Structure equality, largest leaf-value and prediction differences of two models."""
    same_structure = len(a.trees) == len(b.trees)
    leaf_diff = 0.0
    first_difference = None
    for t, (ta, tb) in enumerate(zip(a.trees, b.trees, strict=False)):
        equal = (
            ta.n_nodes == tb.n_nodes
            and np.array_equal(ta.left, tb.left)
            and np.array_equal(ta.right, tb.right)
            and np.array_equal(ta.feature, tb.feature)
            and np.array_equal(ta.split_bin, tb.split_bin)
            and np.array_equal(ta.threshold, tb.threshold)
        )
        if not equal:
            same_structure = False
            first_difference = t if first_difference is None else first_difference
            continue
        leaf_diff = max(leaf_diff, float(np.max(np.abs(ta.value.astype(np.float64) - tb.value))))
    pred_diff = float(np.max(np.abs(a.predict_proba(X).astype(np.float64) - b.predict_proba(X))))
    return {
        "same_structure": same_structure,
        "first_different_tree": first_difference,
        "max_leaf_diff": leaf_diff,
        "max_prediction_diff": pred_diff,
        "trees_equal": same_structure and leaf_diff <= LEAF_TOLERANCE,
        "predictions_equal": pred_diff <= PREDICTION_TOLERANCE,
    }


def ok(flag: bool) -> str:
    return "[green]OK[/]" if flag else "[red]MISS[/]"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--bins", type=int, default=256)
    parser.add_argument("--banks", type=int, default=5)
    parser.add_argument("--schemes", default="ckks,plain", help=f"comma-separated, of {','.join(SCHEME_SETTINGS)}")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--profile", type=Path, help="cProfile the bank compute (generators only) into this file")
    args = parser.parse_args(argv)
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    unknown = [s for s in schemes if s not in SCHEME_SETTINGS]
    if unknown:
        parser.error(f"unknown schemes {unknown}; choose from {list(SCHEME_SETTINGS)}")
    params = GBDTParams(n_trees=args.trees, max_depth=args.depth, eta=0.1, n_bins=args.bins)

    err.print(f"loading the handbook data for {args.banks} banks ...")
    t0 = time.perf_counter()
    banks = load_banks(args.banks)
    err.print(f"  {sum(len(y) for _, y in banks):,} training rows in {time.perf_counter() - t0:.1f} s")
    X_all = np.concatenate([X for X, _ in banks])

    profiler = cProfile.Profile() if args.profile else None
    results: dict[str, SchemeResult] = {}
    models: dict[str, GBDTModel] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as progress:
        for name in schemes:
            res, bank_models = train_scheme(name, banks, params, progress, profiler)
            results[name] = res
            models[name] = bank_models[0]
            for other in bank_models[1:]:
                check = compare_models(bank_models[0], other, X_all[:1000])
                if not (check["same_structure"] and check["max_leaf_diff"] == 0.0):
                    err.print(f"[red]{name}: banks ended with different models[/]")
    if profiler is not None:
        profiler.dump_stats(str(args.profile))

    out = Console(width=200)
    out.print(
        f"{args.banks} banks, {args.trees} trees, depth {args.depth}, {args.bins} bins; "
        f"{sum(len(y) for _, y in banks):,} rows; {platform.processor() or platform.machine()}"
    )
    table = Table(title="federated GBDT, lockstep driver (one thread)")
    for column in (
        "scheme", "rounds", "s/tree seq", "s/tree par", "compute s", "encrypt s", "aggregate s",
        "decrypt s", "mask s", "outside/inside", "MB up/bank", "B/value", "B/slot", "slot fill",
    ):
        table.add_column(column, justify="right")
    for name, res in results.items():
        s = res.summary()
        table.add_row(
            name,
            str(res.rounds),
            f"{s['s_per_tree_sequential']:.3f}",
            f"{s['s_per_tree_parallel_banks']:.3f}",
            f"{res.compute_s:.2f}",
            f"{res.encrypt_s:.2f}",
            f"{res.aggregate_s:.2f}",
            f"{res.decrypt_s:.2f}",
            f"{res.mask_s:.2f} ({s['mask_share']:.0%})",
            f"{s['outside_over_inside']:.2f}",
            f"{s['uploaded_bytes_per_bank'] / 1e6:.2f}",
            f"{s['bytes_per_value']:.1f}",
            f"{s['bytes_per_slot']:.1f}",
            f"{s['slot_fill']:.1%}",
        )
    out.print(table)

    comparisons: dict[str, Any] = {}
    if "plain" in results:
        for name in results:
            if name == "plain":
                continue
            ratio = results[name].wall_s / results["plain"].wall_s
            comparisons[name] = compare_models(models[name], models["plain"], X_all)
            comparisons[name]["time_ratio_vs_plain"] = ratio
            comparisons[name]["parallel_time_ratio_vs_plain"] = results[name].parallel_s / results["plain"].parallel_s
            c = comparisons[name]
            out.print(
                f"{name}/plain: time x{ratio:.2f} sequential, x{c['parallel_time_ratio_vs_plain']:.2f} "
                f"parallel-banks; trees equal {ok(c['trees_equal'])} (structure {c['same_structure']}, "
                f"max leaf diff {c['max_leaf_diff']:.1e}); predictions within 1e-4 {ok(c['predictions_equal'])} "
                f"(max diff {c['max_prediction_diff']:.1e})"
            )

    out.print(
        f"targets: <= {TARGET_S_PER_TREE:g} s/tree for {args.banks} banks; outside-HE <= "
        f"{TARGET_OUTSIDE_OVER_INSIDE:g} x inside-HE; <= {TARGET_BYTES_PER_VALUE:g} B/value"
    )
    for name, res in results.items():
        if name == "plain":
            continue
        s = res.summary()
        out.print(
            f"  {name}: s/tree seq {s['s_per_tree_sequential']:.3f} {ok(s['s_per_tree_sequential'] <= TARGET_S_PER_TREE)}, "
            f"par {s['s_per_tree_parallel_banks']:.3f} {ok(s['s_per_tree_parallel_banks'] <= TARGET_S_PER_TREE)}; "
            f"outside/inside {s['outside_over_inside']:.2f} {ok(s['outside_over_inside'] <= TARGET_OUTSIDE_OVER_INSIDE)}; "
            f"B/value {s['bytes_per_value']:.1f} {ok(s['bytes_per_value'] <= TARGET_BYTES_PER_VALUE)} "
            f"(= {s['bytes_per_slot']:.1f} B/slot / {s['slot_fill']:.1%} slot fill)"
        )

    if args.json:
        payload = {
            "config": {"trees": args.trees, "depth": args.depth, "bins": args.bins, "banks": args.banks},
            "machine": platform.platform(),
            "results": {name: {**asdict(res), **res.summary()} for name, res in results.items()},
            "comparisons": comparisons,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
