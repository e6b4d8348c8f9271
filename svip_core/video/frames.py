"""Reading and writing video files with OpenCV."""
from __future__ import annotations

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


def read_frames(path) -> Iterator[np.ndarray]:
    """Yield (H, W, 3) uint8 BGR frames (OpenCV's order) until the video ends."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoError(f"{path}: cannot open the video")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
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
