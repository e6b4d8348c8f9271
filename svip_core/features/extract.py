"""The extract stage: person features for every clip of a shard, written to one Zarr store.

Frames are decoded and resized by DataLoader workers while the backbone runs on batches of frames; each
batch is written to the store as it completes, so memory depends on the batch size, not the shard size.
"""
from __future__ import annotations

import importlib.metadata
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import svip_core
from svip_core.dataset.clip import inspect_clip
from svip_core.dataset.containers import NO_LABEL, clip_hashes, labelled
from svip_core.features.backbone import BackboneError, fetch_backbone, leading_tokens, load_backbone, normalisation
from svip_core.features.geometry import GEOMETRY_FIELDS, box_geometry
from svip_core.features.precision import autocast, set_matmul_precision
from svip_core.features.roi_pooling import crop_boxes
from svip_core.features.split_backbone import check_tuned_blocks, patch_grid, person_feature_dim, pool_persons
from svip_core.features.store import create_arrays, create_tokens, writing_store
from svip_core.hashing import ContentHashes
from svip_core.logs import progress

log = logging.getLogger(__name__)


def frame_indices(T: int, num_frames: int, frame_mask: np.ndarray | None = None, valid: np.ndarray | None = None,
                  target: int | None = None) -> np.ndarray:
    """The frames a clip is sampled to: (num_frames,) int64 source indices, sorted and unique, -1 for padding.

    Rule:
    1. Only valid frames are candidates (``frame_mask`` (T,) bool; all frames when None). With at least
       ``num_frames`` of them, the indices are spread uniformly over the candidates; with fewer, every
       candidate is taken in order and the rest is padded with -1.
    2. If ``target`` is given and the clip has frames where it is present (``valid`` (T, N) bool, already
       ANDed with the frame mask) but none of them was chosen, the chosen frames nearest to the target's
       frames are replaced by target frames spread over those: about the target's share of the valid frames,
       at least one. So a VIP visible in a few frames is never sampled out of its own clip.
    """
    ok = np.ones(T, bool) if frame_mask is None else np.asarray(frame_mask, bool)
    candidates = np.flatnonzero(ok)
    if len(candidates) < num_frames:
        return np.concatenate([candidates, np.full(num_frames - len(candidates), -1)]).astype(np.int64)
    chosen = candidates[np.linspace(0, len(candidates) - 1, num_frames).round().astype(np.int64)]
    if target is None or valid is None:
        return chosen
    seen = np.flatnonzero(np.asarray(valid, bool)[:, target] & ok)
    if len(seen) == 0 or np.isin(chosen, seen).any():
        return chosen
    want = int(np.clip(round(num_frames * len(seen) / len(candidates)), 1, len(seen)))
    # Centres of `want` equal parts of the target's frames: distinct, and the middle one when want == 1.
    picks = seen[((np.arange(want) + 0.5) * len(seen) / want).astype(np.int64)]
    distance = np.abs(chosen[:, None] - seen[None, :]).min(1)                           # (num_frames,)
    keep = np.sort(np.argsort(distance, kind="stable")[want:])
    # chosen holds no target frame, so the union is unique.
    return np.sort(np.concatenate([chosen[keep], picks]))


def frame_stride(indices: np.ndarray) -> float:
    """(num_frames,) sampled indices (-1 padding) -> source frames between consecutive samples, on average:
    (last - first) / (samples - 1); 1.0 with fewer than two samples."""
    used = indices[indices >= 0]
    return float(used[-1] - used[0]) / (len(used) - 1) if len(used) >= 2 else 1.0


def person_slots(valid: np.ndarray, target: int | None, max_persons: int) -> np.ndarray:
    """valid (T, K) -> the slots to keep, at most ``max_persons``: the target (if any), then the most visible
    people, in slot order; padded with -1 when K < max_persons."""
    visible = valid.sum(0).astype(np.int64)
    if target is not None:
        visible[target] = np.iinfo(np.int64).max
    keep = np.sort(np.argsort(-visible, kind="stable")[:max_persons])
    return np.concatenate([keep, np.full(max_persons - len(keep), -1)]) if len(keep) < max_persons else keep


def resize_frames(frames: torch.Tensor, size) -> torch.Tensor:
    """(T, 3, H, W) uint8 -> (T, 3, *size) uint8, antialiased (on whatever device the frames are)."""
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    out = F.interpolate(frames.float(), size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


class ShardClips(Dataset):
    """Clips of one shard, cut to (num_frames, max_persons), as uint8 tensors. Frames are resized to
    frame_size here (in the workers) when ``resize``; else the GPU resizes them, which is cheaper."""

    def __init__(self, members: list[dict], num_frames: int, max_persons: int, frame_size, max_array_bytes: int,
                 resize: bool = True):
        self.members, self.num_frames, self.max_persons = members, num_frames, max_persons
        self.frame_size, self.max_array_bytes, self.resize = tuple(frame_size), max_array_bytes, resize

    def __len__(self):
        return len(self.members)

    def sampled_frames(self, clip) -> np.ndarray:
        """The clip's sampled frame indices (num_frames,), -1 for padding."""
        return frame_indices(clip.num_frames, self.num_frames, clip.frame_mask, clip.valid, clip.target_index)

    def __getitem__(self, i):
        # Only the sampled frames are read (from HDF5, only their chunks); clip.frames holds them in t_idx order.
        member = self.members[i]
        clip = inspect_clip(member["path"], self.max_array_bytes, load_frames=lambda c: self.sampled_frames(c).clip(0),
                            labelled=labelled(member.get("split")))
        t_idx = self.sampled_frames(clip)
        n_idx = person_slots(clip.valid, clip.target_index, self.max_persons)
        t_ok, n_ok = t_idx >= 0, n_idx >= 0
        pick = np.ix_(t_idx.clip(0), n_idx.clip(0))
        valid = clip.valid[pick] & t_ok[:, None] & n_ok[None, :]
        frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2)                    # (T, 3, H, W) uint8
        if self.resize:
            frames = resize_frames(frames, self.frame_size)
        return {"frames": frames, "boxes": torch.from_numpy(clip.boxes[pick] * valid[..., None]),
                "valid": torch.from_numpy(valid), "frame_mask": torch.from_numpy(clip.frame_mask[t_idx.clip(0)] & t_ok),
                "target": NO_LABEL if clip.target_index is None else int(np.flatnonzero(n_idx == clip.target_index)[0]),
                "index": i,
                "scene": clip.scene_category, "frame_stride": frame_stride(t_idx)}


def person_features(backbone, frames: torch.Tensor, boxes: torch.Tensor, mode: str, roi_samples: int | None,
                    crop_size: int | None, mean: torch.Tensor, std: torch.Tensor, precision: str,
                    roi_pooling: str = "mean") -> torch.Tensor:
    """frames (F, 3, H, W) uint8, boxes (F, N, 4) -> L2-normalised person features (F, N, D') float32 (D' the
    backbone's width D, k*k D with roi_pooling "grid": ``split_backbone.person_feature_dim``).
    ``roi_samples`` is read in roi mode only, ``crop_size`` in crop mode only; ``precision``: the backbone's
    numeric mode (``features.precision``); ``roi_pooling`` (roi mode): "mean" or "grid" (``roi_pooling.roi_pool``)."""
    return person_features_and_tokens(backbone, frames, boxes, mode, roi_samples, crop_size, mean, std, precision,
                                      roi_pooling=roi_pooling)[0]


@torch.no_grad()
def person_features_and_tokens(backbone, frames: torch.Tensor, boxes: torch.Tensor, mode: str,
                               roi_samples: int | None, crop_size: int | None, mean: torch.Tensor, std: torch.Tensor,
                               precision: str, tuned_blocks: int = 0, roi_pooling: str = "mean"
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``person_features``, and from the same backbone pass the tokens entering block L-k for k =
    ``tuned_blocks`` > 0 (``split_backbone``: what the tuned head is fed): roi mode (F, S, D) per frame, crop mode
    (F*N, S, D) per person's crop, frame-major; None for k = 0."""
    pixels = (frames.float() / 255.0 - mean) / std
    patch = backbone.config.patch_size
    inputs = pixels if mode == "roi" else crop_boxes(pixels, boxes, crop_size).flatten(0, 1)   # crops (F*N, 3, S, S)
    if tuned_blocks:
        check_tuned_blocks(backbone, tuned_blocks)
    with autocast(precision, pixels.device):
        out = backbone(pixel_values=inputs, output_hidden_states=bool(tuned_blocks))
        hidden = out.last_hidden_state                                                # (F or F*N, lead + h*w, D)
        tokens = out.hidden_states[backbone.config.num_hidden_layers - tuned_blocks] if tuned_blocks else None
        h, w = pixels.shape[-2] // patch, pixels.shape[-1] // patch
        lead = leading_tokens(backbone.config)
        if mode == "roi" and hidden.shape[1] != lead + h * w:
            raise BackboneError(f"the backbone ({type(backbone).__name__}) gives {hidden.shape[1]} tokens for a "
                                f"{h}x{w} patch grid, not {lead} (CLS and registers) + {h * w}: not a DINOv2-like "
                                "model. Fix: set features.backbone to a DINOv2 or DINOv3 model")
        feats = pool_persons(hidden, boxes, mode, lead, (h, w), roi_samples, roi_pooling)
    return feats, tokens


def token_shape(config, features_cfg: dict, T: int, N: int) -> tuple[int, ...]:
    """A clip's tokens for the tuned blocks: (T, S, D) in roi mode, (T, N, S, D) in crop mode, S = leading
    tokens + patches of a frame or crop (the patch embedding's stride drops a partial patch)."""
    lead, grid = leading_tokens(config), patch_grid(config, features_cfg)
    if grid is not None:
        return T, lead + grid[0] * grid[1], config.hidden_size
    return T, N, lead + (features_cfg["crop_size"] // config.patch_size) ** 2, config.hidden_size


def check_members(members: list[dict], cache: ContentHashes | None = None,
                  max_array_bytes: int = 2_000_000_000) -> None:
    """Refuse to extract clips whose files no longer hold the content their shard key was made from (edited
    after prepare): the store would be filed under a key that does not describe it."""
    found = clip_hashes([m["path"] for m in members if "content_hash" in m], cache, max_array_bytes)
    changed = [m["path"] for m in members if "content_hash" in m and found[str(m["path"])][0] != m["content_hash"]]
    if changed:
        raise RuntimeError(f"{len(changed)} clip(s) changed since prepare listed them, e.g. {changed[0]}. "
                           f"Fix: run snakemake again (prepare will see the new content)")


def extract_shard(members: list[dict], out_path, features_cfg: dict, max_persons: int, backbone_path,
                  attrs: dict, max_array_bytes: int = 2_000_000_000, device: str | None = None,
                  cache: ContentHashes | None = None, tuned_blocks: int = 0) -> dict:
    """Write the feature store of one shard to ``out_path``; returns timing figures. Members' files are checked
    against their content hashes first (through ``cache`` when given). ``tuned_blocks`` = k > 0 also stores the
    tokens entering block L-k (``store.create_tokens``), from the same backbone pass."""
    check_members(members, cache, max_array_bytes)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone_path = fetch_backbone(backbone_path)       # a hub id's weights are downloaded here, not at planning
    backbone = load_backbone(backbone_path, device)
    set_matmul_precision(features_cfg["precision"])
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in normalisation(backbone_path))
    dataset = ShardClips(members, features_cfg["num_frames"], max_persons, features_cfg["frame_size"], max_array_bytes,
                         resize=device.type == "cpu")
    loader = DataLoader(dataset, batch_size=features_cfg["batch_clips"], num_workers=features_cfg["workers"],
                        pin_memory=device.type == "cuda", collate_fn=_collate,
                        prefetch_factor=4 if features_cfg["workers"] else None)
    V, T, N = len(dataset), features_cfg["num_frames"], max_persons
    D, G = person_feature_dim(backbone.config, features_cfg), len(GEOMETRY_FIELDS)
    versions = {name: importlib.metadata.version(name) for name in ("torch", "transformers", "zarr", "numpy")}
    # How these features were made: enough for `svip predict` to make the same ones from a raw video.
    backbone_source = str(backbone_path.resolve())
    attrs = {**attrs, "features": features_cfg, "backbone": backbone_source, "max_persons": max_persons, "feature_dim": D, "geometry_fields": list(GEOMETRY_FIELDS), "versions": versions,
             "svip": svip_core.__version__, "device": device.type}
    if tuned_blocks:
        attrs["tuned_blocks"] = tuned_blocks        # checked with the first batch (person_features_and_tokens)
    start, batch_done, strides = time.perf_counter(), [], []
    # One writer thread compresses and writes batch i while the backbone runs on batch i+1; waiting for the
    # previous write before queueing the next keeps at most two batches in memory.
    with writing_store(out_path, attrs) as store, ThreadPoolExecutor(max_workers=1) as writer:
        create_arrays(store, V, T, N, D, G)
        if tuned_blocks:
            create_tokens(store, V, token_shape(backbone.config, features_cfg, T, N))
        store["video_id"][:] = np.array([m["video_id"] for m in members], dtype=str)
        store["split"][:] = np.array([m["split"] for m in members], dtype=str)
        pending = None
        for batch in progress(loader, desc=f"extract {Path(out_path).name}", unit="batch"):
            B = len(batch["index"])
            frames = torch.stack([resize_frames(f.to(device, non_blocking=True), features_cfg["frame_size"])
                                  for f in batch["frames"]]).flatten(0, 1)            # (B*T, 3, H, W)
            boxes = batch["boxes"].to(device, non_blocking=True).flatten(0, 1)        # (B*T, N, 4)
            frame_ok = batch["frame_mask"].flatten().to(device)
            feats = torch.zeros(B * T, N, D, device=device)
            # Padded and invalid frames never reach the backbone.
            feats[frame_ok], found = person_features_and_tokens(
                backbone, frames[frame_ok], boxes[frame_ok], features_cfg["mode"], features_cfg.get("roi_samples"),
                features_cfg.get("crop_size"), mean, std, features_cfg["precision"], tuned_blocks,
                features_cfg.get("roi_pooling", "mean"))
            valid = batch["valid"].to(device)
            visual = (feats.view(B, T, N, D) * valid[..., None]).half().cpu()
            tokens = None
            if tuned_blocks:
                tokens = found.new_zeros((B * T, *found.shape[1:]) if features_cfg["mode"] == "roi" else
                                         (B * T, N, *found.shape[1:]))
                tokens[frame_ok] = found.view(-1, *tokens.shape[1:])
                if features_cfg["mode"] == "crop":
                    tokens = tokens * valid.flatten(0, 1)[..., None, None]
                tokens = tokens.view(B, T, *tokens.shape[1:]).half().cpu()
            if pending is not None:
                pending.result()
            batch_done.append(time.perf_counter())
            pending = writer.submit(_write_batch, store, batch, visual, tokens)
            strides.append(batch["frame_stride"].numpy())
        if pending is not None:
            pending.result()
        # The shard's typical sampling speed; it reaches model.json, so `svip predict` samples time alike.
        stride = float(np.median(np.concatenate(strides))) if strides else 1.0
        store.attrs["frame_stride"] = stride
    # Steady state: the second half of the batches, once the model is loaded and the workers are running.
    half = len(batch_done) // 2
    steady = (len(batch_done) - 1 - half) * features_cfg["batch_clips"] * T / (batch_done[-1] - batch_done[half]) \
        if len(batch_done) >= 4 else None
    return {"clips": V, "seconds": time.perf_counter() - start, "steady_frames_per_s": steady, "frame_stride": stride}


def _write_batch(store, batch: dict, visual: torch.Tensor, tokens: torch.Tensor | None) -> None:
    rows = slice(int(batch["index"][0]), int(batch["index"][-1]) + 1)
    valid = batch["valid"]
    store["visual"][rows] = visual.numpy()
    if tokens is not None:
        store["tokens"][rows] = tokens.numpy()
    store["geometry"][rows] = box_geometry(batch["boxes"], valid).numpy()
    store["person_mask"][rows] = valid.numpy()
    store["frame_mask"][rows] = batch["frame_mask"].numpy()
    store["target_index"][rows] = batch["target"].numpy()
    store["scene_category"][rows] = np.array(batch["scene"], dtype=str)
    store["frame_stride"][rows] = batch["frame_stride"].numpy()


def _collate(items: list[dict]) -> dict:
    out = {k: torch.stack([it[k] for it in items]) for k in ("boxes", "valid", "frame_mask")}
    out["frames"] = [it["frames"] for it in items]          # clips may differ in size until resized
    out["target"] = torch.tensor([it["target"] for it in items])
    out["index"] = torch.tensor([it["index"] for it in items])
    out["frame_stride"] = torch.tensor([it["frame_stride"] for it in items], dtype=torch.float32)
    out["scene"] = [it["scene"] for it in items]
    return out
