"""Reading and writing video files with OpenCV."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path
from typing import Iterator

import numpy as np


class VideoError(ValueError):
    pass


def video_info(path) -> dict:
    """Frame count, fps, width and height as the container reports them."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(f"{path}: cannot open the video (missing file or unsupported codec). "
                         "Fix: convert it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`")
    info = {"frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), "fps": cap.get(cv2.CAP_PROP_FPS) or 25.0,
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}
    cap.release()
    return info


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def release_freed_memory() -> None:
    """Hand the heap's freed pages back to the system (glibc's malloc_trim; nothing elsewhere). Each decoded frame
    is a new array of about a megabyte, and once some are freed glibc serves the next ones from its heap instead
    of fresh mappings; that heap fragments, so a long video's resident memory grew by about a resized frame per
    frame although nothing was kept (benchmarks/predict_memory.py)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def read_frames(path, release_every: int = 64, reuse: bool = False) -> Iterator[np.ndarray]:
    """Yield (H, W, 3) uint8 BGR frames (OpenCV's order) until the video ends; every ``release_every`` frames
    the memory of the frames already dropped is handed back (``release_freed_memory``). ``reuse``: decode every
    frame into the same array (no allocation per frame), for a caller that keeps nothing of a frame but copies."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(f"{path}: cannot open the video")
    try:
        count, frame = 0, None
        while True:
            ok, frame = cap.read(frame if reuse else None)
            if not ok:
                return
            yield frame
            count += 1
            if count % release_every == 0:
                release_freed_memory()
    finally:
        cap.release()


class VideoWriter:
    """MP4 (mp4v) writer; frames are BGR uint8 of the size given."""

    def __init__(self, path, fps: float, width: int, height: int):
        import cv2

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not self.writer.isOpened():
            raise VideoError(f"{path}: OpenCV cannot write MP4 here")

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(frame)

    def close(self) -> None:
        self.writer.release()
