"""Figures and tables for the Snakemake HTML report."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def training_curves(metrics_csv, out_png) -> None:
    h = pd.read_csv(metrics_csv)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(h.epoch, h.train_loss, label="train")
    a.plot(h.epoch, h.val_loss, label="val")
    a.set(xlabel="epoch", ylabel="loss", title="Loss")
    b.plot(h.epoch, h.train_top1, label="train")
    b.plot(h.epoch, h.val_top1, label="val")
    b.set(xlabel="epoch", ylabel="top-1", ylim=(0, 1), title="Top-1")
    for ax in (a, b):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def _rows(metrics: dict) -> pd.DataFrame:
    entries = {"SVIP": metrics["model"]["overall"], **metrics["baselines"]}
    rows = []
    for name, m in entries.items():
        row = {"method": name}
        for key, v in m.items():
            row[key] = v["mean"]
            row[f"{key} ci95"] = "[{:.3f}, {:.3f}]".format(*v["ci95"])
        rows.append(row)
    return pd.DataFrame(rows)


def metrics_vs_baselines(metrics_json, out_png, out_html) -> None:
    metrics = json.loads(Path(metrics_json).read_text())
    table = _rows(metrics)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    top1 = [metrics["model"]["overall"]["top1"]] + [m["top1"] for m in metrics["baselines"].values()]
    lo = [m["mean"] - m["ci95"][0] for m in top1]
    hi = [m["ci95"][1] - m["mean"] for m in top1]
    ax.bar(table.method, table.top1, yerr=[lo, hi], capsize=4, color=["C0"] + ["C7"] * (len(table) - 1))
    ax.set(ylabel="top-1", ylim=(0, 1), title=f"Top-1 on the {metrics['split']} split ({metrics['clips']} clips), 95% CI")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    Path(out_html).write_text(table.to_html(index=False, float_format="{:.3f}".format, border=0))


def by_people(metrics_json, out_png) -> None:
    metrics = json.loads(Path(metrics_json).read_text())
    groups = metrics["model"]["by_people"]
    names = list(groups)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.bar(names, [groups[g]["top1"]["mean"] for g in names])
    for i, g in enumerate(names):
        ax.annotate(f"n={groups[g]['top1']['n']}", (i, groups[g]["top1"]["mean"]), ha="center", va="bottom")
    ax.set(xlabel="people present", ylabel="top-1", ylim=(0, 1.1), title="Top-1 by number of people")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def rejected_table(manifest_parquet, out_html) -> None:
    manifest = pd.read_parquet(manifest_parquet)
    rejected = manifest[manifest.verdict == "rejected"][["split", "path", "reason"]]
    summary = (f"<p>{len(manifest)} clip files: {int((manifest.verdict == 'accepted').sum())} accepted, "
               f"{len(rejected)} rejected.</p>")
    body = rejected.to_html(index=False, border=0) if len(rejected) else "<p>No clip was rejected.</p>"
    Path(out_html).write_text(summary + body)


def ablation_summary(metrics_by_run: dict[str, str]) -> pd.DataFrame:
    """{"<variant>/seed<s>": metrics.json path} -> one row per variant: mean and std over seeds."""
    rows = []
    for name, path in metrics_by_run.items():
        variant, seed = name.rsplit("/seed", 1)
        overall = json.loads(Path(path).read_text())["model"]["overall"]
        rows.append({"variant": variant, "seed": int(seed), "top1": overall["top1"]["mean"], "mrr": overall["mrr"]["mean"]})
    runs = pd.DataFrame(rows)
    summary = runs.groupby("variant", sort=False).agg(seeds=("seed", "count"), top1_mean=("top1", "mean"),
                                                      top1_std=("top1", "std"), mrr_mean=("mrr", "mean"),
                                                      mrr_std=("mrr", "std")).reset_index()
    full = summary.top1_mean.iloc[0]
    summary["top1_change_vs_full"] = summary.top1_mean - full
    return summary.fillna({"top1_std": 0.0, "mrr_std": 0.0})


def ablations(metrics_by_run: dict[str, str], out_png, out_html) -> None:
    summary = ablation_summary(metrics_by_run)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar(summary.variant, summary.top1_mean, yerr=summary.top1_std, capsize=4,
           color=["C0"] + ["C1"] * (len(summary) - 1))
    ax.set(ylabel="top-1", ylim=(0, 1), title="Full model and ablations (mean ± std over seeds)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    Path(out_html).write_text(summary.to_html(index=False, float_format="{:.3f}".format, border=0))
