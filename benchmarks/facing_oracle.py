"""Where the relational benchmark's remaining gap lies: the full model trained on the benchmark's own stores with
the visual features replaced by what a perfect reader of the pixels would give.

    python benchmarks/facing_oracle.py [--configfile benchmarks/relational_benchmark.yaml] [--sizes 112 600 2000]
        [--seeds 0] [--variants stored,none,facing,facing+looks_at] [--out results/benchmarks/facing_oracle.json]

Run it after the benchmark's extract stage (``snakemake --configfile ... features``): it reads the
stores of that stage. Variants (each trained with the config's recipe, on the first n training clips, tested on
the test split):
- ``stored``: the visual features as extracted (what the workflow trains on);
- ``none``: visual features all zero, so the model reads the boxes alone;
- ``facing``: the first visual channel holds which way each person truly faces (+1 right, -1 left, from the
  generator; the rest zero): a perfect reader of the face mark;
- ``facing+looks_at``: the same with ``model.looks_at: 1``, which compares each person's facing with where the
  others stand.
The stores for ``none`` and ``facing`` are written once under ``results/benchmarks/facing_oracle/``. Each
training takes 5 to 10 minutes on 2 CPU cores (one thread each; two can run side by side with ``--jobs 2``).
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

VARIANTS = ("stored", "none", "facing", "facing+looks_at")


def true_facing(synthetic: dict, split: str, index: int) -> np.ndarray:
    """(T, N) which way each slot's person faces (+1 right, -1 left, 0 for an empty slot) in clip ``index`` of
    ``split``, drawn exactly as ``generate_clips`` draws the clip."""
    import importlib

    from svip_core.synthetic.generate import SCENE_MODULES, make_clip, split_stream

    split_index = split_stream(synthetic["clips"], split)
    T, N, H, W = synthetic["frames"], synthetic["persons"], synthetic["height"], synthetic["width"]
    seed = [synthetic["seed"], split_index, index]
    rng = np.random.default_rng(seed)
    category_index = int(rng.integers(len(synthetic["categories"])))
    clip = make_clip(rng, "x", synthetic["categories"][category_index], category_index, T, N, H, W,
                     synthetic["scene"], pixels=False)
    # make_clip's first draws, repeated: the number of people, then the scene.
    rng = np.random.default_rng(seed)
    rng.integers(len(synthetic["categories"]))
    P = int(rng.integers(max(3, N - 2), N + 1)) if N >= 3 else N
    facing = importlib.import_module(SCENE_MODULES[synthetic["scene"]]).scene(rng, T, P, H, W, category_index)[2]
    out = np.zeros((T, N), np.float32)
    person = clip["original_ids"]
    out[:, person >= 0] = facing[:, person[person >= 0]]
    return out


def oracle_stores(stores: list[Path], out_dir: Path, variant: str, synthetic: dict) -> list[Path]:
    """Copies of ``stores`` whose visual features are zero (``none``) or the true facing (``facing``)."""
    import zarr

    out_dir = out_dir / variant
    done = out_dir / "complete"
    written = [out_dir / s.name for s in stores]
    if done.exists():
        return written
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    for src, dst in zip(stores, written):
        shutil.copytree(src, dst)
        group = zarr.open_group(dst, mode="r+")
        visual = np.zeros(group["visual"].shape, np.float16)
        if variant == "facing":
            valid = group["person_mask"][:]
            for row, (video_id, split) in enumerate(zip(group["video_id"][:], group["split"][:])):
                index = int(str(video_id).rsplit("_", 1)[1])
                visual[row, ..., 0] = true_facing(synthetic, str(split), index) * valid[row]
        group["visual"][:] = visual
    done.write_text("")
    return written


def train_and_test(job: tuple) -> dict:
    name, stores, run, out_dir = job
    import torch

    from svip_core.evaluate.evaluation import load_ranker, score_split
    from svip_core.train.data import StoreClips
    from svip_core.train.loop import train

    torch.set_num_threads(1)
    start = time.perf_counter()
    shutil.rmtree(out_dir, ignore_errors=True)
    state = train([str(s) for s in stores], out_dir, run["model"], run["train"])
    scores = score_split(load_ranker(out_dir), StoreClips([str(s) for s in stores], "test"))
    top1 = float(np.mean(scores["scores"].argmax(1) == scores["target"]))
    return {"variant": name, "clips": run["train"]["clips"], "seed": run["train"]["seed"], "top1": top1,
            "best_val_top1": state["best_top1"], "epochs": state["epoch"],
            "seconds": round(time.perf_counter() - start)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", default="benchmarks/relational_benchmark.yaml")
    p.add_argument("--sizes", type=int, nargs="+", default=[600])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", default="results/benchmarks/facing_oracle.json")
    args = p.parse_args()

    from svip_core.config import load_config
    from svip_core.stages import runs, stage_dir, trains_on_shard

    config = load_config(args.configfile)
    if config["data"]["source"] != "synthetic":
        raise SystemExit(f"{args.configfile}: data.source is {config['data']['source']!r}; the true facing exists "
                         "only for the embedded synthetic scenes. Fix: use a synthetic benchmark's config")
    # The features folder is shared by every dataset extracted with these settings: this one's stores are those
    # of the shards its prepare stage listed.
    shards = sorted(p.stem for p in (stage_dir(config, "prepare") / "shards").glob("*.json")
                    if trains_on_shard(config, p.stem))
    stores = [stage_dir(config, "extract") / f"{key}.zarr" for key in shards]
    if not stores or not all(s.exists() for s in stores):
        raise SystemExit(f"the feature stores of {args.configfile} are not all in {stage_dir(config, 'extract')}. "
                         f"Fix: run snakemake --configfile {args.configfile} features first")
    base = runs(config)[f"full/seed{config['train']['seeds'][0]}"]
    work = Path(args.out).with_suffix("")
    jobs = []
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"--variants: unknown {variant!r}. Fix: choose from {', '.join(VARIANTS)}")
        inputs = variant.split("+")[0]
        variant_stores = stores if inputs == "stored" else oracle_stores(stores, work, inputs, config["synthetic"])
        for size in args.sizes:
            for seed in args.seeds:
                run = copy.deepcopy(base)
                run["train"].update(seed=seed, clips=size, workers=0)
                if variant.endswith("+looks_at"):
                    run["model"]["looks_at"] = 1
                jobs.append((variant, variant_stores, run, work / "runs" / f"{variant}_n{size}_s{seed}"))
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(train_and_test, jobs))
    for r in results:
        print(f"{r['variant']:18s} {r['clips']:5d} clips seed {r['seed']}: test top-1 {r['top1']:.3f} ({r['seconds']} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": args.configfile, "results": results}, indent=1))
    print(f"JSON written to {args.out}")


if __name__ == "__main__":
    main()
