"""How long Snakemake takes to plan the workflow for a large dataset. Writes JSON.

    python benchmarks/dag_scale.py [--videos 1000 10000 100000] [--shards 64] [--repeats 5]
                                   [--out results/benchmarks/dag_scale.json]

For each size it lays out a dataset of empty clip files, writes the prepare stage's outputs for it (a manifest
and the shard lists, as the prepare checkpoint would), and times `snakemake -n` in a copy of the workflow twice:
- first: the content-hash cache is empty, so planning reads every clip once to name the data (with empty files
  this is the per-file cost only; real clips add their bytes at the machine's SHA-256 rate, also reported);
- warm: one stat per clip and one cache lookup, then parsing, the checkpoint's shard keys, and the DAG of one
  extract job per shard plus train, evaluate and report.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from svip_core.config import load_config
from svip_core.dataset.manifest import assign_shards
from svip_core.stages import stage_dir

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ("Snakefile", "rules", "workflow_scripts", "config.schema.yaml", "report", "envs", "profiles")


def build(workdir: Path, videos: int, shards: int) -> None:
    for name in WORKFLOW:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, workdir / name)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["data"].update(source=str(workdir / "data"), num_shards=shards)
    config["ablations"] = {}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    splits = ["train"] * (videos * 8 // 10) + ["val"] * (videos // 10)
    splits += ["test"] * (videos - len(splits))
    rows = []
    for split in ("train", "val", "test"):
        (workdir / "data" / split).mkdir(parents=True)
    for i, split in enumerate(splits):
        path = workdir / "data" / split / f"video_{i:06d}.npz"
        path.touch()
        rows.append({"path": str(path), "video_id": f"video_{i:06d}", "split": split, "T": 120, "N": 20,
                     "persons_present": 5, "scene_category": "street", "verdict": "accepted", "reason": "",
                     "content_hash": hashlib.sha256(str(i).encode()).hexdigest(), "shard": -1})
    manifest = pd.DataFrame(rows)
    out = workdir / stage_dir(load_config(workdir / "config.yaml"), "prepare")
    (out / "shards").mkdir(parents=True)
    (workdir / "results" / "shards").mkdir(parents=True)
    for key, members in assign_shards(manifest, shards).items():
        (out / "shards" / f"{key}.json").write_text(json.dumps(members))
        (workdir / "results" / "shards" / f"{key}.json").write_text(json.dumps(members))
    manifest.to_parquet(out / "manifest.parquet", index=False)


def plan(workdir: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "8"], cwd=workdir,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return seconds, result.stdout + result.stderr


def sha256_rate(megabytes: int = 512) -> float:
    """This machine's SHA-256 throughput in MB/s (what the first plan pays per MB of new clips)."""
    blob = np.random.default_rng(0).bytes(megabytes * 2**20)
    start = time.perf_counter()
    hashlib.sha256(blob).hexdigest()
    return megabytes / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--shards", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="warm dry runs per size (min and median reported)")
    p.add_argument("--out", default="results/benchmarks/dag_scale.json")
    args = p.parse_args()
    results = []
    for videos in args.videos:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            start = time.perf_counter()
            build(workdir, videos, args.shards)
            built = time.perf_counter() - start
            time.sleep(2.5)    # files younger than 2 s are "racily clean" and never cached (svip_core.hashing)
            first, _ = plan(workdir)
            warm = [plan(workdir) for _ in range(args.repeats)]
            seconds, log = min(warm)
            median = sorted(w[0] for w in warm)[len(warm) // 2]
            extract_jobs = sum(int(line.split()[1]) for line in log.splitlines()
                               if line.startswith("extract ") and line.split()[1].isdigit()) // 2
            results.append({"videos": videos, "shards": args.shards, "dry_run_seconds": round(seconds, 2),
                            "dry_run_median_seconds": round(median, 2), "repeats": args.repeats,
                            "first_dry_run_seconds": round(first, 2), "extract_jobs": extract_jobs,
                            "setup_seconds": round(built, 1)})
            print(json.dumps(results[-1]))
    rate = sha256_rate()
    print(json.dumps({"sha256_MB_per_s": round(rate)}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"sizes": results, "sha256_MB_per_s": round(rate)}, indent=1))


if __name__ == "__main__":
    main()
