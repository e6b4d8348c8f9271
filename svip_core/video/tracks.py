"""People tracks of a raw video as arrays, and MOTChallenge text files (detection and tracking, for a video
without such a file, live in ``detection`` and ``tracking``)."""
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


def parse_mot(path) -> pd.DataFrame:
    """The boxes of a MOTChallenge file (frame numbers from 1) as a table (frame, id, left, top, width, height),
    every line checked; a bad line is named."""
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
    return numeric


def read_mot(path, num_frames: int) -> Tracks:
    """The tracks of a MOTChallenge file over a ``num_frames``-frame video. Lines past the video's end are
    refused."""
    return mot_tracks(parse_mot(path), num_frames, path)


def mot_tracks(table: pd.DataFrame, num_frames: int, path) -> Tracks:
    """The tracks of a parsed MOTChallenge table (``parse_mot``) over ``num_frames`` frames; ``path`` names the
    file when a line lies past the video's end."""
    if (table.frame > num_frames).any():
        raise TracksError(f"{path}: frame {int(table.frame.max())} is past the video's {num_frames} frames. Fix: "
                          f"give the tracks of this video")
    ids = np.sort(table.id.astype(np.int64).unique())
    slot = np.searchsorted(ids, table.id.astype(np.int64).to_numpy())
    t = table.frame.astype(np.int64).to_numpy() - 1
    boxes = np.zeros((num_frames, len(ids), 4), np.float32)
    valid = np.zeros((num_frames, len(ids)), bool)
    xywh = table[["left", "top", "width", "height"]].to_numpy(np.float32)
    boxes[t, slot] = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
    valid[t, slot] = True
    return Tracks(boxes, valid, ids)


def write_mot(tracks: Tracks, path) -> None:
    t, k = np.nonzero(tracks.valid)
    b = tracks.boxes[t, k]
    table = pd.DataFrame({"frame": t + 1, "id": tracks.ids[k], "left": b[:, 0], "top": b[:, 1],
                          "width": b[:, 2] - b[:, 0], "height": b[:, 3] - b[:, 1], "conf": 1, "x": -1, "y": -1, "z": -1})
    table.to_csv(path, header=False, index=False, float_format="%.2f")


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (A, 4), b (B, 4) xyxy -> (A, B) intersection over union."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)
