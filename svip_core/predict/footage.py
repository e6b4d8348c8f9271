"""One pass over a raw video: its frames resized for the backbone, and the people's tracks (read from a MOT file,
or detected and tracked while the frames stream by)."""
from __future__ import annotations

import torch

from svip_core.features.extract import resize_frames
from svip_core.logs import progress
from svip_core.video.detection import load_detector
from svip_core.video.frames import read_frames, video_info
from svip_core.video.tracking import PeopleTracker
from svip_core.video.tracks import read_mot


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
