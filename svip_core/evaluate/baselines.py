"""Box heuristics that any VIP ranker must beat, scored from the stored geometry (V, T, N, G)."""
from __future__ import annotations

import numpy as np

from svip_core.features.geometry import GEOMETRY_FIELDS

_F = {name: i for i, name in enumerate(GEOMETRY_FIELDS)}


def _track_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """values (V, T, N), valid (V, T, N) -> (V, N) mean over the frames where the person is valid."""
    return (values * valid).sum(1) / np.maximum(valid.sum(1), 1)


def _second_lowest(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """values (V, N) -> (V, N) score that is highest for the person with the second-lowest value."""
    v = np.where(present, values, np.inf)
    order = np.argsort(np.argsort(v, 1, kind="stable"), 1, kind="stable")              # rank 0 = lowest
    return -np.abs(order - 1).astype(np.float64)


def _closest_to_everyone_at_the_end(g: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(V, N) minus each person's mean distance to the others, every one at its last valid position."""
    T = valid.shape[1]
    last = np.where(valid, np.arange(T)[None, :, None], -1).max(1)                    # (V, N)
    centre = np.take_along_axis(g[..., [_F["cx"], _F["cy"]]], np.maximum(last, 0)[:, None, :, None], 1)[:, 0]
    present = last >= 0
    dist = np.linalg.norm(centre[:, :, None] - centre[:, None, :], axis=-1)           # (V, N, N)
    pair = present[:, :, None] & present[:, None, :]
    mean = (dist * pair).sum(2) / np.maximum(pair.sum(2) - 1, 1)
    return np.where(present, -mean, -np.inf)


def heuristic_scores(geometry: np.ndarray, valid: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Scores (V, N) per heuristic; higher means 'more likely the VIP'."""
    g = geometry.astype(np.float64)
    centre_dist = np.hypot(g[..., _F["cx"]] - 0.5, g[..., _F["cy"]] - 0.5)
    motion = _track_mean(g[..., _F["speed"]], valid)
    return {
        "random": np.random.default_rng(seed).random(valid.shape[::2]),
        "largest_box": _track_mean(g[..., _F["area"]], valid),
        "most_central": -_track_mean(centre_dist, valid),
        "longest_visible": valid.sum(1).astype(np.float64),
        "most_motion": motion,
        "least_motion": -motion,
        "second_least_motion": _second_lowest(motion, valid.any(1)),
        "closest_to_all_at_end": _closest_to_everyone_at_the_end(g, valid),
    }


def heuristic_top1_on_clips(paths, seed: int = 0) -> dict[str, float]:
    """Top-1 of every heuristic straight from clip files (no features needed): geometry as the extract
    stage computes it, scored with the evaluate stage's tie-aware metric."""
    import torch

    from svip_core.evaluate.metrics import per_clip_hits
    from svip_core.features.geometry import box_geometry
    from svip_core.io.clip import inspect_clip

    clips = [inspect_clip(p) for p in paths]
    T, N = max(c.num_frames for c in clips), max(c.num_slots for c in clips)
    boxes = np.zeros((len(clips), T, N, 4), np.float32)
    valid = np.zeros((len(clips), T, N), bool)
    for i, c in enumerate(clips):
        boxes[i, : c.num_frames, : c.num_slots], valid[i, : c.num_frames, : c.num_slots] = c.boxes, c.valid
    target = np.array([c.target_index for c in clips])
    geometry = box_geometry(torch.from_numpy(boxes), torch.from_numpy(valid)).numpy()
    return {name: float(per_clip_hits(scores, target, valid.any(1), [1])["cmc@1"].mean())
            for name, scores in heuristic_scores(geometry, valid, seed).items()}
