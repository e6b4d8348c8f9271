"""Streaming passes over a raw video, none keeping its frames: the people's tracks (read from a MOT file, or
detected and tracked while the frames stream by), then the frames the scoring windows sample, resized for the
backbone a batch at a time. Memory is bounded by a batch, whatever the video's length."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from svip_core.features.extract import resize_frames
from svip_core.logs import progress
from svip_core.video.detection import load_detector
from svip_core.video.frames import grab_count, read_frames, video_info
from svip_core.video.tracking import PeopleTracker
from svip_core.video.tracks import Tracks, read_mot


def track_people(video, tracks_path=None, detect_every: int = 3, detector: str = "auto") -> tuple[Tracks, dict]:
    """The tracks (read from ``tracks_path``, else detected and tracked) over the video's frames as decoded (a
    container's own count can be wrong), and the video's info with where the tracks came from."""
    info = video_info(video)
    if tracks_path:
        T = grab_count(video)
        return read_mot(tracks_path, T), {**info, "frames": T, "tracks_source": str(tracks_path)}
    found = load_detector(detector)
    tracker = PeopleTracker(found, detect_every=detect_every)
    T = 0
    for frame in progress(read_frames(video), total=info["frames"], desc="track people", unit="frame"):
        tracker.step(frame)
        T += 1
    return tracker.tracks(), {**info, "frames": T, "tracks_source":
                              f"detected ({found.name}, every {tracker.detect_every} frames) + DeepSORT"}


def sampled_frames(video, wanted: np.ndarray, frame_size, batch_frames: int = 64) -> Iterator[tuple[np.ndarray,
                                                                                                  torch.Tensor]]:
    """Batches of (frame indices (F,), frames (F, 3, h, w) uint8 RGB resized to ``frame_size``) for the sorted
    ``wanted`` frame indices, decoded in one pass; frames not wanted are skipped without being resized."""
    wanted = set(int(t) for t in wanted)
    index, batch = [], []
    for t, frame in enumerate(read_frames(video, reuse=True)):
        if t not in wanted:
            continue
        rgb = torch.from_numpy(frame[..., ::-1].copy()).permute(2, 0, 1)
        index.append(t)
        batch.append(resize_frames(rgb[None], frame_size)[0])
        if len(batch) == batch_frames:
            yield np.array(index), torch.stack(batch)
            index, batch = [], []
    if batch:
        yield np.array(index), torch.stack(batch)
