"""Figures and tables for the Snakemake HTML report."""
from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from svip_core.dataset.manifest import rejected_summary  # noqa: E402
from svip_core.evaluate.metrics import format_interval  # noqa: E402


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


def variant_curves(curves_by_run: dict[str, str], out_png) -> None:
    """Validation top-1 per epoch of every variant side by side, one line per seed, with the split's chance
    level (from the run's model.json) for reference. ``curves_by_run``: {"<variant>/seed<s>": metrics.csv}."""
    by_variant: dict[str, list] = {}
    for name, path in curves_by_run.items():
        variant, seed = name.rsplit("/seed", 1)
        by_variant.setdefault(variant, []).append((seed, path))
    cols = min(4, len(by_variant))
    rows = -(-len(by_variant) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), sharex=True, sharey=True, squeeze=False)
    for ax, (variant, seeds) in zip(axes.flat, by_variant.items()):
        chance = None
        for seed, path in seeds:
            h = pd.read_csv(path)
            ax.plot(h.epoch, h.val_top1, marker=".", label=f"seed {seed}")
            meta = Path(path).with_name("model.json")
            chance = json.loads(meta.read_text()).get("val_chance_top1") if meta.exists() else chance
        if chance:
            ax.axhline(chance, color="grey", ls=":", label="chance")
        ax.set(title=variant, ylim=(0, 1), xlabel="epoch")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(by_variant):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("val top-1")
    axes[0, 0].legend(fontsize=7)
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


def top1_title(metrics: dict) -> str:
    """The top-1 figure's title; it says so when the split also selected the checkpoint."""
    title = f"Top-1 on the {metrics['split']} split ({metrics['clips']} clips), 95% CI"
    if metrics.get("selection_split"):
        title += "\nSELECTION SPLIT: it also chose the checkpoint, figures are optimistic"
    return title


def trust_notes(metrics: dict) -> str:
    """HTML warnings to show above the metrics table: evaluation on the selection split, clips without target."""
    notes = []
    if metrics.get("selection_split"):
        notes.append(f"<strong>Selection split:</strong> {html.escape(metrics.get('note', ''))}.")
    absent = metrics.get("target_absent", {})
    if absent.get("count", 0):
        ids = ", ".join(map(html.escape, absent.get("video_ids", [])))
        notes.append(f"<strong>{absent['count']} clip(s) without their VIP</strong> in the features, counted as "
                     f"misses in every metric: {ids}.")
    return "".join(f'<p style="color:#b00020">{n}</p>' for n in notes)


def metrics_vs_baselines(metrics_json, out_png, out_html) -> None:
    metrics = json.loads(Path(metrics_json).read_text())
    table = _rows(metrics)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    top1 = [metrics["model"]["overall"]["top1"]] + [m["top1"] for m in metrics["baselines"].values()]
    lo = [m["mean"] - m["ci95"][0] for m in top1]
    hi = [m["ci95"][1] - m["mean"] for m in top1]
    ax.bar(table.method, table.top1, yerr=[lo, hi], capsize=4, color=["C0"] + ["C7"] * (len(table) - 1))
    ax.set(ylabel="top-1", ylim=(0, 1))
    ax.set_title(top1_title(metrics), color="#b00020" if metrics.get("selection_split") else "black")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    Path(out_html).write_text(trust_notes(metrics) + table.to_html(index=False, float_format="{:.3f}".format, border=0))


def by_group(metrics_json, group: str, out_png) -> None:
    """Top-1 per group of clips: group is "by_people" (people present) or "by_category" (scene)."""
    metrics = json.loads(Path(metrics_json).read_text())
    groups = metrics["model"][group]
    names = list(groups)
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names)), 3.4))
    means = [groups[g]["top1"]["mean"] for g in names]
    errors = [[m - groups[g]["top1"]["ci95"][0] for g, m in zip(names, means)],
              [groups[g]["top1"]["ci95"][1] - m for g, m in zip(names, means)]]
    ax.bar(names, means, yerr=errors, capsize=4)
    for i, g in enumerate(names):
        ax.annotate(f"n={groups[g]['top1']['n']}", (i, 0.02), ha="center", va="bottom", color="white")
    label = {"by_people": "people present", "by_category": "scene category"}[group]
    ax.set(xlabel=label, ylabel="top-1", ylim=(0, 1.05), title=f"Top-1 by {label} (95% CI)")
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


def run_scores(metrics_by_run: dict[str, str]) -> pd.DataFrame:
    """{"<variant>/seed<s>": metrics.json path} -> one row per run: variant, seed, top1, mrr (means over clips)."""
    rows = []
    for name, path in metrics_by_run.items():
        variant, seed = name.rsplit("/seed", 1)
        overall = json.loads(Path(path).read_text())["model"]["overall"]
        rows.append({"variant": variant, "seed": int(seed), "top1": overall["top1"]["mean"], "mrr": overall["mrr"]["mean"]})
    return pd.DataFrame(rows)


def ablation_summary(metrics_by_run: dict[str, str]) -> pd.DataFrame:
    """{"<variant>/seed<s>": metrics.json path} -> one row per variant: mean and std over seeds."""
    runs = run_scores(metrics_by_run)
    summary = runs.groupby("variant", sort=False).agg(seeds=("seed", "count"), top1_mean=("top1", "mean"),
                                                      top1_std=("top1", "std"), mrr_mean=("mrr", "mean"),
                                                      mrr_std=("mrr", "std")).reset_index()
    full = summary.top1_mean.iloc[0]
    summary["top1_change_vs_full"] = summary.top1_mean - full
    return summary.fillna({"top1_std": 0.0, "mrr_std": 0.0})


def headline(primary_metrics, metrics_by_run: dict[str, str], manifest, rejected_page) -> dict:
    """The run's result in one line, for the report's first screen and `make demo`: the model's top-1 and MRR
    with 95% intervals, the best box heuristic (random left out), the ablation that costs most (mean over
    seeds), and the clips rejected, if any, with where their reasons are. Returns {"text", "top1", "mrr",
    "best_heuristic", "costliest_ablation", "rejected"}."""
    metrics = json.loads(Path(primary_metrics).read_text())
    overall = metrics["model"]["overall"]
    heuristics = {name: b["top1"]["mean"] for name, b in metrics["baselines"].items() if name != "random"}
    best = max(heuristics, key=heuristics.get)
    text = (f"Top-1 {format_interval(overall['top1'])}, MRR {format_interval(overall['mrr'])} on the {metrics['split']} split "
            f"({metrics['clips']} clips); best heuristic ({best.replace('_', ' ')}) {heuristics[best]:.2f}")
    out = {"top1": overall["top1"], "mrr": overall["mrr"], "best_heuristic": {"name": best, "top1": heuristics[best]}}
    summary = ablation_summary(metrics_by_run)
    variants = summary[summary.variant != "full"]
    if len(variants):
        worst = variants.loc[variants.top1_mean.idxmin()]
        text += f"; costliest ablation ({worst.variant}) {worst.top1_mean:.2f}"
        out["costliest_ablation"] = {"name": worst.variant, "top1": float(worst.top1_mean)}
    rejected = rejected_summary(pd.read_parquet(manifest))
    if rejected:
        text += f"; {rejected}, see {rejected_page}"
    return {"text": text, **out, "rejected": rejected}


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


def learning_curve_summary(runs: dict[str, dict]) -> pd.DataFrame:
    """{"<variant>/seed<s>": {"curves": metrics.csv, "metrics": metrics.json}} of the full model at every size
    -> one row per training-set size (read from each run's model.json): test top-1 mean and std over seeds."""
    table = run_scores({name: r["metrics"] for name, r in runs.items()})
    table["train_clips"] = [json.loads(Path(r["curves"]).with_name("model.json").read_text())["train_clips"]
                            for r in runs.values()]
    table = table.sort_values(["train_clips", "seed"])
    return table.groupby("train_clips").agg(seeds=("seed", "count"), top1_mean=("top1", "mean"), top1_std=("top1", "std"),
                                            mrr_mean=("mrr", "mean"), per_seed=("top1", lambda v: ", ".join(f"{x:.3f}" for x in v))
                                            ).reset_index().fillna({"top1_std": 0.0})


def learning_curve(runs: dict[str, dict], out_png, out_html) -> None:
    """The full model's test top-1 against its number of training clips (``learning_curve_summary``)."""
    summary = learning_curve_summary(runs)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(summary.train_clips, summary.top1_mean, yerr=summary.top1_std, marker="o", capsize=4)
    ax.set_xscale("log")
    ax.set_xticks(summary.train_clips, [str(n) for n in summary.train_clips])
    ax.minorticks_off()
    ax.set(xlabel="training clips", ylabel="test top-1 (mean, std over seeds)", ylim=(0, 1),
           title="Learning curve of the full model")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    Path(out_html).write_text(summary.to_html(index=False, float_format="{:.3f}".format, border=0))


def gallery(predictions_parquet, manifest_parquet, store_paths: list[str], out_png, per_side: int = 4,
            frames_per_clip: int = 4) -> None:
    """Contact sheet of the best and worst test clips: frames with each person's box coloured by the model's
    VIP probability (viridis), the true VIP dashed white, the predicted VIP labelled."""
    import numpy as np
    import torch

    from svip_core.dataset.clip import read_clip
    from svip_core.features.extract import frame_indices
    from svip_core.features.store import open_store

    pred = pd.read_parquet(predictions_parquet)
    pred["prob"] = pred.groupby("video_id").score.transform(lambda s: torch.softmax(torch.tensor(s.values), 0).numpy())
    margin = pred.groupby("video_id").apply(
        lambda g: g.prob[g.is_target].sum() - (g.prob[~g.is_target].max() if (~g.is_target).any() else 0.0),
        include_groups=False)
    best = list(margin.nlargest(per_side).index)
    worst = [v for v in margin.nsmallest(per_side).index if v not in best]
    chosen = best + worst
    paths = pd.read_parquet(manifest_parquet).drop_duplicates("video_id").set_index("video_id").path
    rows = {}
    for store_path in store_paths:
        store = open_store(store_path)
        ids = store["video_id"][:]
        for row in np.flatnonzero(np.isin(ids, chosen)):
            rows[str(ids[row])] = (store["geometry"][row][..., :4], store["person_mask"][row])
    fig, axes = plt.subplots(len(chosen), frames_per_clip, figsize=(2.6 * frames_per_clip, 1.9 * len(chosen)),
                             squeeze=False)
    cmap = matplotlib.colormaps["viridis"]
    for r, video_id in enumerate(chosen):
        boxes, valid = rows[video_id]
        clip = read_clip(paths[video_id])
        # The extract stage's own sampling rule, so row t of the store is frame index[t] of the clip.
        index = frame_indices(clip.num_frames, len(valid), clip.frame_mask, clip.valid, clip.target_index)
        shown = np.flatnonzero(valid.any(1) & (index >= 0))
        shown = shown[np.linspace(0, len(shown) - 1, frames_per_clip).round().astype(int)]
        people = pred[pred.video_id == video_id].set_index("slot")
        top = people.prob.idxmax()
        for c, t in enumerate(shown):
            ax = axes[r, c]
            frame = clip.frames[index[t]]
            ax.imshow(frame)
            H, W = frame.shape[:2]
            for n in np.flatnonzero(valid[t]):
                x1, y1, x2, y2 = boxes[t, n] * np.array([W, H, W, H])
                p = people.prob.get(n, 0.0)
                ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=2, color=cmap(p)))
                if people.is_target.get(n, False):
                    ax.add_patch(plt.Rectangle((x1 - 2, y1 - 2), x2 - x1 + 4, y2 - y1 + 4, fill=False, lw=1.2,
                                               ls="--", color="white"))
                if n == top:
                    ax.text(x1, y1 - 2, f"VIP? {p:.2f}", color="yellow", fontsize=6, va="bottom")
            ax.set_axis_off()
        kind = "best" if r < len(best) else "worst"
        axes[r, 0].set_title(f"{kind}: {video_id} (margin {margin[video_id]:+.2f})", fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
