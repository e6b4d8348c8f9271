"""The stages' library code end to end without Snakemake (for machines without it, such as a lent GPU box):
synthetic clips -> prepare -> extract (GPU when present) -> torchrun training (NCCL on GPU) -> evaluate.

    python benchmarks/pipeline_smoke.py [--nproc 1] [--out results/benchmarks/pipeline_smoke.json]
Writes each stage's wall time and the test top-1 as JSON.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import yaml

from svip_core.dataset.manifest import prepare_dataset
from svip_core.dataset.shards import read_shard
from svip_core.evaluate.evaluation import evaluate
from svip_core.features.backbone import build_embedded
from svip_core.features.extract import extract_shard
from svip_core.synthetic.generate import write_dataset

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--out", default="results/benchmarks/pipeline_smoke.json")
    args = p.parse_args()
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    s, f = cfg["synthetic"], cfg["features"]
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        write_dataset(tmp / "clips", s["clips"], s["frames"], s["persons"], s["height"], s["width"], s["categories"], s["seed"])
        prepare_dataset(tmp / "clips", tmp / "prepare", cfg["data"]["num_shards"], 2_000_000_000, "error")
        times["prepare"] = time.perf_counter() - t
        t = time.perf_counter()
        backbone = build_embedded(f["embedded"], tmp / "backbone")
        stores = []
        for shard in sorted((tmp / "prepare" / "shards").glob("*.json")):
            stores.append(str(tmp / "features" / f"{shard.stem}.zarr"))
            extract_shard(read_shard(shard), stores[-1], f, cfg["data"]["max_persons"], backbone, {})
        times["extract"] = time.perf_counter() - t
        t = time.perf_counter()
        stage = {"config": {"model": cfg["model"], "train": {**cfg["train"], "epochs": args.epochs, "nproc": args.nproc}}}
        subprocess.run(["torchrun", "--standalone", f"--nproc_per_node={args.nproc}", str(ROOT / "workflow_scripts/train.py"),
                        "--config", json.dumps(stage), "--stores", *stores, "--out-dir", str(tmp / "train"),
                        "--log-file", str(tmp / "train.log")], check=True)
        times["train"] = time.perf_counter() - t
        metrics = evaluate(stores, tmp / "train", tmp / "evaluate", "test", [1, 2, 3])
        curves = (tmp / "train" / "metrics.csv").read_text()
    result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "seconds": {k: round(v, 2) for k, v in times.items()}, "epochs": args.epochs,
              "test_top1": metrics["model"]["overall"]["top1"], "train_curves_csv": curves}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
