"""The embedded synthetic benchmarks: scenes drawn as clips in the MSG_VIP format.

People are drawn as figures (body, head with a face mark showing where they look, arms) on a textured
background; each scene family decides where they walk, face and gesture:
- ``social`` (the default, ``synthetic.social``): the VIP gestures and a group gathers in a ring around it;
- ``relational`` (``synthetic.relational``): the VIP's own track and pixels look like anyone's; only how the others
  behave toward it (approach, stand-off, facing) marks it.
Each family is its own module, so its code digest versions its clips in the prepare hash. The same seed
gives the same bytes.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from svip_core.atomic import atomic_path

# Imported by name so that a family's code counts only for the datasets that use it (stages.stage_code).
SCENE_MODULES = {"social": "svip_core.synthetic.social", "relational": "svip_core.synthetic.relational"}
CATEGORY_TINTS = np.array([[120, 110, 95], [90, 105, 125], [105, 120, 95], [125, 100, 115], [100, 100, 100]])


def _render(rng, centres, heights, facing, gesture, H, W, tint):
    """Draw figures with a painter's rule (lower foot = nearer = drawn on top), batched over frames and people.
    Returns frames (T,H,W,3) uint8 and body boxes (T,P,4) in pixels."""
    T, P, _ = centres.shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    h = heights[None, :, None, None]
    cx, foot = centres[..., 0, None, None], centres[..., 1, None, None] + 0.5 * h
    half_w = 0.18 * h
    body_top, head_r = foot - 0.78 * h, 0.11 * h
    head_cy = body_top - head_r
    body = (np.abs(xx - cx) <= half_w) & (yy >= body_top) & (yy <= foot)
    head = (xx - cx) ** 2 + (yy - head_cy) ** 2 <= head_r ** 2
    side = facing[..., None, None]
    eye = (xx - (cx + side * 0.55 * head_r)) ** 2 + (yy - head_cy) ** 2 <= (0.35 * head_r) ** 2
    arm_x = cx + side * (half_w + 0.06 * h)
    arm = gesture[..., None, None] & (np.abs(xx - arm_x) <= 0.05 * h) & (yy >= head_cy - 0.25 * h) & (yy <= body_top + 0.2 * h)
    cover = body | head | arm                                                         # (T, P, H, W)

    depth = np.where(cover, foot + 1.0, 0.0)                                          # nearer wins
    front = depth.argmax(1)                                                           # (T, H, W)
    covered = cover.any(1)
    pick = lambda m: np.take_along_axis(m, front[:, None], 1)[:, 0]                   # noqa: E731
    shirt = rng.integers(40, 230, (P, 3))
    skin = np.array([224, 180, 150])

    background = tint + 25 * np.sin(yy / H * 3.0)[..., None] + rng.normal(0, 6, (H, W, 3))
    background = np.broadcast_to(background, (T, H, W, 3))
    person_rgb = np.where((pick(head) | pick(arm))[..., None], skin, shirt[front])
    person_rgb = np.where(pick(eye)[..., None], 30, person_rgb)
    frames = np.where(covered[..., None], person_rgb, background)
    frames = frames + rng.normal(0, 3, frames.shape)
    boxes = np.stack([cx - half_w, head_cy - head_r, cx + half_w, foot], -1)[..., 0, 0, :]
    return np.clip(frames, 0, 255).astype(np.uint8), boxes


def scene_family(name: str):
    """The ``scene(rng, T, P, H, W, category_index)`` function of a scene family."""
    return importlib.import_module(SCENE_MODULES[name]).scene


def make_clip(rng: np.random.Generator, video_id: str, category: str, category_index: int, T: int, N: int,
              H: int, W: int, scene: str = "social") -> dict:
    """One clip as the dict of arrays the contract asks for (N slots, a random number of them used)."""
    P = int(rng.integers(max(3, N - 2), N + 1)) if N >= 3 else N
    centres, heights, facing, gesture, visible, roles = scene_family(scene)(rng, T, P, H, W, category_index)
    frames, boxes = _render(rng, centres, heights, facing, gesture, H, W, CATEGORY_TINTS[category_index % 5])

    boxes = np.stack([np.clip(boxes[..., 0], 0, W - 1), np.clip(boxes[..., 1], 0, H - 1),
                      np.clip(boxes[..., 2], 1, W), np.clip(boxes[..., 3], 1, H)], -1)
    visible &= (boxes[..., 2] - boxes[..., 0] > 1) & (boxes[..., 3] - boxes[..., 1] > 1)
    visible[:, 0] |= ~visible.any(0)[0]  # the VIP must be present somewhere

    slots = rng.permutation(N)[:P]                                                    # person p -> slot
    full_boxes = np.zeros((T, N, 4), np.float32)
    mask = np.zeros((T, N), bool)
    ids = np.full((T, N), -1, np.int64)
    full_boxes[:, slots] = boxes
    mask[:, slots] = visible
    ids[:, slots] = np.where(visible, np.arange(P), -1)
    original = np.full(N, -1, np.int64)
    original[slots] = np.arange(P)
    return {"frames": frames, "bboxes": full_boxes, "person_mask": mask, "frame_mask": np.ones(T, bool),
            "person_ids": ids, "original_ids": original, "target_index": np.int64(slots[0]),
            "video_id": np.array(video_id), "scene_category": np.array(category)}


def write_dataset(out_dir, clips: dict[str, int], frames: int, persons: int, height: int, width: int,
                  categories: list[str], seed: int, scene: str = "social") -> list[Path]:
    """Write ``<out_dir>/<split>/<video_id>.npz`` for every split; returns the written paths."""
    out_dir = Path(out_dir)
    written = []
    for split_index, (split, count) in enumerate(sorted(clips.items())):
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            # One generator per clip, so a clip's bytes do not depend on how many clips came before it.
            rng = np.random.default_rng([seed, split_index, i])
            category_index = int(rng.integers(len(categories)))
            video_id = f"synth_{split}_{i:05d}"
            arrays = make_clip(rng, video_id, categories[category_index], category_index, frames, persons,
                               height, width, scene)
            path = out_dir / split / f"{video_id}.npz"
            with atomic_path(path) as tmp:
                np.savez_compressed(tmp, **arrays)
            written.append(path)
    return written
