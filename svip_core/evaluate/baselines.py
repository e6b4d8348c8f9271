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
