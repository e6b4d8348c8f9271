"""The embedded synthetic benchmarks: scenes drawn as clips in the MSG_VIP format.

People are drawn as figures (body, head with a face mark showing where they look, arms) on a textured
background; each scene family decides where they walk, face and gesture:
- ``social`` (the default, ``synthetic.social``): the VIP gestures and a group gathers in a ring around it;
- ``relational`` (``synthetic.relational``): the VIP's own track and pixels look like anyone's; only how the others
  behave toward it (approach, stand-off, facing) marks it;
- ``visual`` (``synthetic.visual``): only a few pixels of texture on the VIP's shirt mark it (for fine-tuning).
Each family is its own module, so its code digest versions its clips in the prepare hash. The same seed
gives the same bytes.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from svip_core.atomic import atomic_path

# Imported by name so that a family's code counts only for the datasets that use it (stages.stage_code).
SCENE_MODULES = {"social": "svip_core.synthetic.social", "relational": "svip_core.synthetic.relational",
                 "visual": "svip_core.synthetic.visual"}
# How far a badge's stripes stand from the shirt's colour, either way (pixel levels).
BADGE_CONTRAST = 40
CATEGORY_TINTS = np.array([[120, 110, 95], [90, 105, 125], [105, 120, 95], [125, 100, 115], [100, 100, 100]])
# The clip format's split of clips without a label (containers.UNLABELLED; the generator sits beside the contract,
# not above it), and its random stream: apart from the labelled splits' (numbered in name order), so adding
# unlabelled clips changes none of theirs.
UNLABELLED = "unlabelled"
UNLABELLED_STREAM = 1000


def _figures(centres: np.ndarray, heights: np.ndarray) -> tuple[np.ndarray, ...]:
    """Where each figure's parts lie, from its centre (T, P, 2) and height (P,): h, cx, foot, half_w, body_top,
    head_r, head_cy, each (T, P, 1, 1) to broadcast against a pixel grid (H, W)."""
    h = heights[None, :, None, None]
    cx, foot = centres[..., 0, None, None], centres[..., 1, None, None] + 0.5 * h
    half_w = 0.18 * h
    body_top, head_r = foot - 0.78 * h, 0.11 * h
    return h, cx, foot, half_w, body_top, head_r, body_top - head_r


def _body_boxes(centres: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Each figure's box, head to foot, (T, P, 4) x1, y1, x2, y2 in pixels."""
    _, cx, foot, half_w, _, head_r, head_cy = _figures(centres, heights)
    return np.stack([cx - half_w, head_cy - head_r, cx + half_w, foot], -1)[..., 0, 0, :]


def _paint(rng, centres, heights, facing, gesture, H, W, tint, look: dict | None = None) -> np.ndarray:
    """Draw figures with a painter's rule (lower foot = nearer = drawn on top), batched over frames and people.
    ``look`` (a family's own, ``visual``): shirt colours (P, 3) and a badge kind (P,) each, 0 for none.
    Returns frames (T, H, W, 3) uint8."""
    T, P, _ = centres.shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    h, cx, foot, half_w, body_top, head_r, head_cy = _figures(centres, heights)
    body = (np.abs(xx - cx) <= half_w) & (yy >= body_top) & (yy <= foot)
    head = (xx - cx) ** 2 + (yy - head_cy) ** 2 <= head_r ** 2
    side = facing[..., None, None]
    eye = (xx - (cx + side * 0.55 * head_r)) ** 2 + (yy - head_cy) ** 2 <= (0.35 * head_r) ** 2
    arm_x = cx + side * (half_w + 0.06 * h)
    arm = gesture[..., None, None] & (np.abs(xx - arm_x) <= 0.05 * h) & (yy >= head_cy - 0.25 * h) & (yy <= body_top + 0.2 * h)
    cover = body | head | arm                                                         # (T, P, H, W)

    depth = np.where(cover, foot + 1.0, 0.0)                                          # nearer wins
    front = np.ascontiguousarray(np.moveaxis(depth, 1, -1)).argmax(-1)                # (T, H, W); people last: faster
    covered = cover.any(1)
    pick = lambda m: np.take_along_axis(m, front[:, None], 1)[:, 0]                   # noqa: E731
    shirt = rng.integers(40, 230, (P, 3))
    if look is not None:
        shirt = look["shirt"]
    skin, eye_colour = [224, 180, 150], [30, 30, 30]

    background = tint + 25 * np.sin(yy / H * 3.0)[..., None] + rng.normal(0, 6, (H, W, 3))
    background = np.broadcast_to(background, (T, H, W, 3))
    # Each pixel's colour as an index into one palette (the shirts, skin, the eye), looked up once.
    palette = np.vstack([shirt, skin, eye_colour]).astype(np.uint8)
    colour = np.where(pick(head) | pick(arm), P, front)
    colour[pick(eye)] = P + 1
    frames = np.where(covered[..., None], palette[colour], background)
    if look is not None:
        frames = _badges(frames, look["badge"], front, covered, xx, yy, cx, body_top, half_w)
    frames = frames + rng.normal(0, 3, frames.shape)
    return np.clip(frames, 0, 255).astype(np.uint8)


def _badges(frames, kind, front, covered, xx, yy, cx, body_top, half_w) -> np.ndarray:
    """Paint each person's chest badge where the person is in front: a square of 0.6 body widths striped in the
    shirt's colour, a pixel lighter and a pixel darker in turn (kind 1 across, kind 2 along), counted from the
    badge's own corner, so that where the stripes fall on the backbone's patch grid varies with where the person
    stands."""
    side = 1.2 * half_w                                                               # (T, P, 1, 1)
    top, left = body_top + 0.2 * side, cx - side / 2
    inside = (xx >= left) & (xx <= left + side) & (yy >= top) & (yy <= top + side)    # (T, P, H, W)
    across = np.floor(yy - top).astype(np.int64) % 2 == 0
    along = np.floor(xx - left).astype(np.int64) % 2 == 0
    kind = kind[None, :, None, None]
    light = np.where(kind == 1, across, along)
    pick = lambda m: np.take_along_axis(m, front[:, None], 1)[:, 0]                   # noqa: E731
    shown = pick(inside & (kind > 0)) & covered                                        # (T, H, W) front person's
    stripe = np.where(pick(light), BADGE_CONTRAST, -BADGE_CONTRAST)[..., None]
    return np.where(shown[..., None], frames + stripe, frames)


def _unpainted(rng, T: int, P: int, H: int, W: int) -> np.ndarray:
    """Black frames (T, H, W, 3), drawing from ``rng`` what ``_paint`` draws, so that what is drawn after them
    (the slots) is the painted clip's."""
    rng.integers(40, 230, (P, 3))
    rng.normal(0, 6, (H, W, 3))
    rng.normal(0, 3, (T, H, W, 3))
    return np.zeros((T, H, W, 3), np.uint8)


def make_clip(rng: np.random.Generator, video_id: str, category: str, category_index: int, T: int, N: int,
              H: int, W: int, scene: str = "social", pixels: bool = True) -> dict:
    """One clip as the dict of arrays the contract asks for (N slots, a random number of them used).
    ``pixels=False``: the same clip with black frames, for what needs only its boxes (a fifth of the time)."""
    P = int(rng.integers(max(3, N - 2), N + 1)) if N >= 3 else N
    family = importlib.import_module(SCENE_MODULES[scene])
    centres, heights, facing, gesture, visible, roles = family.scene(rng, T, P, H, W, category_index)
    look = family.look(rng, roles, category_index) if hasattr(family, "look") else None
    boxes = _body_boxes(centres, heights)
    frames = (_paint(rng, centres, heights, facing, gesture, H, W, CATEGORY_TINTS[category_index % 5], look)
              if pixels else _unpainted(rng, T, P, H, W))

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


def split_stream(clips: dict[str, int], split: str) -> int:
    """The random stream of a split's clips: clip i of it is drawn from ``default_rng([seed, stream, i])``."""
    return UNLABELLED_STREAM if split == UNLABELLED else sorted(s for s in clips if s != UNLABELLED).index(split)


def generate_clips(clips: dict[str, int], frames: int, persons: int, height: int, width: int,
                   categories: list[str], seed: int, scene: str = "social", pixels: bool = True):
    """Yield ``(split, arrays)`` for every clip of every split (``make_clip``'s arrays), in the order
    ``write_dataset`` writes them. A clip of the unlabelled split is drawn as any other, and comes without its
    ``target_index``."""
    for split, count in sorted(clips.items()):
        stream = split_stream(clips, split)
        for i in range(count):
            # One generator per clip, so a clip's bytes do not depend on how many clips came before it.
            rng = np.random.default_rng([seed, stream, i])
            category_index = int(rng.integers(len(categories)))
            arrays = make_clip(rng, f"synth_{split}_{i:05d}", categories[category_index], category_index,
                               frames, persons, height, width, scene, pixels)
            if split == UNLABELLED:
                del arrays["target_index"]
            yield split, arrays


def write_dataset(out_dir, clips: dict[str, int], frames: int, persons: int, height: int, width: int,
                  categories: list[str], seed: int, scene: str = "social") -> list[Path]:
    """Write ``<out_dir>/<split>/<video_id>.npz`` for every split; returns the written paths."""
    out_dir = Path(out_dir)
    written = []
    for split, arrays in generate_clips(clips, frames, persons, height, width, categories, seed, scene):
        path = out_dir / split / f"{arrays['video_id']}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            np.savez_compressed(tmp, **arrays)
        written.append(path)
    return written
