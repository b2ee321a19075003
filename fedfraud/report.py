"""What people compare after a simulation: a table on the terminal and curves and bars in a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedfraud.simulation import SimulationResult

SETTINGS = ("local", "federated", "centralized")


def _local_mean(result: SimulationResult, model: str) -> dict[str, float]:
    """Local-only models, averaged over banks (each bank's own model on its own test rows)."""
    per_bank = result.local[model]
    return {m: float(np.mean([v[m] for v in per_bank.values()])) for m in ("auc", "ap", "cp100")}


def summary_rows(result: SimulationResult) -> list[tuple[str, str, float, float, float]]:
    """(model, setting, auc, ap, cp100) rows; local is the mean over banks."""
    rows = []
    for model in result.federated:
        for setting in SETTINGS:
            metrics = _local_mean(result, model) if setting == "local" else getattr(result, setting)[model]
            rows.append((model, setting, metrics["auc"], metrics["ap"], metrics["cp100"]))
    return rows


def print_summary(result: SimulationResult) -> None:
    """A readable comparison of local-only, federated and centralized, with time and bytes."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Test-set metrics (handbook protocol; local = mean of the banks' own models)")
    for column in ("model", "trained", "AUC ROC", "AP", "CP@100"):
        table.add_column(column, justify="left" if column in ("model", "trained") else "right")
    for model, setting, auc, ap, cp in summary_rows(result):
        table.add_row(model, setting, f"{auc:.4f}", f"{ap:.4f}", f"{cp:.4f}")
    console.print(table)

    banks = Table(title="Average precision per bank (each on its own test transactions)")
    banks.add_column("bank")
    for model in result.federated:
        for setting in SETTINGS:
            banks.add_column(f"{model} {setting}", justify="right")
    for bank in result.local[next(iter(result.local))]:
        cells = []
        for model in result.federated:
            cells.append(f"{result.local[model][bank]['ap']:.3f}")
            cells.append(f"{result.federated[model]['per_bank'][bank]['ap']:.3f}")
            cells.append(f"{result.centralized[model]['per_bank'][bank]['ap']:.3f}")
        banks.add_row(bank, *cells)
    console.print(banks)

    cost = Table(title=f"Cost of federated training ({result.config['scheme']})")
    for column in ("model", "rounds", "total s", "encrypt s", "aggregate s", "decrypt s", "MB up per bank"):
        cost.add_column(column, justify="right")
    for model, timing in result.timing.items():
        uploaded = result.bytes["uploaded_per_bank"][model]
        cost.add_row(
            model,
            str(timing["rounds"]),
            f"{timing['total_s']:.2f}",
            f"{timing['encrypt_s']:.2f}",
            f"{timing['aggregate_s']:.2f}",
            f"{timing['decrypt_s']:.2f}",
            f"{max(uploaded.values()) / 1e6:.2f}",
        )
    console.print(cost)


def plot_report(result: SimulationResult, out_dir: Path) -> Path:
    """ROC and precision-recall curves per model and setting, and per-bank AP bars, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    models = list(result.federated)
    fig, axes = plt.subplots(len(models), 3, figsize=(16, 4.8 * len(models)), squeeze=False)
    bank_names = list(result.test_sets)
    labels = np.concatenate([result.test_sets[b]["label"].to_numpy() for b in bank_names])
    for row, model in enumerate(models):
        roc_ax, pr_ax, bar_ax = axes[row]
        for setting in SETTINGS:
            scores = np.concatenate([result.scores[model][setting].per_bank[b] for b in bank_names])
            fpr, tpr, _ = roc_curve(labels, scores)
            precision, recall, _ = precision_recall_curve(labels, scores)
            metrics: dict[str, Any] = (
                _local_mean(result, model) if setting == "local" else getattr(result, setting)[model]
            )
            roc_ax.plot(fpr, tpr, label=f"{setting} (AUC {metrics['auc']:.3f})")
            pr_ax.plot(recall, precision, label=f"{setting} (AP {metrics['ap']:.3f})")
        roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        roc_ax.set(title=f"{model}: ROC", xlabel="false positive rate", ylabel="true positive rate")
        pr_ax.set(title=f"{model}: precision-recall", xlabel="recall", ylabel="precision")
        roc_ax.legend(loc="lower right")
        pr_ax.legend(loc="upper right")
        x = np.arange(len(bank_names))
        width = 0.27
        for i, setting in enumerate(SETTINGS):
            if setting == "local":
                values = [result.local[model][b]["ap"] for b in bank_names]
            else:
                values = [getattr(result, setting)[model]["per_bank"][b]["ap"] for b in bank_names]
            bar_ax.bar(x + (i - 1) * width, values, width, label=setting)
        bar_ax.set_xticks(x, bank_names)
        bar_ax.set(title=f"{model}: average precision per bank", ylabel="AP on the bank's own test set")
        bar_ax.legend()
    fig.suptitle(f"fedfraud simulation: {len(bank_names)} banks, scheme {result.config['scheme']}")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "simulation.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
