"""People tracks of a raw video: MOTChallenge files, and detection + tracking when there is no file.

Detection uses OpenCV's HOG people detector (a well-kept, CPU-only classic that ships with opencv 4.x and
needs no downloaded weights, which this tool cannot fetch); tracking is greedy IoU association between
detections, with boxes interpolated between detection frames.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

MOT_COLUMNS = ["frame", "id", "left", "top", "width", "height", "conf", "x", "y", "z"]


class TracksError(ValueError):
    pass


@dataclasses.dataclass
class Tracks:
    """K tracks over T frames: boxes (T, K, 4) xyxy pixels, valid (T, K) bool, ids (K,) track ids."""

    boxes: np.ndarray
    valid: np.ndarray
    ids: np.ndarray

    def select(self, keep: np.ndarray) -> "Tracks":
        return Tracks(self.boxes[:, keep], self.valid[:, keep], self.ids[keep])


def read_mot(path, num_frames: int) -> Tracks:
    """Parse a MOTChallenge file (frame numbers from 1). Lines past the video's end are refused."""
    path = Path(path)
    try:
        table = pd.read_csv(path, header=None, comment="#", skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise TracksError(f"{path}: not a MOTChallenge text file ({e}). Fix: one line per box: "
                          "frame, id, bb_left, bb_top, bb_width, bb_height, conf, x, y, z") from None
    if table.shape[1] < 6:
        raise TracksError(f"{path}: {table.shape[1]} columns, need at least 6 (frame, id, left, top, width, height)")
    table = table.iloc[:, :6].set_axis(MOT_COLUMNS[:6], axis=1)
    numeric = table.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().any(axis=1) | (numeric.width <= 0) | (numeric.height <= 0) | (numeric.frame < 1)
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 1
        raise TracksError(f"{path}: line {line}: a box needs frame >= 1 and positive width and height. "
                          f"Fix: correct or drop that line")
    if (numeric.frame > num_frames).any():
        raise TracksError(f"{path}: frame {int(numeric.frame.max())} is past the video's {num_frames} frames")
    ids = np.sort(numeric.id.astype(np.int64).unique())
    slot = np.searchsorted(ids, numeric.id.astype(np.int64).to_numpy())
    t = numeric.frame.astype(np.int64).to_numpy() - 1
    boxes = np.zeros((num_frames, len(ids), 4), np.float32)
    valid = np.zeros((num_frames, len(ids)), bool)
    xywh = numeric[["left", "top", "width", "height"]].to_numpy(np.float32)
    boxes[t, slot] = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    valid[t, slot] = True
    return Tracks(boxes, valid, ids)


def write_mot(tracks: Tracks, path) -> None:
    t, k = np.nonzero(tracks.valid)
    b = tracks.boxes[t, k]
    table = pd.DataFrame({"frame": t + 1, "id": tracks.ids[k], "left": b[:, 0], "top": b[:, 1],
                          "width": b[:, 2] - b[:, 0], "height": b[:, 3] - b[:, 1], "conf": 1, "x": -1, "y": -1, "z": -1})
    table.to_csv(path, header=False, index=False, float_format="%.2f")


class PeopleDetector:
    """OpenCV HOG + linear SVM people detector, with non-maximum suppression."""

    def __init__(self, upscale: float = 1.5, scale: float = 1.1, min_score: float = 0.3, nms: float = 0.4):
        import cv2

        # HOG's window is 64x128: people shorter than ~128 px are found only in an upscaled frame.
        self.cv2, self.upscale, self.scale, self.min_score, self.nms = cv2, upscale, scale, min_score, nms
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def __call__(self, frame_bgr: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (D, 4) xyxy boxes."""
        if self.upscale != 1:
            frame_bgr = self.cv2.resize(frame_bgr, None, fx=self.upscale, fy=self.upscale)
        rects, weights = self.hog.detectMultiScale(frame_bgr, winStride=(8, 8), padding=(8, 8), scale=self.scale)
        if len(rects) == 0:
            return np.zeros((0, 4), np.float32)
        keep = self.cv2.dnn.NMSBoxes(rects.tolist(), np.ravel(weights).tolist(), self.min_score, self.nms)
        rects = rects[np.ravel(keep)] if len(keep) else rects[:0]
        return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], 1).astype(np.float32) / self.upscale


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (A, 4), b (B, 4) xyxy -> (A, B) intersection over union."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def track_detections(detections: dict[int, np.ndarray], num_frames: int, iou_threshold: float = 0.3,
                     max_missed: int = 2, min_hits: int = 3) -> Tracks:
    """Greedy IoU association of detections {frame: (D, 4)} into tracks; a track ends after ``max_missed``
    detection rounds without a match and is kept with at least ``min_hits`` detections. Between its
    detections a track's box is interpolated linearly; it is valid from its first to its last detection."""
    finished, active = [], []                    # a track: {"frames": [...], "boxes": [...], "missed": int}
    for t in sorted(detections):
        dets = detections[t]
        matched = set()
        if active and len(dets):
            overlap = iou(np.stack([tr["boxes"][-1] for tr in active]), dets)
            for flat in np.argsort(-overlap, axis=None):
                i, j = np.unravel_index(flat, overlap.shape)
                if overlap[i, j] < iou_threshold:
                    break
                if active[i]["missed"] >= 0 and j not in matched:
                    active[i]["frames"].append(t)
                    active[i]["boxes"].append(dets[j])
                    active[i]["missed"] = -1         # matched this round
                    matched.add(j)
        for tr in active:
            tr["missed"] = 0 if tr["missed"] < 0 else tr["missed"] + 1
        finished += [tr for tr in active if tr["missed"] > max_missed]
        active = [tr for tr in active if tr["missed"] <= max_missed]
        active += [{"frames": [t], "boxes": [dets[j]], "missed": 0} for j in range(len(dets)) if j not in matched]
    kept = [tr for tr in finished + active if len(tr["frames"]) >= min_hits]
    kept.sort(key=lambda tr: tr["frames"][0])
    boxes = np.zeros((num_frames, len(kept), 4), np.float32)
    valid = np.zeros((num_frames, len(kept)), bool)
    frames = np.arange(num_frames)
    for k, tr in enumerate(kept):
        f, b = np.array(tr["frames"]), np.stack(tr["boxes"])
        span = (frames >= f[0]) & (frames <= f[-1])
        boxes[span, k] = np.stack([np.interp(frames[span], f, b[:, c]) for c in range(4)], -1)
        valid[span, k] = True
    return Tracks(boxes, valid, np.arange(1, len(kept) + 1))
