"""Scene family "relational": only how the others behave toward the VIP marks it.

The VIP's own track is drawn from the same distributions as everyone else's: where it stands, how far it
walks, how much it sways, how big it is, how long it is tracked, how often it gestures, its look. What sets
it apart is the audience:
- two or more people walk up to it, from anywhere in the frame, and stop at a stand-off distance, all about
  as far from it; others are already standing there;
- they follow it when it takes a few steps, and face it (the face mark, visible in the pixels);
- the audience stands close together (a row in front of it, an arc, a loose cluster; by category), so the
  VIP is at the group's edge, not its centre.
Distractors defeat every box heuristic and every single-track cue:
- a host whom one companion walks up to (being approached is not enough: the VIP is approached by several);
- passers-by who cross the frame, passing close to people on the way;
- idlers who mostly stand and sway, so standing still (least or second-least motion) does not single out the VIP;
- an audience member, not the VIP, is usually the closest to everyone at the end;
- anyone, the VIP included, may be lost by the tracker for a few frames.
"""
from __future__ import annotations

import numpy as np

ROLE_VIP, ROLE_AUDIENCE, ROLE_HOST, ROLE_COMPANION, ROLE_PASSER, ROLE_IDLER = range(6)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _home(rng, count: int, H: int, W: int) -> np.ndarray:
    """(count, 2) standing spots (body centres, pixels) on the ground, away from the very centre (where the
    audience tends to stand)."""
    x = rng.uniform(0.1, 0.42, count) + 0.48 * (rng.random(count) < 0.5)
    return np.stack([x * W, rng.uniform(0.48, 0.68, count) * H], -1)


def _walk(rng, t: np.ndarray, count: int) -> np.ndarray:
    """(T, count) progress of a walk in [0, 1], starting and ending at random times within the clip."""
    t0 = rng.uniform(0.0, 0.45, count)
    t1 = np.minimum(t0 + rng.uniform(0.3, 0.6, count), 0.95)
    return _smoothstep((t - t0) / (t1 - t0))


def _steps(rng, length: np.ndarray, H: int) -> np.ndarray:
    """(count, 2) displacements of the given lengths (pixels, along the ground) in random directions."""
    angle = rng.uniform(0, 2 * np.pi, len(length))
    step = length[:, None] * np.stack([np.cos(angle), 0.3 * np.sin(angle)], -1)
    return np.stack([step[:, 0], np.clip(step[:, 1], -0.12 * H, 0.12 * H)], -1)


def _audience_offsets(rng, count: int, category_index: int, base_h: float, side: float) -> np.ndarray:
    """(count, 2) where the audience stands relative to the VIP, on ``side`` (-1 left, 1 right): close
    together, at a stand-off distance."""
    standoff = rng.uniform(1.0, 1.5) * base_h
    spacing = rng.uniform(0.45, 0.65) * base_h
    k = np.arange(count) - (count - 1) / 2
    arrangement = category_index % 3
    if arrangement == 0:                       # an arc around the VIP on one side
        direction = rng.uniform(-0.6, 0.6) + (0.0 if side > 0 else np.pi)
        angles = direction + k * spacing / standoff
        return standoff * np.stack([np.cos(angles), 0.45 * np.sin(angles)], -1)
    if arrangement == 1:                       # a row in front of (nearer the camera than) the VIP
        return np.stack([k * spacing + side * rng.uniform(0, 0.3) * base_h,
                         np.full(count, 0.45 * standoff)], -1)
    centre = np.array([side * standoff, rng.uniform(-0.2, 0.2) * base_h])  # a loose cluster to one side
    return centre + rng.normal(0, 0.5, (count, 2)) * np.array([spacing, 0.45 * spacing])


def scene(rng: np.random.Generator, T: int, P: int, H: int, W: int, category_index: int):
    """Trajectories of one scene. Returns centres (T,P,2) in pixels, heights (P,), facing (T,P),
    gesture (T,P) bool, visible (T,P) bool and roles (P,)."""
    t = np.linspace(0.0, 1.0, T)[:, None]                                            # (T, 1)
    base_h = 0.34 * H
    audience = int(rng.integers(2, max(2, P - 2) + 1)) if P >= 3 else P - 1
    others = P - 1 - audience
    extras = [ROLE_HOST, ROLE_COMPANION] if others >= 2 and rng.random() < 0.7 else []
    extras += list(rng.choice([ROLE_PASSER, ROLE_IDLER, ROLE_IDLER], others - len(extras)))
    roles = np.array([ROLE_VIP] + [ROLE_AUDIENCE] * audience + extras, np.int64)[:P]

    # Everyone sways by the same random amount, and anyone (the VIP too) either stands or travels a distance
    # drawn from one distribution, so how much a track moves says nothing about who matters.
    amp = rng.uniform(0.0, 0.02, (1, P, 1)) * W
    freq, phase = rng.uniform(0.5, 2.0, (1, P, 1)), rng.random((1, P, 2))
    sway = amp * np.sin(2 * np.pi * (t[..., None] * freq + phase)) * np.array([1.0, 0.3])     # (T, P, 2)
    travels = rng.random(P) < np.where(roles == ROLE_IDLER, 0.25, 0.6)
    travel = travels * rng.uniform(0.1, 0.5, P) * W                                   # (P,) pixels
    progress = _walk(rng, t, P)                                                       # (T, P)

    home = _home(rng, P, H, W)
    centres = home[None] + progress[..., None] * _steps(rng, travel, H)[None]          # idlers, VIP, host
    vip = centres[:, 0]                                                               # (T, 2)

    # The audience: a stand-off spot next to the VIP that moves with it, on the side of the frame's centre
    # (mostly). Two of them walk up during the clip, from anywhere, and so does whoever else travels; the
    # rest are already there.
    a = np.flatnonzero(roles == ROLE_AUDIENCE)
    side = np.sign(0.5 * W - vip[0, 0]) if rng.random() < 0.8 else rng.choice([-1.0, 1.0])
    spots = vip[:, None] + _audience_offsets(rng, len(a), category_index, base_h, side)[None]   # (T, A, 2)
    walks_in = travels[a].copy()
    walks_in[rng.permutation(len(a))[:2]] = True
    distance = np.where(travel[a] > 0, travel[a], rng.uniform(0.1, 0.5, len(a)) * W)
    start = np.where(walks_in[:, None], spots[0] - _steps(rng, distance, H), spots[0])
    centres[:, a] = start + progress[:, a, None] * (spots - start)

    # A host whom one companion walks up to, well away from the VIP.
    host, companion = np.flatnonzero(roles == ROLE_HOST), np.flatnonzero(roles == ROLE_COMPANION)
    if len(host):
        centres[:, host] += _away_from(rng, vip[0], H, W)[None] - home[host]
        spot = centres[:, host] + np.array([rng.choice([-1, 1]) * rng.uniform(0.5, 0.8) * base_h, 0.0])
        begin = spot[0] - _steps(rng, rng.uniform(0.1, 0.5, 1) * W, H)
        centres[:, companion] = begin + progress[:, companion, None] * (spot - begin)

    # Passers-by cross the frame at a walking pace, often near someone.
    p = np.flatnonzero(roles == ROLE_PASSER)
    if len(p):
        direction = rng.choice([-1.0, 1.0], len(p))
        near = centres[0, rng.integers(0, P, len(p)), 1] + rng.normal(0, 0.05 * H, len(p))
        x0 = W * (0.5 - direction * rng.uniform(0.4, 0.7, len(p)))
        speed = direction * rng.uniform(0.5, 1.0, len(p)) * W
        centres[:, p] = np.stack([x0 + speed * t, np.broadcast_to(near, (T, len(p)))], -1)
    centres = centres + sway
    heights = base_h * (0.55 + 0.9 * centres[0, :, 1] / H) * rng.uniform(0.9, 1.1, P)

    # Facing: walkers look where they go; the audience looks at the VIP once there (now and then away);
    # the VIP at its audience; host and companion at each other; idlers turn at random.
    velocity = np.gradient(centres[..., 0], axis=0)                                   # (T, P)
    facing = np.where(rng.random((1, P)) < 0.5, 1.0, -1.0) * np.where(rng.random((T, P)) < 0.15, -1.0, 1.0)
    moving = np.abs(velocity) > 0.004 * W
    facing = np.where(moving, np.sign(velocity), facing)
    look_away = rng.random((T, len(a))) < 0.12
    toward_vip = np.sign(vip[:, None, 0] - centres[:, a, 0] + 1e-6)
    facing[:, a] = np.where((progress[:, a] > 0.8) & ~look_away, toward_vip, facing[:, a])
    facing[:, 0] = np.where(rng.random(T) < 0.75, np.sign(centres[:, a, 0].mean(1) - vip[:, 0] + 1e-6),
                            facing[:, 0])
    if len(host):
        facing[:, host[0]] = np.sign(centres[:, companion[0], 0] - centres[:, host[0], 0] + 1e-6)
        facing[-T // 3:, companion[0]] = -facing[-T // 3:, host[0]]

    # Everyone takes turns to gesture at the same rate.
    gesture = np.sin(2 * np.pi * (t * rng.uniform(1, 3, P) + rng.random(P))) > rng.uniform(0.3, 0.9, P)

    # The frame's edges, and a tracker that loses anyone for a few frames now and then.
    visible = (centres[..., 0] > -0.05 * W) & (centres[..., 0] < 1.05 * W)
    gap_start, gap_len = rng.integers(0, T, P), rng.integers(1, max(2, T // 5), P)
    frame = np.arange(T)[:, None]
    visible &= ~((rng.random(P) < 0.35) & (frame >= gap_start) & (frame < gap_start + gap_len))
    return centres, heights, facing, gesture, visible, roles


def _away_from(rng, point: np.ndarray, H: int, W: int) -> np.ndarray:
    """(1, 2) a standing spot at least a third of the width from ``point``."""
    x = point[0] + rng.choice([-1.0, 1.0]) * rng.uniform(0.33, 0.5) * W
    x = x if 0.08 * W < x < 0.92 * W else point[0] - np.sign(x - point[0]) * rng.uniform(0.33, 0.5) * W
    return np.array([[np.clip(x, 0.08 * W, 0.92 * W), rng.uniform(0.48, 0.68) * H]])
