"""The embedded synthetic benchmark: social scenes where the VIP follows from cues a model must combine.

Each clip shows people drawn as figures (body, head with a face mark showing where they look, arms) on a
textured background. The VIP stands slightly off-centre and gestures in turns (raised arm, only visible in
the pixels). Group members walk in, some from outside the frame, gather in a ring around the VIP and turn to
face it. Distractors defeat single-frame and single-track box heuristics:
- a passer-by crosses close to the camera: the largest box and the most motion;
- a still bystander stands at the frame centre: the most central and the least motion, visible throughout;
- the VIP is briefly lost by the "tracker" while the passer-by occludes it, so it is not the longest visible;
- group members enter and leave, so visibility and motion vary among them too.
The same seed gives the same bytes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ROLE_VIP, ROLE_MEMBER, ROLE_PASSER, ROLE_BYSTANDER = 0, 1, 2, 3
CATEGORY_TINTS = np.array([[120, 110, 95], [90, 105, 125], [105, 120, 95], [125, 100, 115], [100, 100, 100]])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _scene(rng: np.random.Generator, T: int, P: int, H: int, W: int, ring_scale: float):
    """Trajectories of one scene. Returns centres (T,P,2) in pixels, heights (P,), facing (T,P),
    gesture (T,P) bool, visible (T,P) bool and roles (P,)."""
    members = P - 3 if P >= 4 else max(P - 1, 1)
    roles = np.array([ROLE_VIP] + [ROLE_MEMBER] * members + [ROLE_PASSER, ROLE_BYSTANDER])[:P]
    t = np.linspace(0.0, 1.0, T)[:, None]                                            # (T, 1)

    # Everyone idles with a sway of the same range, so how much a track moves does not give the VIP away.
    def sway(count: int) -> np.ndarray:                                               # (T, count, 2)
        amp = rng.uniform(0.0, 0.03, (1, count, 1)) * W
        freq, phase = rng.uniform(0.5, 2.0, (1, count, 1)), rng.random((1, count, 2))
        return amp * np.sin(2 * np.pi * (t[..., None] * freq + phase)) * np.array([1.0, 0.3])

    # Depth from the foot's y: people lower in the frame are closer and taller.
    base_h = 0.34 * H
    vip0 = np.array([W * rng.choice([0.25, 0.72]) + rng.normal(0, 0.04 * W), H * rng.uniform(0.5, 0.62)])
    drift = rng.normal(0, 0.05, 2) * np.array([W, 0.3 * H]) * (rng.random() < 0.5)    # the VIP may walk a few steps
    vip_xy = vip0 + _smoothstep(t) * drift + sway(1)[:, 0]                             # (T, 2)
    ring_r = ring_scale * base_h * rng.uniform(0.8, 1.0)
    angles = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, members, endpoint=False)
    offset = ring_r * np.stack([np.cos(angles), 0.45 * np.sin(angles)], -1)          # (M, 2)
    goal = vip_xy[:, None] + offset                                                   # (T, M, 2): the ring follows the VIP
    far = rng.random(members) < 0.6                                                   # the others are already there
    start = np.where(far[:, None], np.stack([rng.uniform(-0.15, 1.15, members) * W,
                                             rng.uniform(0.4, 0.75, members) * H], -1), goal[0])
    arrive = np.where(far, rng.uniform(0.35, 0.8, members), 1e-3)                     # fraction of the clip
    depart = np.where(rng.random(members) < 0.25, rng.uniform(0.75, 0.95, members), 2.0)
    walk = _smoothstep(t / arrive)                                                    # (T, M)
    member_xy = start + walk[..., None] * (goal - start) + sway(members)              # (T, M, 2)
    exit_side = np.where(goal[-1, :, 0] < W / 2, -1.0, 1.0)                           # nearest edge
    member_xy[..., 0] += _smoothstep((t - depart) / 0.3) * 1.3 * W * exit_side

    direction = rng.choice([-1.0, 1.0])
    passer_y = H * rng.uniform(0.82, 0.95)
    passer_x = W * (0.5 - direction * 0.75 + direction * 1.5 * t[:, 0])
    passer_xy = np.stack([passer_x, np.full(T, passer_y)], -1)
    by_xy = np.array([W * 0.5 + rng.normal(0, 0.02 * W), H * rng.uniform(0.45, 0.55)]) + sway(1)[:, 0]

    centres = np.concatenate([vip_xy[:, None], member_xy, passer_xy[:, None], by_xy[:, None]], 1)[:, :P]
    heights = base_h * (0.55 + 0.9 * centres[0, :, 1] / H) * rng.uniform(0.9, 1.1, P)
    heights[roles == ROLE_PASSER] *= 1.35

    # Facing: members look at the VIP once they are near it; the VIP looks around; others look ahead.
    dx_to_vip = vip_xy[:, None, 0] - centres[..., 0]
    facing = np.where(rng.random((T, P)) < 0.5, 1.0, -1.0)
    facing[:, roles == ROLE_MEMBER] = np.where(walk > 0.6, np.sign(dx_to_vip[:, roles == ROLE_MEMBER]),
                                               np.sign(goal[-1, :, 0] - start[:, 0]))
    facing[:, roles == ROLE_PASSER] = direction
    facing[:, 0] = np.where(np.sin(2 * np.pi * t[:, 0] * 2 + rng.random() * 6) >= 0, 1.0, -1.0)

    # Gestures: the VIP in turns, others only now and then.
    phase = rng.random()
    gesture = rng.random((T, P)) < 0.06
    gesture[:, 0] = np.sin(2 * np.pi * (t[:, 0] * rng.uniform(2, 3) + phase)) > 0.1

    visible = (centres[..., 0] > -0.1 * W) & (centres[..., 0] < 1.1 * W)
    if rng.random() < 0.7:  # the tracker loses the VIP while the passer-by walks past it
        lost = np.abs(passer_xy[:, 0] - vip_xy[:, 0]) < 0.12 * W
        lost[: max(1, T // 8)] = False
        visible[:, 0] &= ~lost
    return centres, heights, facing, gesture, visible, roles


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


def make_clip(rng: np.random.Generator, video_id: str, category: str, category_index: int, T: int, N: int,
              H: int, W: int) -> dict:
    """One clip as the dict of arrays the contract asks for (N slots, a random number of them used)."""
    P = int(rng.integers(max(3, N - 2), N + 1)) if N >= 3 else N
    ring_scale = (0.9, 1.3, 1.1, 1.0, 1.0)[category_index % 5]
    centres, heights, facing, gesture, visible, roles = _scene(rng, T, P, H, W, ring_scale)
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
                  categories: list[str], seed: int) -> list[Path]:
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
                               height, width)
            path = out_dir / split / f"{video_id}.npz"
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, **arrays)
            tmp.replace(path)
            written.append(path)
    return written
