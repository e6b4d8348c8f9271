"""Turning a raw video and its tracks into a clip of the MSG_VIP contract (``svip import``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from svip_core.atomic import atomic_path
from svip_core.video.frames import read_frames, video_info
from svip_core.video.tracks import TracksError, read_mot


def video_to_clip(video, tracks_path, vip_track: int | None, out_root, split: str = "train",
                  video_id: str | None = None, category: str = "unknown", max_frames: int = 120,
                  max_side: int = 384) -> Path:
    """Write ``<out_root>/<split>/<video_id>.npz``: frames uniformly subsampled to at most ``max_frames`` and
    resized so the longer side is at most ``max_side``; one slot per track; the VIP's slot as the target, or -1
    (the contract's ``dataset.containers.NO_LABEL``, a module beside this one) when ``vip_track`` is None: a clip
    of the unlabelled split."""
    import cv2

    info = video_info(video)
    tracks = read_mot(tracks_path, info["frames"])
    if vip_track is not None and vip_track not in tracks.ids:
        raise TracksError(f"{tracks_path}: no track with id {vip_track}; ids are {tracks.ids.tolist()}")
    T = info["frames"]
    keep = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int))
    scale = min(1.0, max_side / max(info["width"], info["height"]))
    W, H = round(info["width"] * scale), round(info["height"] * scale)
    wanted, frames = set(keep.tolist()), []
    for t, frame in enumerate(read_frames(video)):
        if t in wanted:
            frames.append(cv2.resize(frame, (W, H), interpolation=cv2.INTER_AREA)[..., ::-1])
    if len(frames) != len(keep):
        raise TracksError(f"{video}: read {len(frames)} of the {len(keep)} frames expected; the file may be damaged")
    valid = tracks.valid[keep]
    present = valid.any(0)                                     # tracks seen in the kept frames
    boxes, valid, ids = tracks.boxes[keep][:, present] * scale, valid[:, present], tracks.ids[present]
    if vip_track is not None and vip_track not in ids:
        raise TracksError(f"track {vip_track} is not visible in the sampled frames; raise --max-frames")
    video_id = video_id or Path(video).stem
    arrays = {"frames": np.stack(frames).astype(np.uint8), "bboxes": boxes.astype(np.float32), "person_mask": valid,
              "frame_mask": np.ones(len(keep), bool), "person_ids": np.where(valid, ids[None, :], -1).astype(np.int64),
              "original_ids": ids.astype(np.int64),
              "target_index": np.int64(-1 if vip_track is None else np.flatnonzero(ids == vip_track)[0]),
              "video_id": np.array(video_id), "scene_category": np.array(category)}
    out = Path(out_root) / split / f"{video_id}.npz"
    with atomic_path(out) as tmp:
        np.savez_compressed(tmp, **arrays)
    return out
