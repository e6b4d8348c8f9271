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


def clip_geometry(clips) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Geometry (V, T, N, G) as the extract stage computes it, valid (V, T, N) and target (V,), from validated
    clips (``dataset.clip.Clip``: no pixels or features needed); shorter clips and fewer slots are padded with
    absent people."""
    import torch

    from svip_core.features.geometry import box_geometry

    T, N = max(c.num_frames for c in clips), max(c.num_slots for c in clips)
    boxes = np.zeros((len(clips), T, N, 4), np.float32)
    valid = np.zeros((len(clips), T, N), bool)
    for i, c in enumerate(clips):
        boxes[i, : c.num_frames, : c.num_slots], valid[i, : c.num_frames, : c.num_slots] = c.boxes, c.valid
    target = np.array([c.target_index for c in clips])
    return box_geometry(torch.from_numpy(boxes), torch.from_numpy(valid)).numpy(), valid, target


def top1(scores: np.ndarray, target: np.ndarray, valid: np.ndarray) -> float:
    """Tie-aware top-1, as the evaluate stage scores it."""
    from svip_core.evaluate.metrics import per_clip_hits

    return float(per_clip_hits(scores, target, valid.any(1), [1])["cmc@1"].mean())


def heuristic_top1(clips, seed: int = 0) -> dict[str, float]:
    """Top-1 of every heuristic on validated clips (``clip_geometry``)."""
    geometry, valid, target = clip_geometry(clips)
    return {name: top1(scores, target, valid) for name, scores in heuristic_scores(geometry, valid, seed).items()}


def track_summary(geometry: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(V, T, N, G), (V, T, N) -> (V, N, 4G + 3): each track on its own, summarised over its valid frames
    (mean, std, min, max of every field) plus when it appears, when it leaves and how much of the clip it is seen."""
    g = geometry.astype(np.float64)
    mean = _track_mean(g, valid[..., None])
    std = np.sqrt(_track_mean((g - mean[:, None]) ** 2, valid[..., None]))
    low = np.where(valid[..., None], g, np.inf).min(1)
    high = np.where(valid[..., None], g, -np.inf).max(1)
    T = valid.shape[1]
    frames = np.arange(T)[None, :, None]
    first = np.where(valid, frames, T).min(1) / T
    last = np.where(valid, frames, -1).max(1) / T
    seen = valid.mean(1)
    present = valid.any(1)[..., None]
    out = np.concatenate([mean, std, low, high, first[..., None], last[..., None], seen[..., None]], -1)
    return np.where(present, out, 0.0)


def single_track_probe(train: tuple, test: tuple, epochs: int = 300, seed: int = 0) -> np.ndarray:
    """The best a per-track cue can do: a small MLP scoring each person from its own track summary alone
    (``track_summary``), trained with the ranking cross-entropy on ``train`` = (geometry, valid, target).
    Returns scores (V, N) for ``test`` = (geometry, valid)."""
    import torch

    torch.manual_seed(seed)
    x_train = torch.tensor(track_summary(*train[:2]), dtype=torch.float32)
    present = torch.from_numpy(train[1].any(1))
    target = torch.as_tensor(train[2])
    mean, std = x_train[present].mean(0), x_train[present].std(0).clamp(min=1e-6)
    net = torch.nn.Sequential(torch.nn.Linear(x_train.shape[-1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    for _ in range(epochs):
        logits = net((x_train - mean) / std)[..., 0].masked_fill(~present, -1e4)
        loss = torch.nn.functional.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x_test = torch.tensor(track_summary(*test), dtype=torch.float32)
        scores = net((x_test - mean) / std)[..., 0].masked_fill(~torch.from_numpy(test[1].any(1)), float("-inf"))
    return scores.numpy()
