"""Each track's score: in every window the people are scored as in training (same backbone, feature mode and
sizes), and a track's score is how many times more likely than chance the model finds it to be the VIP.

In a window of n people, a person's lift is n times its softmax probability (1 = chance, whatever n). A track's
score averages its lifts over the windows, each weighted by the share of the window's frames in which the track
is seen, and starts from one whole window at chance (``PRIOR_WINDOWS``): a fragment seen for a few frames, or
alone in a window (where any softmax is 1), stays near 1 instead of being named VIP."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

from svip_core.evaluate.evaluation import best_device, load_ranker
from svip_core.features.backbone import load_backbone, normalisation
from svip_core.features.extract import person_features_and_tokens, person_slots
from svip_core.features.geometry import box_geometry
from svip_core.features.precision import autocast, set_matmul_precision
from svip_core.predict.footage import Footage, read_footage
from svip_core.predict.model_choice import checked_backbone
from svip_core.predict.windows import training_stride, window_indices

PRIOR_WINDOWS = 1.0


@functools.lru_cache(maxsize=2)
def _networks(source: str, checkpoint: str, device: torch.device):
    """The backbone, its normalisation and the ranker, loaded once for all the videos of a call."""
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in normalisation(source))
    return load_backbone(source, device), mean, std, load_ranker(checkpoint, device, backbone=source)


@torch.no_grad()
def visible_features(backbone, frames: torch.Tensor, boxes: np.ndarray, visible: np.ndarray, cfg: dict,
                     mean: torch.Tensor, std: torch.Tensor, tuned_head=None) -> torch.Tensor:
    """frames (F, 3, h, w) uint8, boxes (F, M, 4) in [0, 1], visible (F, M) -> (P, D) float16 on the CPU: the
    features of the P visible (frame, person) pairs in np.nonzero(visible) order, each frame through the
    backbone once (windows overlap, so a frame is in about two of them): a few KB per frame, where the frame
    itself is hundreds (k*k times more with roi_pooling "grid"). A model that fine-tuned the backbone's last blocks passes them as ``tuned_head``: the
    features are then made by its tuned blocks from the trunk's tokens, as in its training."""
    width = max(int(visible.sum(1).max(initial=0)), 1)
    order = np.argsort(~visible, axis=1, kind="stable")[:, :width]                      # visible people first
    present = np.take_along_axis(visible, order, 1)                                     # (F, width)
    packed = np.take_along_axis(boxes, order[..., None], 1) * present[..., None]
    precision = cfg.get("precision", "fp32")                 # stores made before it was a setting: fp32
    packed = torch.from_numpy(packed.astype(np.float32)).to(mean.device)
    k = len(tuned_head.blocks) if tuned_head is not None else 0
    features, tokens = person_features_and_tokens(backbone, frames.to(mean.device), packed, cfg["mode"],
                                                  cfg.get("roi_samples"), cfg.get("crop_size"), mean, std, precision, k,
                                                  cfg.get("roi_pooling", "mean"))
    if tuned_head is not None:
        with autocast(precision, mean.device):
            features = tuned_head(tokens, packed)
    return features.cpu()[torch.from_numpy(present)].half()


@torch.no_grad()
def rank_people(video, people, checkpoint, device=None, batch_windows: int = 8, backbone=None
                ) -> tuple[Footage, np.ndarray]:
    """The video read once (``footage.read_footage``) with ``people`` (``GivenTracks`` or ``DetectedTracks``),
    and every track's score (K,): its visibility-weighted lift over chance (module docstring); NaN for a track
    seen in no sampled frame. Windows follow ``window_indices`` at the model's training stride."""
    meta = json.loads((Path(checkpoint) / "model.json").read_text())
    feats = meta["features"]
    cfg, max_persons = feats["features"], feats["max_persons"]
    T_win, stride = cfg["num_frames"], training_stride(meta)
    device = torch.device(device) if device else best_device()
    source = checked_backbone(feats, backbone)
    backbone, mean, std, model = _networks(str(source), str(Path(checkpoint).resolve()), device)
    set_matmul_precision(cfg.get("precision", "fp32"))
    featurize = functools.partial(visible_features, backbone, cfg=cfg, mean=mean, std=std, tuned_head=model.tuned_head)
    footage = read_footage(video, people, featurize, cfg["frame_size"], T_win, stride)
    precision = meta.get("precision", "fp32")                        # models trained before it was a setting: fp32
    set_matmul_precision(precision)
    windows = window_indices(len(footage.tracks.valid), T_win, stride)                 # (W, T_win)
    return footage, track_scores(model, footage, windows, max_persons, precision, device, batch_windows)


def track_scores(model, footage: Footage, windows: np.ndarray, max_persons: int, precision: str,
                 device: torch.device, batch_windows: int = 8) -> np.ndarray:
    """(K,) every track's score over ``windows`` (W, T_win) (module docstring); NaN for a track no window saw."""
    tracks, keys, table = footage.tracks, footage.keys, footage.features
    W_px, H_px = footage.info["width"], footage.info["height"]
    norm = np.where(tracks.valid[..., None], np.clip(tracks.boxes / np.array([W_px, H_px, W_px, H_px]), 0, 1), 0)
    K = tracks.valid.shape[1]
    if len(keys) == 0:                     # nobody is seen in any sampled frame: nobody can be scored
        return np.full(K, np.nan)
    lift_sum, seen_sum = np.zeros(K), np.zeros(K)
    for chunk in np.array_split(windows, np.arange(batch_windows, len(windows), batch_windows)):
        inside = chunk >= 0
        idx = chunk.clip(0)                                                               # (B, T_win)
        slots = np.stack([person_slots(tracks.valid[i[ok]], None, max_persons) for i, ok in zip(idx, inside)])  # (B, N)
        valid = np.take_along_axis(tracks.valid[idx], slots.clip(0)[:, None, :], 2)        # (B, T_win, N)
        valid &= inside[..., None] & (slots >= 0)[:, None, :]
        boxes = np.take_along_axis(norm[idx], slots.clip(0)[:, None, :, None], 2)
        wanted = idx[..., None] * K + slots.clip(0)[:, None, :]                           # (B, T_win, N)
        rows = np.searchsorted(keys, wanted).clip(0, len(keys) - 1)
        valid &= keys[rows] == wanted       # no features (a frame never decoded, a gap only a link closed): unseen
        boxes_t, valid_t = torch.from_numpy((boxes * valid[..., None]).astype(np.float32)), torch.from_numpy(valid)
        visual = table[torch.from_numpy(rows)].float() * valid_t[..., None]
        geometry = box_geometry(boxes_t, valid_t).to(device)
        with autocast(precision, device):
            logits = model(visual.to(device), geometry, valid_t.to(device))["logits"].float().cpu()
        probs = torch.softmax(logits, -1).numpy()                                          # (B, N), 0 for absent
        present = valid.any(1) & (slots >= 0)
        lift = probs * present.sum(1, keepdims=True)                                       # (B, N), 1 = chance
        seen = valid.sum(1) / inside.sum(1, keepdims=True)                                 # (B, N) share of frames
        np.add.at(lift_sum, slots[present], (lift * seen)[present])
        np.add.at(seen_sum, slots[present], seen[present])
    return np.where(seen_sum > 0, (lift_sum + PRIOR_WINDOWS) / (seen_sum + PRIOR_WINDOWS), np.nan)
