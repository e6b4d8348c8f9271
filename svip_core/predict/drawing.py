"""The annotated video: every track's box and score, the VIP in thick red, labels that never cover each other."""
from __future__ import annotations

import numpy as np

from svip_core.video.frames import VideoWriter, read_frames
from svip_core.video.tracks import Tracks

FONT_SCALE = 0.5


def label_rects(boxes: np.ndarray, sizes: np.ndarray, height: int) -> np.ndarray:
    """boxes (N, 4) xyxy, label sizes (N, 2) (w, h, baseline included) -> (N, 4) the labels' rectangles x1, y1,
    x2, y2, placed in order of priority (the first keeps its place): above its box if free, else further up,
    else inside its box going down, so that no label covers another (people standing close would share a row)."""
    rects = np.zeros((len(boxes), 4))
    for i, ((x1, y1, _, y2), (w, h)) in enumerate(zip(boxes, sizes)):
        step = h + 2
        above = [y1 - 4 - k * step for k in range(4)]
        inside = [y1 + h + 2 + k * step for k in range(max(0, int((y2 - y1) // step)))]
        bottoms = [y for y in above + inside if h <= y <= height] or [max(h, y1 - 4)]
        placed = rects[:i]
        for y in bottoms:
            free = ~((x1 < placed[:, 2]) & (placed[:, 0] < x1 + w) & (y - h < placed[:, 3]) & (placed[:, 1] < y))
            if free.all():
                break
        else:
            y = bottoms[0]
        rects[i] = x1, y - h, x1 + w, y
    return rects


def frame_labels(tracks: Tracks, scores: np.ndarray, vip: int, t: int, height: int):
    """Frame t's visible tracks (VIP first), their label texts and rectangles (``label_rects``)."""
    import cv2

    visible = np.flatnonzero(tracks.valid[t])
    visible = visible[np.argsort(visible != vip, kind="stable")]
    texts = [f"{'VIP ' if k == vip else ''}#{tracks.ids[k]} "
             + (f"{scores[k]:.2f}x" if np.isfinite(scores[k]) else "not scored") for k in visible]
    sizes = np.zeros((len(texts), 2))
    for i, (text, k) in enumerate(zip(texts, visible)):
        (w, h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE, 2 if k == vip else 1)
        sizes[i] = w, h + baseline
    return visible, texts, label_rects(tracks.boxes[t, visible], sizes, height)


def annotate(video, out_path, tracks: Tracks, scores: np.ndarray, fps: float, width: int, height: int) -> int:
    """Write the video with every track's box and score; the VIP in thick red. Returns frames written."""
    import cv2
    import matplotlib

    finite = np.nan_to_num(scores, nan=0.0)
    vip = int(np.argmax(finite)) if np.isfinite(scores).any() else -1
    colours = (np.array(matplotlib.colormaps["viridis"](finite / max(finite.max(initial=0), 1e-9)))[:, :3] * 255)[:, ::-1]
    writer = VideoWriter(out_path, fps, width, height)
    written = 0
    for t, frame in enumerate(read_frames(video, reuse=True)):
        visible, texts, rects = frame_labels(tracks, scores, vip, t, height)
        for k, text, (x, _, _, y) in zip(visible, texts, rects.astype(int)):
            x1, y1, x2, y2 = tracks.boxes[t, k].astype(int)
            is_vip = k == vip
            colour = (0, 0, 255) if is_vip else tuple(int(c) for c in colours[k])
            cv2.rectangle(frame, (x1, y1), (x2, y2), colour, 4 if is_vip else 2)
            cv2.putText(frame, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, FONT_SCALE, colour, 2 if is_vip else 1)
        writer.write(frame)
        written += 1
    writer.close()
    return written
