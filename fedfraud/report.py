"""What people compare after a simulation: a table on the terminal and curves and bars in a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedfraud.simulation import SimulationResult

SETTINGS = ("local", "federated", "centralized")
#: With consortium terminal features: the same settings on shared features, and the full-data bound.
CONSORTIUM_SETTINGS = ("local_consortium", "federated_consortium", "centralized_full_data")
LABELS = {
    "local": "local",
    "federated": "federated",
    "centralized": "centralized",
    "local_consortium": "local + consortium terminals",
    "federated_consortium": "federated + consortium terminals",
    "centralized_full_data": "centralized, full-data features",
}


def settings_of(result: SimulationResult) -> tuple[str, ...]:
    """The settings a result holds, in display order."""
    return SETTINGS + CONSORTIUM_SETTINGS if result.consortium else SETTINGS


def _results(result: SimulationResult, model: str, setting: str) -> dict[str, Any]:
    """Where a setting's metrics live: per bank for local settings, pooled with ``per_bank`` otherwise."""
    if setting in CONSORTIUM_SETTINGS:
        section = result.consortium[setting.removesuffix("_consortium")]
    else:
        section = getattr(result, setting)
    return dict(section[model])


def _is_local(setting: str) -> bool:
    return setting.startswith("local")


def metrics_of(result: SimulationResult, model: str, setting: str) -> dict[str, Any]:
    """Pooled test metrics of one setting (local ones: the mean over banks)."""
    found = _results(result, model, setting)
    if _is_local(setting):
        return {m: float(np.mean([v[m] for v in found.values()])) for m in ("auc", "ap", "cp100")}
    return found


def per_bank_ap(result: SimulationResult, model: str, setting: str, bank: str) -> float:
    """One bank's AP on its own test rows in one setting."""
    found = _results(result, model, setting)
    return float((found if _is_local(setting) else found["per_bank"])[bank]["ap"])


def summary_rows(result: SimulationResult) -> list[tuple[str, str, float, float, float]]:
    """(model, setting, auc, ap, cp100) rows; local is the mean over banks."""
    rows = []
    for model in result.federated:
        for setting in settings_of(result):
            metrics = metrics_of(result, model, setting)
            rows.append((model, LABELS[setting], metrics["auc"], metrics["ap"], metrics["cp100"]))
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
    bank_names = list(result.local[next(iter(result.local))])
    for column in ("model", "trained", *bank_names):
        banks.add_column(column, justify="left" if column in ("model", "trained") else "right")
    for model in result.federated:
        for setting in settings_of(result):
            banks.add_row(model, LABELS[setting],
                          *(f"{per_bank_ap(result, model, setting, bank):.3f}" for bank in bank_names))
    console.print(banks)

    if result.privacy:
        spent = Table(title="Differential privacy of the federated trainings (each bank clips and adds its own noise)")
        for column in ("model", "trained on", "epsilon", "delta", "noise multiplier", "releases"):
            spent.add_column(column, justify="left" if column in ("model", "trained on") else "right")
        for run in result.privacy["runs"]:
            spent.add_row(run["model"], run["training"], f"{run['epsilon']:g}", f"{run['delta']:g}",
                          f"{run['noise_multiplier']:.2f}", str(run["releases"]))
        console.print(spent)
        console.print(f"Each bank's transactions spent epsilon {result.privacy['per_bank_epsilon']:.3g} at delta "
                      f"{result.privacy['delta']:g} over these trainings together (Renyi DP composition, "
                      f"dp-accounting); not covered: {result.privacy['not_covered']}.")

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
    if result.consortium:
        stats = result.consortium["terminal_stats"]
        uploaded = stats["uploaded_per_bank_per_day_bytes"]
        cost.add_row(
            "terminal stats",
            str(stats["rounds"]),
            f"{stats['total_s']:.2f}",
            "", "", "",
            f"{max(uploaded.values()) * stats['days'] / 1e6:.2f}",
        )
    console.print(cost)
    if result.consortium:
        stats = result.consortium["terminal_stats"]
        same = stats["equal_to_full_data"]
        noisy = result.config.get("terminal_dp_epsilon")
        pooled = (f"{stats['consortium_events']:,} events" if noisy is None
                  else f"noisy day counts at epsilon {noisy:g} (a bank's own counts exact)")
        console.print(
            f"consortium terminal features: {stats['days']} days, {pooled}; "
            f"{stats['rows_covered']:,} of {stats['rows']:,} rows on terminals seen by >= {stats['threshold']} banks; "
            f"against full-data features: {same['count_mismatches']} count mismatches, "
            f"max risk difference {same['max_abs_risk_difference']:.2g}"
        )


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
        settings = settings_of(result)
        for setting in settings:
            scores = np.concatenate([result.scores[model][setting].per_bank[b] for b in bank_names])
            fpr, tpr, _ = roc_curve(labels, scores)
            precision, recall, _ = precision_recall_curve(labels, scores)
            metrics = metrics_of(result, model, setting)
            style = "--" if setting in CONSORTIUM_SETTINGS else "-"
            roc_ax.plot(fpr, tpr, style, label=f"{LABELS[setting]} (AUC {metrics['auc']:.3f})")
            pr_ax.plot(recall, precision, style, label=f"{LABELS[setting]} (AP {metrics['ap']:.3f})")
        roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        roc_ax.set(title=f"{model}: ROC", xlabel="false positive rate", ylabel="true positive rate")
        pr_ax.set(title=f"{model}: precision-recall", xlabel="recall", ylabel="precision")
        roc_ax.legend(loc="lower right", fontsize="small")
        pr_ax.legend(loc="upper right", fontsize="small")
        x = np.arange(len(bank_names))
        width = 0.8 / len(settings)
        for i, setting in enumerate(settings):
            values = [per_bank_ap(result, model, setting, b) for b in bank_names]
            bar_ax.bar(x + (i - (len(settings) - 1) / 2) * width, values, width, label=LABELS[setting])
        bar_ax.set_xticks(x, bank_names)
        bar_ax.set(title=f"{model}: average precision per bank", ylabel="AP on the bank's own test set")
        bar_ax.legend(fontsize="x-small", ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.suptitle(f"fedfraud simulation: {len(bank_names)} banks, scheme {result.config['scheme']}")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "simulation.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
