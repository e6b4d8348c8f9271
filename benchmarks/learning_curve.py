"""Learning curve: the full model's test top-1 against the number of training clips, from one extraction.

    python benchmarks/learning_curve.py [--configfile benchmarks/relational_benchmark.yaml] \
        [--sizes 112 300 600 2000] [--seeds 0 1 2] [--cores 2] [--out results/benchmarks/learning_curve]

The config's synthetic train split is generated at the largest size (val and test as the config has them); each
smaller size trains on the first n of those clips (`train.clips`: a synthetic set's n training clips are the first
n of any larger set, so every size reads the same feature stores, and the same val and test clips). The largest
size trains on all of them, under the same identity as the benchmark config run on its own, so it reuses such a
run's results. For each size the workflow (`snakemake`) trains and evaluates the full model once per seed, and no
ablation. Writes learning_curve.csv (one row per size and seed), learning_curve.json (mean and std over seeds
per size) and learning_curve.png under --out, and prints the table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from svip_core.config import load_config
from svip_core.stages import runs, stage_dir


def size_layer(sizes: list[int], size: int, seeds: list[int]) -> dict:
    """The config layer of one size: every size generates the largest train split and trains on its first n."""
    return {"synthetic": {"clips": {"train": max(sizes)}},
            "train": {"seeds": seeds, "clips": 0 if size == max(sizes) else size}}


def full_model_metrics(config: dict) -> dict[int, Path]:
    """{seed: the full model's evaluate metrics.json} of ``config``."""
    return {run["train"]["seed"]: stage_dir(run, "evaluate") / "metrics.json"
            for name, run in runs(config).items() if name.startswith("full/")}


def run_size(configfile: str | None, layer: Path, config: dict, cores: int) -> float:
    """Run the workflow for the full model's evaluations of ``config``; returns the seconds it took."""
    targets = [str(path) for path in full_model_metrics(config).values()]
    layers = [configfile, str(layer)] if configfile else [str(layer)]
    start = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "snakemake"), *targets, "--cores", str(cores), "--configfile", *layers],
                   check=True)
    return time.perf_counter() - start


def plot(summary: pd.DataFrame, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(summary["train_clips"], summary["top1_mean"], yerr=summary["top1_std"], marker="o", capsize=4)
    ax.set_xscale("log")
    ax.set_xticks(summary["train_clips"], [str(n) for n in summary["train_clips"]])
    ax.set_xlabel("training clips")
    ax.set_ylabel("test top-1 (mean, std over seeds)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", default="benchmarks/relational_benchmark.yaml",
                   help="layered over ./config.yaml, as snakemake --configfile")
    p.add_argument("--sizes", type=int, nargs="+", default=[112, 300, 600, 2000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--out", default="results/benchmarks/learning_curve")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, seconds = [], {}
    for size in sorted(args.sizes):
        layer = out / f"train_{size}.yaml"
        layer.write_text(yaml.safe_dump(size_layer(args.sizes, size, args.seeds), sort_keys=True))
        config = load_config(None, [args.configfile, layer] if args.configfile else [layer])
        if config["data"]["source"] != "synthetic":
            sys.exit(f"{args.configfile}: data.source is {config['data']['source']!r}; the learning curve generates "
                     "its training sets. Fix: use a config whose data.source is synthetic")
        seconds[size] = round(run_size(args.configfile, layer, config, args.cores), 1)
        for seed, metrics in full_model_metrics(config).items():
            top1 = json.loads(metrics.read_text())["model"]["overall"]["top1"]
            rows.append({"train_clips": size, "seed": seed, "top1": top1["mean"], "test_clips": top1["n"],
                         "metrics": str(metrics)})
    table = pd.DataFrame(rows)
    table.to_csv(out / "learning_curve.csv", index=False)
    summary = table.groupby("train_clips").agg(top1_mean=("top1", "mean"), top1_std=("top1", "std"),
                                               seeds=("seed", "count")).reset_index().fillna({"top1_std": 0.0})
    scene = config["synthetic"]["scene"]                  # the same in every size's config
    plot(summary, out / "learning_curve.png", f"full model, {scene} scenes")
    (out / "learning_curve.json").write_text(json.dumps(
        {"configfile": args.configfile, "scene": scene, "seeds": args.seeds, "seconds_per_size": seconds,
         "sizes": summary.to_dict(orient="records")}, indent=1))
    print("training clips | test top-1 (mean +- std over seeds)")
    for r in summary.itertuples():
        print(f"{r.train_clips:14d} | {r.top1_mean:.3f} +- {r.top1_std:.3f} ({r.seeds} seeds)")
    print(f"written to {out}/learning_curve.{{csv,json,png}}")


if __name__ == "__main__":
    main()
