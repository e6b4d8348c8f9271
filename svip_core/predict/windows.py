"""The scoring windows of a long video.

The video is cut into overlapping windows of the model's clip length (``features.num_frames`` frames), sampled
at the speed training saw: training clips are spread over their whole length, so consecutive samples lie about
``frame_stride`` source frames apart (recorded by extract, read from the model's ``model.json``; 1.0 for older
models).
"""
from __future__ import annotations

import numpy as np

from svip_core.features.extract import frame_indices


def training_stride(meta: dict) -> float:
    """The source-frame stride of the model's training clips, from its model.json (1.0 before it was recorded)."""
    # Sampled indices are unique integers, so a real stride is never below 1.
    return max(1.0, float(meta.get("frame_stride", meta["features"].get("frame_stride", 1.0))))


def window_step(num_frames: int, stride: float) -> int:
    """Source frames between the starts of consecutive windows: half a window's span (at least 1)."""
    return max(1, int(stride * (num_frames - 1) // 2))


def sample_offsets(num_frames: int, stride: float) -> np.ndarray:
    """(num_frames,) int64: where a window's samples lie after its start (for a whole-numbered start).
    Rounded half up (not numpy's half to even), so equal steps never collapse two samples into one frame."""
    return np.floor(np.arange(num_frames) * stride + 0.5).astype(np.int64)


def on_regular_windows(frames: np.ndarray, num_frames: int, stride: float) -> np.ndarray:
    """(F,) bool: which frames some window starting on the regular grid (every ``window_step`` frames from 0)
    samples, whatever the video's length; only the last window, ending on the last frame, depends on it."""
    shifted = frames[:, None] - sample_offsets(num_frames, stride)[None]          # (F, num_frames)
    return ((shifted >= 0) & (shifted % window_step(num_frames, stride) == 0)).any(1)


def window_indices(T: int, num_frames: int, stride: float) -> np.ndarray:
    """Frames of every scoring window of a T-frame video: (W, num_frames) int64, sorted, -1 for padding.

    A window starting at s takes round(s + k * stride), k = 0..num_frames-1, so it spans
    span = stride * (num_frames - 1) source frames as a training clip did. Windows start every ``window_step``
    frames, plus a last one ending on the last frame, so every part of the video is covered. A video shorter
    than a span becomes one window sampled as extract samples a short clip: spread over all its frames.
    """
    span = stride * (num_frames - 1)
    if T - 1 < span:
        return frame_indices(T, num_frames)[None]
    last = T - 1 - span
    starts = np.arange(0, last, window_step(num_frames, stride), dtype=np.float64)
    starts = np.append(starts, last) if len(starts) == 0 or starts[-1] < last else starts
    idx = np.floor(starts[:, None] + np.arange(num_frames) * stride + 0.5).astype(np.int64)
    return np.minimum(idx, T - 1)
