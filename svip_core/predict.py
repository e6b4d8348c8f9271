"""Rank the people of a raw video with a trained model (``svip predict``).

The video is cut into overlapping windows of the model's clip length (``features.num_frames`` frames), sampled
at the speed training saw: training clips are spread over their whole length, so consecutive samples lie about
``frame_stride`` source frames apart (recorded by extract, read from the model's ``model.json``; 1.0 for older
models). In each window the people are scored as in training (same backbone, feature mode and sizes); a
track's final score is the mean, over the windows where it is present, of its softmax probability of being the
VIP in that window.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from svip_core.evaluate.evaluation import best_device, load_ranker
from svip_core.evaluate.metrics import format_interval
from svip_core.features.backbone import load_backbone, normalisation
from svip_core.features.extract import frame_indices, person_features, person_slots, resize_frames
from svip_core.features.geometry import box_geometry
from svip_core.io.detection import load_detector
from svip_core.io.tracking import PeopleTracker
from svip_core.io.tracks import Tracks, read_mot, write_mot
from svip_core.io.video import VideoWriter, read_frames, video_info
from svip_core.logs import progress

log = logging.getLogger(__name__)


def newest_checkpoint(results="results") -> Path:
    """The newest trained full model under results/train/ (ablations only when there is nothing else)."""
    models = sorted(Path(results).glob("train/*/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if not models:
        raise FileNotFoundError(f"no trained model under {results}/train/. Fix: run the workflow (`make demo`) "
                                "or pass --checkpoint DIR")

    def is_full(model: Path) -> bool:
        config = model.parent / "config.json"
        return config.exists() and json.loads(config.read_text()).get("run", "full/").startswith("full/")

    full = [m for m in models if is_full(m)]
    return (full or models)[-1].parent


def describe_model(checkpoint) -> str:
    """One line naming the model that ranks: its folder, its run (variant/seed) and, when the workflow evaluated
    it (a results/evaluate/*/ folder whose upstream is this train hash), its top-1 with the 95% interval."""
    checkpoint = Path(checkpoint)
    config = checkpoint / "config.json"
    run = json.loads(config.read_text()).get("run") if config.is_file() else None
    parts = [f"run {run}"] if run else []
    for evaluated in sorted(checkpoint.parent.parent.glob("evaluate/*/config.json")):
        if json.loads(evaluated.read_text()).get("upstream", {}).get("train") != checkpoint.name:
            continue
        metrics = evaluated.parent / "metrics.json"
        if metrics.is_file():
            m = json.loads(metrics.read_text())
            parts.append(f"{m['split']} top-1 {format_interval(m['model']['overall']['top1'])} on {m['clips']} clips")
            break
    return f"model: {checkpoint}" + (f" ({', '.join(parts)})" if parts else "")


def load_video(video, frame_size, tracks_path=None, detect_every: int = 3, detector: str = "auto"):
    """One pass over the video: frames resized for the backbone (T, 3, h, w) uint8, the tracks (read from
    ``tracks_path``, else detected and tracked), and the video's info with the tracker used."""
    info = video_info(video)
    tracker = None
    if not tracks_path:
        found = load_detector(detector)
        tracker = PeopleTracker(found, detect_every=detect_every)
        info["tracks_source"] = f"detected ({found.name}, every {tracker.detect_every} frames) + DeepSORT"
    small = []
    for frame in progress(read_frames(video), total=info["frames"], desc="read video", unit="frame"):
        rgb = torch.from_numpy(frame[..., ::-1].copy()).permute(2, 0, 1)
        small.append(resize_frames(rgb[None], frame_size)[0])
        if tracker is not None:
            tracker.step(frame)
    frames = torch.stack(small)
    T = len(frames)
    tracks = tracker.tracks() if tracker is not None else read_mot(tracks_path, T)
    return frames, tracks, {**info, "frames": T, "tracks_source": info.get("tracks_source", str(tracks_path))}


def training_stride(meta: dict) -> float:
    """The source-frame stride of the model's training clips, from its model.json (1.0 before it was recorded)."""
    # Sampled indices are unique integers, so a real stride is never below 1.
    return max(1.0, float(meta.get("frame_stride", meta["features"].get("frame_stride", 1.0))))


def window_indices(T: int, num_frames: int, stride: float) -> np.ndarray:
    """Frames of every scoring window of a T-frame video: (W, num_frames) int64, sorted, -1 for padding.

    A window starting at s takes round(s + k * stride), k = 0..num_frames-1, so it spans
    span = stride * (num_frames - 1) source frames as a training clip did. Windows start every max(1, span // 2)
    frames, plus a last one ending on the last frame, so every part of the video is covered. A video shorter
    than a span becomes one window sampled as extract samples a short clip: spread over all its frames.
    """
    span = stride * (num_frames - 1)
    if T - 1 < span:
        return frame_indices(T, num_frames)[None]
    last = T - 1 - span
    starts = np.arange(0, last, max(1, int(span // 2)), dtype=np.float64)
    starts = np.append(starts, last) if len(starts) == 0 or starts[-1] < last else starts
    # Round half up (not numpy's half to even), so equal steps never collapse two samples into one frame.
    idx = np.floor(starts[:, None] + np.arange(num_frames) * stride + 0.5).astype(np.int64)
    return np.minimum(idx, T - 1)


def checked_backbone(feats: dict, override=None) -> str:
    """The folder of the backbone the model's features were made with: the recorded one, or ``override`` (the
    same weights moved elsewhere). Its weights and configs must match the identity recorded at extraction."""
    source = str(override or feats["backbone"])
    recorded = feats.get("identity", {}).get("backbone", {})
    if recorded.get("kind") != "weights":      # the embedded backbone lives in the results it was built for
        return source
    from svip_core.stages import backbone_identity

    if not Path(source).is_dir() or backbone_identity({"backbone": source}) != recorded:
        raise RuntimeError(f"the backbone this model's features were made with is not at {source} (moved or "
                           f"changed). Fix: pass --backbone FOLDER holding those same weights")
    return source


@torch.no_grad()
def score_tracks(frames: torch.Tensor, tracks: Tracks, size: tuple[int, int], checkpoint, device=None,
                 batch_windows: int = 8, backbone=None) -> np.ndarray:
    """Mean per-window VIP probability of every track, (K,); NaN for a track the model never saw. Windows follow
    ``window_indices`` at the model's training stride."""
    meta = json.loads((Path(checkpoint) / "model.json").read_text())
    feats = meta["features"]
    cfg, max_persons = feats["features"], feats["max_persons"]
    T_win, stride = cfg["num_frames"], training_stride(meta)
    device = torch.device(device) if device else best_device()
    source = checked_backbone(feats, backbone)
    backbone = load_backbone(source, device)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in normalisation(source))
    model = load_ranker(checkpoint, device)
    W_px, H_px = size
    norm = np.where(tracks.valid[..., None], np.clip(tracks.boxes / np.array([W_px, H_px, W_px, H_px]), 0, 1), 0)

    T, K = tracks.valid.shape
    windows = window_indices(T, T_win, stride)                                         # (W, T_win)
    prob_sum, count = np.zeros(K), np.zeros(K)
    for chunk in progress(np.array_split(windows, np.arange(batch_windows, len(windows), batch_windows)), desc="score",
                      unit="batch"):
        inside = chunk >= 0
        idx = chunk.clip(0)                                                               # (B, T_win)
        slots = np.stack([person_slots(tracks.valid[i[ok]], None, max_persons) for i, ok in zip(idx, inside)])  # (B, N)
        valid = np.take_along_axis(tracks.valid[idx], slots.clip(0)[:, None, :], 2)        # (B, T_win, N)
        valid &= inside[..., None] & (slots >= 0)[:, None, :]
        boxes = np.take_along_axis(norm[idx], slots.clip(0)[:, None, :, None], 2) * valid[..., None]
        boxes_t, valid_t = torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(valid)
        B = len(chunk)
        window_frames = frames[torch.from_numpy(idx).flatten()].to(device)                 # (B*T_win, 3, h, w)
        visual = person_features(backbone, window_frames, boxes_t.flatten(0, 1).to(device), cfg["mode"],
                                 cfg.get("roi_samples"), cfg.get("crop_size"), mean, std).view(B, T_win, max_persons, -1)
        visual = visual * valid_t.to(device)[..., None]
        geometry = box_geometry(boxes_t, valid_t).to(device)
        logits = model(visual, geometry, valid_t.to(device))["logits"].float().cpu()
        probs = torch.softmax(logits, -1).numpy()                                          # (B, N), 0 for absent
        present = valid.any(1) & (slots >= 0)
        np.add.at(prob_sum, slots[present], probs[present])
        np.add.at(count, slots[present], 1)
    return np.where(count > 0, prob_sum / np.maximum(count, 1), np.nan)


def annotate(video, out_path, tracks: Tracks, scores: np.ndarray, fps: float, width: int, height: int) -> int:
    """Write the video with every track's box and score; the VIP in thick red. Returns frames written."""
    import cv2
    import matplotlib

    finite = np.nan_to_num(scores, nan=0.0)
    vip = int(np.argmax(finite)) if len(scores) else -1
    colours = (np.array(matplotlib.colormaps["viridis"](finite / max(finite.max(initial=0), 1e-9)))[:, :3] * 255)[:, ::-1]
    writer = VideoWriter(out_path, fps, width, height)
    written = 0
    for t, frame in enumerate(read_frames(video)):
        for k in np.flatnonzero(tracks.valid[t]):
            x1, y1, x2, y2 = tracks.boxes[t, k].astype(int)
            is_vip = k == vip
            colour = (0, 0, 255) if is_vip else tuple(int(c) for c in colours[k])
            cv2.rectangle(frame, (x1, y1), (x2, y2), colour, 4 if is_vip else 2)
            label = f"{'VIP ' if is_vip else ''}#{tracks.ids[k]} {finite[k]:.2f}"
            cv2.putText(frame, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 2 if is_vip else 1)
        writer.write(frame)
        written += 1
    writer.close()
    return written


def predict_video(video, out_dir, checkpoint=None, tracks_path=None, detect_every: int = 3, detector: str = "auto",
                  device=None, backbone=None) -> dict:
    """Rank the people of ``video``; writes ranking.csv, ranking.json, tracks.txt and annotated.mp4."""
    checkpoint = Path(checkpoint) if checkpoint else newest_checkpoint()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = json.loads((checkpoint / "model.json").read_text())
    frame_size = meta["features"]["features"]["frame_size"]
    frames, tracks, info = load_video(video, frame_size, tracks_path, detect_every, detector)
    if len(tracks.ids) == 0:
        raise RuntimeError(f"{video}: no person was detected or tracked. Fix: pass --tracks with a MOT file")
    scores = score_tracks(frames, tracks, (info["width"], info["height"]), checkpoint, device, backbone=backbone)
    stride = training_stride(meta)
    order = np.argsort(-np.nan_to_num(scores, nan=-1.0), kind="stable")
    ranking = pd.DataFrame({"track_id": tracks.ids[order], "score": scores[order], "rank": np.arange(1, len(order) + 1),
                            "frames_visible": tracks.valid.sum(0)[order]})
    ranking.to_csv(out_dir / "ranking.csv", index=False)
    write_mot(tracks, out_dir / "tracks.txt")
    written = annotate(video, out_dir / "annotated.mp4", tracks, scores, info["fps"], info["width"], info["height"])
    result = {"video": str(video), "checkpoint": str(checkpoint), "frames": info["frames"], "frames_written": written,
              "tracks_source": info["tracks_source"],
              "frame_stride": stride,
              "windows": len(window_indices(info["frames"], meta["features"]["features"]["num_frames"], stride)),
              "vip_track_id": int(ranking.track_id.iloc[0]),
              "ranking": ranking.astype({"track_id": int, "rank": int, "frames_visible": int}).to_dict("records")}
    (out_dir / "ranking.json").write_text(json.dumps(result, indent=1, default=float))
    log.info("%s: %d tracks, VIP is track %d", video, len(tracks.ids), result["vip_track_id"])
    return result
