"""The evaluate stage: score the evaluation split with the trained ranker and with every heuristic.

metrics.json says how far its figures can be trusted: ``selection_split`` (with a ``note``) when the split is
val, which also chose the checkpoint, and ``target_absent``, the clips whose VIP is missing from the features
(each counted as a miss in every figure).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from svip_core.evaluate.baselines import heuristic_scores
from svip_core.evaluate.metrics import people_buckets, per_clip_hits, summarise
from svip_core.features.precision import autocast, set_matmul_precision
from svip_core.model.ranker import attach_tuned_head, build_ranker
from svip_core.model.ranking import rank_people
from svip_core.train.checkpoint import load_weights
from svip_core.train.data import StoreClips, clip_loader, loader_workers, on_device

log = logging.getLogger(__name__)
SELECTION_NOTE = "evaluated on val, the split that selected the checkpoint: figures are optimistic"


def load_ranker(train_dir, device="cpu", backbone=None) -> torch.nn.Module:
    """The trained ranker of ``train_dir``, with its tuned backbone blocks when it fine-tuned some (their
    structure from the backbone its features were made with, or ``backbone``: the same weights elsewhere; their
    weights from the checkpoint)."""
    train_dir = Path(train_dir)
    meta = json.loads((train_dir / "model.json").read_text())
    model = build_ranker(meta["model"], meta["visual_dim"], meta["geometry_dim"], meta.get("features", {}).get("features"))
    features = meta.get("features", {}) if backbone is None else {**meta["features"], "backbone": str(backbone)}
    attach_tuned_head(model, meta.get("finetune_blocks", 0), features)
    load_weights(model, train_dir / "model.safetensors")
    return model.eval().to(device)


def best_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def score_split(model, dataset: StoreClips, batch_size: int = 16, workers: int = 0,
                precision: str = "fp32") -> dict[str, np.ndarray]:
    """Model scores (V, N) plus the targets, validity and geometry needed by metrics and baselines. The model
    runs in its training's ``precision``; on a GPU batches are copied ahead while the previous one runs."""
    device = next(model.parameters()).device
    set_matmul_precision(precision)
    amp = autocast(precision, device)
    parts: dict[str, list] = {"scores": [], "target": [], "valid": [], "geometry": []}
    for batch in on_device(clip_loader(dataset, batch_size, workers, device), device):
        with amp:
            out = model(batch.get("visual"), batch["geometry"], batch["valid"], batch.get("tokens"))
        # Kept on the device until the end: a copy per batch would wait for each batch's model run.
        parts["scores"].append(out["logits"].float())
        for k in ("target", "valid", "geometry"):
            parts[k].append(batch[k])
    return {k: torch.cat(v).cpu().numpy() for k, v in parts.items()}


def target_absent(present: np.ndarray, target: np.ndarray) -> np.ndarray:
    """present (V, N) bool, target (V,) -> (V,) bool: the target is valid in no frame of the clip."""
    return ~np.take_along_axis(present, target[:, None].astype(np.int64), 1)[:, 0]


def evaluate(store_paths: list[str], train_dir, out_dir, split: str, ks: list[int], seed: int = 0,
             workers: int | str = "auto") -> dict:
    """Write ``metrics.json`` and ``predictions.parquet`` (one row per person of every clip) to ``out_dir``.
    Runs on the GPU when there is one."""
    out_dir = Path(out_dir)
    meta = json.loads((Path(train_dir) / "model.json").read_text())
    # A fine-tuned model makes its visual features from the trunk's tokens, never from the frozen ones.
    tuned_blocks = meta.get("finetune_blocks", 0)
    dataset = StoreClips(store_paths, split, tuned_blocks)
    if len(dataset) == 0 and split == "test":
        log.warning("the dataset has no test split; evaluating on val (the reference's practice), which also "
                    "selected the checkpoint: the figures are optimistic")
        split, dataset = "val", StoreClips(store_paths, "val", tuned_blocks)
    torch.manual_seed(seed)
    device = best_device()
    precision = meta.get("precision", "fp32")
    res = score_split(load_ranker(train_dir, device), dataset, workers=loader_workers(workers, device),
                      precision=precision)
    present = res["valid"].any(1)                                                     # (V, N)
    clips = pd.DataFrame([dataset.describe(i) for i in range(len(dataset))])
    absent = target_absent(present, res["target"])
    if absent.any():
        log.warning("%d clip(s) have no target in their features, counted as misses: %s", absent.sum(),
                    ", ".join(clips.video_id[absent]))
    clips["people"] = present.sum(1)
    clips["bucket"], buckets = people_buckets(clips["people"].to_numpy())

    def block(scores: np.ndarray) -> dict:
        hits = per_clip_hits(scores, res["target"], present, ks)
        return {"overall": summarise(hits, seed=seed),
                "by_people": {b: summarise(hits[clips.bucket == b], seed=seed) for b in buckets},
                "by_people_count": {str(k): summarise(hits[clips.people == k], seed=seed)
                                    for k in sorted(clips.people.unique())},
                "by_category": {c: summarise(hits[clips.scene_category == c], seed=seed)
                                for c in sorted(clips.scene_category.unique())}}

    metrics = {"split": split, "clips": len(dataset), "selection_split": split == "val",
               **({"note": SELECTION_NOTE} if split == "val" else {}),
               "target_absent": {"count": int(absent.sum()), "video_ids": clips.video_id[absent].tolist()},
               "tie_rule": "expected value under uniformly random order of tied scores", "model": block(res["scores"]),
               "baselines": {name: block(s)["overall"]
                             for name, s in heuristic_scores(res["geometry"], res["valid"], seed).items()}}
    ranks = rank_people(torch.as_tensor(res["scores"]), torch.as_tensor(present)).numpy()
    V, N = present.shape
    predictions = pd.DataFrame({
        "video_id": np.repeat(clips.video_id.to_numpy(), N), "scene_category": np.repeat(clips.scene_category.to_numpy(), N),
        "slot": np.tile(np.arange(N), V), "present": present.ravel(),
        "score": np.where(present, res["scores"], np.nan).ravel(), "rank": ranks.ravel(),
        "is_target": (np.arange(N)[None, :] == res["target"][:, None]).ravel()})
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions[predictions.present].to_parquet(out_dir / "predictions.parquet", index=False)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    m = metrics["model"]["overall"]
    log.info("%s split, %d clips: top1 %.3f [%.3f, %.3f], mrr %.3f", split, len(dataset), m["top1"]["mean"],
             *m["top1"]["ci95"], m["mrr"]["mean"])
    return metrics
