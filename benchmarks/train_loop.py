"""Does the training loop keep its step busy? Clips/s of the loader alone, the step alone and the real loop.

    python benchmarks/train_loop.py [--clips 64] [--epochs 3] [--workers auto] [--eval-clips 0]
                                    [--shape 120 20 768] [--config FILE] [--out results/benchmarks/train_loop.json]

Writes feature stores at the reference shape (T=120 frames, N=20 people, D=768, float16 visual; random values,
about 80% of slots present) with the real store code, builds the ranker at the reference's dimensions (the
schema's defaults; ``--config FILE`` takes model and train settings from a config instead, such as the demo's
smaller model, whose faster step is harder to keep fed), then measures on this machine:
- loader: clips/s of ``clip_loader`` + ``on_device`` alone, the real train path, with ``--workers``;
- loader_before: the loader as it was before issue 13 (a group lookup per array per item, every item's
  target chunk decoded, fp32 cast on the CPU, visual compressed in the store), on a store written that way;
- loop: clips/s of the real ``train()`` (loader, step, device-side metrics), from each epoch's
  ``train_seconds``, epochs after the first (worker start-up and allocator warm-up), and the share of that
  time the step stood waiting for data (``data_wait_seconds``);
- step: clips/s of forward + backward + clipping + optimizer alone, cycling over four batches already on the
  device, in the same process after the loop (on the CPU a step's time depends on the allocator's state by
  up to a third, so both are measured in the same state);
- evaluate (``--eval-clips N``): seconds to score N clips with ``score_split`` (the evaluate stage's path).
A loop within 10% of the step means the step never waits for data.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from timing import device_name, sync, timed

from svip_core.config import SCHEMA_PATH, load_config
from svip_core.evaluate.evaluation import best_device, score_split
from svip_core.features.geometry import box_geometry
from svip_core.features.store import create_arrays, open_store, writing_store
from svip_core.logs import setup_logging
from svip_core.model.loss import ranking_loss
from svip_core.model.ranker import build_ranker
from svip_core.train.data import StoreClips, clip_loader, loader_workers, on_device
from svip_core.train.loop import train


def write_store(path: Path, splits: dict[str, int], shape: tuple[int, int, int], seed: int,
                visual_compressed: bool = False) -> str:
    """A store of random clips of ``shape`` (T, N, D), written with the real store code."""
    (T, N, D), V = shape, sum(splits.values())
    g = torch.Generator().manual_seed(seed)
    valid = torch.rand(V, T, N, generator=g) < 0.8
    valid[:, :, 0] = True
    xy = torch.rand(V, 1, N, 2, generator=g) * 0.7 + torch.cumsum(torch.randn(V, T, N, 2, generator=g) * 0.005, 1)
    boxes = torch.cat([xy, xy + 0.1 + torch.rand(V, 1, N, 2, generator=g) * 0.1], -1).clamp(0, 1)
    geometry = box_geometry(boxes, valid)
    with writing_store(path, {"benchmark": "train_loop"}) as group:
        create_arrays(group, V, T, N, D, geometry.shape[-1])
        if visual_compressed:                     # the store format before issue 13: visual zstd-compressed
            del group["visual"]
            group.create_array("visual", shape=(V, T, N, D), chunks=(1, T, N, D), dtype="float16",
                               dimension_names=("clip", "frame", "person", "feature"))
        for v in range(V):
            group["visual"][v] = (torch.randn(T, N, D, generator=g) * valid[v, ..., None]).half().numpy()
        group["geometry"][:] = geometry.numpy()
        group["person_mask"][:] = valid.numpy()
        group["frame_mask"][:] = np.ones((V, T), bool)
        group["target_index"][:] = np.zeros(V, np.int64)
        group["frame_stride"][:] = np.ones(V, np.float32)
        group["video_id"][:] = np.array([f"clip{seed}_{v:05d}" for v in range(V)])
        group["scene_category"][:] = np.array(["benchmark"] * V)
        group["split"][:] = np.array([s for s, n in splits.items() for _ in range(n)])
    return str(path)


class LoaderBefore(torch.utils.data.Dataset):
    """The train split's items as read before issue 13: every array looked up through the group per item."""

    def __init__(self, path: str, split: str):
        self.path, self.rows, self.group = path, np.flatnonzero(open_store(path)["split"][:] == split), None

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        self.group = self.group or open_store(self.path)
        g, row = self.group, self.rows[i]
        return {"visual": torch.from_numpy(g["visual"][row].astype(np.float32)),
                "geometry": torch.from_numpy(g["geometry"][row]), "valid": torch.from_numpy(g["person_mask"][row]),
                "target": torch.tensor(int(g["target_index"][row])), "item": torch.tensor(i)}


def loader_rate(dataset, batch_size: int, workers: int, device: torch.device, epochs: int = 2) -> float:
    loader = clip_loader(dataset, batch_size, workers, device)
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in on_device(loader, device):
            seen += len(batch["target"])
    sync(device)
    return seen / (time.perf_counter() - start)


def step_rate(model_cfg: dict, train_cfg: dict, dataset: StoreClips, device: torch.device, repeats: int) -> float:
    """Clips/s of the train step alone, on one batch already on the device."""
    visual_dim, geometry_dim = dataset.dims()
    model = build_ranker(model_cfg, visual_dim, geometry_dim)
    model.fit_normalisation(*dataset.geometry_sample(64))
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg["lr"])
    loader = on_device(clip_loader(dataset, train_cfg["batch_size"], 0, device), device)
    batches = [batch for _, batch in zip(range(4), loader)]
    amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    turn = iter(range(10**9))

    def step():
        batch = batches[next(turn) % len(batches)]
        with torch.autocast(**amp):
            logits = model(batch["visual"], batch["geometry"], batch["valid"])["logits"].float()
        losses = ranking_loss(logits, batch["target"], batch["valid"].any(1), train_cfg["preference_weight"],
                              train_cfg["pairwise_weight"], train_cfg["pairwise_margin"])
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_cfg["batch_size"] / timed(step, device, repeats, warmup=2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=64, help="training clips (val gets a quarter as many)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", default="auto", help='loader workers: a number or "auto" (train.workers)')
    p.add_argument("--eval-clips", type=int, default=0, help="also time scoring this many clips (evaluate)")
    p.add_argument("--shape", type=int, nargs=3, default=[120, 20, 768], metavar=("T", "N", "D"))
    p.add_argument("--config", default=None, help="model and train settings from this config (default: the "
                   "schema's defaults, the reference's dimensions)")
    p.add_argument("--work-dir", default=None, help="where the stores go (default: a temporary folder)")
    p.add_argument("--out", default="results/benchmarks/train_loop.json")
    args = p.parse_args()
    setup_logging()
    device, shape = best_device(), tuple(args.shape)
    if args.config:
        config = load_config(args.config)
        model_cfg, train_cfg = config["model"], dict(config["train"])
    else:
        schema = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]
        model_cfg = {k: s["default"] for k, s in schema["model"]["properties"].items()}
        train_cfg = {k: s["default"] for k, s in schema["train"]["properties"].items()}
    train_cfg.update(epochs=args.epochs, batch_size=args.batch_size, accumulation_steps=1, patience=args.epochs + 1,
                     seed=0, workers=args.workers if args.workers == "auto" else int(args.workers))
    workers = loader_workers(train_cfg["workers"], device)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        tmp = Path(tmp)
        splits = {"train": args.clips, "val": max(1, args.clips // 4)}
        store = write_store(tmp / "store.zarr", splits, shape, seed=0)
        before = write_store(tmp / "store_before.zarr", {"train": args.clips}, shape, seed=0, visual_compressed=True)
        dataset = StoreClips([store], "train")
        result = {"device": device_name(device), "torch": torch.__version__, "shape": dict(zip("TND", shape)),
                  "model": args.config or "reference dimensions (schema defaults)",
                  "clips": splits, "batch_size": args.batch_size, "workers": workers,
                  "loader_clips_per_s": loader_rate(dataset, args.batch_size, workers, device),
                  "loader_before_clips_per_s": loader_rate(LoaderBefore(before, "train"), args.batch_size,
                                                           workers, device)}
        result["loader_speedup"] = result["loader_clips_per_s"] / result["loader_before_clips_per_s"]
        print(json.dumps(result), flush=True)
        train([store], tmp / "train", model_cfg, train_cfg)
        curves = pd.read_csv(tmp / "train" / "metrics.csv")
        steady = curves.iloc[1:] if len(curves) > 1 else curves
        result["loop_epoch_train_seconds"] = curves.train_seconds.round(3).tolist()
        result["loop_clips_per_s"] = args.clips / statistics.median(steady.train_seconds)
        result["loop_data_wait_share"] = steady.data_wait_seconds.sum() / steady.train_seconds.sum()
        result["step_clips_per_s"] = step_rate(model_cfg, train_cfg, dataset, device,
                                               repeats=20 if device.type == "cuda" else 8)
        result["loop_vs_step"] = result["loop_clips_per_s"] / result["step_clips_per_s"]
        if args.eval_clips:
            evaluation = write_store(tmp / "eval.zarr", {"test": args.eval_clips}, shape, seed=1)
            model = build_ranker(model_cfg, *dataset.dims())
            model.fit_normalisation(*dataset.geometry_sample(64))
            model = model.to(device).eval()
            clips = StoreClips([evaluation], "test")
            score_split(model, StoreClips([store], "val"), workers=workers)               # warm-up
            sync(device)
            start = time.perf_counter()
            scores = score_split(model, clips, workers=workers)
            result["evaluate_clips"] = len(scores["scores"])
            result["evaluate_seconds"] = time.perf_counter() - start
    result = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
