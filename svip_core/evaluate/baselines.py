"""Box heuristics that any VIP ranker must beat, scored from the stored geometry (V, T, N, G)."""
from __future__ import annotations

import numpy as np

from svip_core.features.geometry import GEOMETRY_FIELDS

_F = {name: i for i, name in enumerate(GEOMETRY_FIELDS)}


def _track_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """values (V, T, N), valid (V, T, N) -> (V, N) mean over the frames where the person is valid."""
    return (values * valid).sum(1) / np.maximum(valid.sum(1), 1)


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
