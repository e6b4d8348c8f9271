"""Scene family "relational": only how the others behave toward the VIP marks it.

Every track, the VIP's included, comes from one process: stand, or walk from a spot A to a spot B, with the
same distributions of spots, distances, timing, sway, size, tracker gaps, gestures and look. Roles differ
only in where B lies relative to other people:
- the audience (two or more) gathers around the VIP at a stand-off distance: a ring (meeting), a wide arc
  (lecture) or a loose arc (street); at least two walk up during the clip, from outside, toward it, the rest
  are already there; they follow it when it moves and turn to face it (the face mark, in the pixels);
- a decoy stands near the middle of the frame amid a crowd that was there all along and looks anywhere, so
  being amid people (or the closest to everyone) is not enough: being walked up to and faced is;
- a companion walks up to a host, so being approached by one person is not enough;
- wanderers stand or walk between random spots, passing close to people on the way.
No box heuristic and no single-track cue finds the VIP (least or second-least motion, longest visible, most
central, largest, closest to everyone at the end): see `benchmarks/heuristics.py`, whose single-track probe
learns the best per-person cue from the training split.
"""
from __future__ import annotations

import numpy as np

from svip_core.synthetic.motion import smoothstep, sway

ROLE_VIP, ROLE_AUDIENCE, ROLE_CROWD, ROLE_HOST, ROLE_COMPANION, ROLE_WANDERER, ROLE_DECOY = range(7)
# Where anyone may stand (body centre y, fraction of the height): spots of gatherings are kept inside it too,
# so where a track stands does not tell a gathering's member from its centre.
GROUND = (0.45, 0.72)


def _home(rng, count: int, H: int, W: int) -> np.ndarray:
    """(count, 2) standing spots (body centres, pixels) on the ground, left or right of the middle band (where
    the decoy stands)."""
    x = rng.uniform(0.08, 0.4, count) + 0.52 * (rng.random(count) < 0.5)
    return np.stack([x * W, rng.uniform(*GROUND, count) * H], -1)


def _walk(rng, t: np.ndarray, count: int) -> np.ndarray:
    """(T, count) progress of a walk in [0, 1], starting and ending at random times within the clip."""
    t0 = rng.uniform(0.0, 0.45, count)
    t1 = np.minimum(t0 + rng.uniform(0.3, 0.6, count), 0.95)
    return smoothstep((t - t0) / (t1 - t0))


def _steps(rng, length: np.ndarray, H: int) -> np.ndarray:
    """(count, 2) displacements of the given lengths (pixels, along the ground) in random directions."""
    angle = rng.uniform(0, 2 * np.pi, len(length))
    step = length[:, None] * np.stack([np.cos(angle), 0.3 * np.sin(angle)], -1)
    return np.stack([step[:, 0], np.clip(step[:, 1], -0.12 * H, 0.12 * H)], -1)


def _audience_offsets(rng, count: int, category_index: int, base_h: float, side: float) -> np.ndarray:
    """(count, 2) where a gathering stands relative to its centre, at a stand-off distance: a full ring
    (meeting), a wide arc in front of it, opening toward ``side`` (-1 left, 1 right; lecture), or a loose,
    uneven arc toward ``side`` (street)."""
    arrangement = category_index % 3
    radius = rng.uniform(1.0, 1.4) * base_h * rng.uniform(0.9, 1.1 + 0.25 * (arrangement == 2), count)
    span = (2 * np.pi * (1 - 1 / count), rng.uniform(3.0, 3.8), rng.uniform(4.0, 5.0))[arrangement]
    toward = np.arctan2(0.8 if arrangement == 1 else rng.uniform(-0.5, 0.5), side)
    angles = toward + span * (np.linspace(0, 1, count) - 0.5) + rng.normal(0, 0.1, count)
    return radius[:, None] * np.stack([np.cos(angles), 0.35 * np.sin(angles)], -1)


def _away_from(route: np.ndarray, draw, gap: float, tries: int = 30) -> np.ndarray:
    """A spot (2,) from ``draw()`` at least ``gap`` pixels (depth counted as on the ground, y / 0.35) from every
    point of ``route`` (T, 2), so two gatherings do not merge into one by chance; the farthest of ``tries``
    draws when none is that far."""
    best, best_gap = None, -1.0
    for _ in range(tries):
        spot = draw()
        d = route - spot
        closest = np.hypot(d[:, 0], d[:, 1] / 0.35).min()
        if closest > best_gap:
            best, best_gap = spot, closest
        if closest >= gap:
            break
    return best


def _from_outside(rng, spots: np.ndarray, centre: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """(count, 2) where people who walk up to ``spots`` (count, 2) around ``centre`` (2,) set off: ``distance``
    further out, within 20 degrees of straight behind their spot, so they walk toward the centre."""
    out = spots - centre
    angle = np.arctan2(out[:, 1] / 0.35, out[:, 0]) + rng.uniform(-0.35, 0.35, len(spots))
    return spots + distance[:, None] * np.stack([np.cos(angle), 0.3 * np.sin(angle)], -1)


def scene(rng: np.random.Generator, T: int, P: int, H: int, W: int, category_index: int):
    """Trajectories of one scene. Returns centres (T,P,2) in pixels, heights (P,), facing (T,P),
    gesture (T,P) bool, visible (T,P) bool and roles (P,)."""
    t = np.linspace(0.0, 1.0, T)[:, None]                                            # (T, 1)
    base_h = 0.34 * H
    audience = int(rng.integers(2, max(2, P - 3) + 1)) if P >= 3 else P - 1
    left = P - 1 - audience
    extras = []
    if left >= 3 and rng.random() < 0.7:
        extras += [ROLE_DECOY] + [ROLE_CROWD] * int(rng.integers(2, min(4, left - 1) + 1))
    if left - len(extras) >= 2 and rng.random() < 0.6:
        extras += [ROLE_HOST, ROLE_COMPANION]
    extras += [ROLE_WANDERER] * (left - len(extras))
    roles = np.array([ROLE_VIP] + [ROLE_AUDIENCE] * audience + extras, np.int64)[:P]

    # One process for every track: stand at B, or walk there from A over part of the clip.
    idle = sway(rng, t, P, W, 0.02)                                                  # (T, P, 2)
    walks = rng.random(P) < 0.7
    distance = rng.uniform(0.15, 0.5, P) * W
    progress = _walk(rng, t, P)[..., None]                                            # (T, P, 1)
    goal = np.broadcast_to(_home(rng, P, H, W), (T, P, 2)).copy()                     # B (T, P, 2): may move
    start = goal[0] - _steps(rng, distance, H)                                        # A, for walkers

    # Gatherings: the audience around the VIP (following it), a crowd around the decoy, a companion beside its
    # host. At least two of the audience walk up, from outside it, toward the VIP; the crowd was always there.
    vip = np.where(walks[0], start[0] + progress[:, 0] * (goal[0, 0] - start[0]), goal[0, 0])      # (T, 2)
    # A decoy stands nearer the middle, amid a crowd that was there all along: it is the one closest to
    # everyone, and standing amid people is not enough; being walked up to and faced is what counts.
    decoy = np.flatnonzero(roles == ROLE_DECOY)
    walks[decoy] = False
    walks[roles == ROLE_CROWD] = False
    # Other gatherings keep clear of the VIP's: a crowd or a pair merged with the audience by chance would be
    # one gathering with two centres, and nobody could tell which is the VIP.
    gap = 2.0 * base_h
    for d in decoy:
        goal[:, d] = _away_from(vip, lambda: np.array([rng.uniform(0.3, 0.7) * W, rng.uniform(*GROUND) * H]), gap)
    for h in np.flatnonzero(roles == ROLE_HOST):
        goal[:, h] = _away_from(vip, lambda: _home(rng, 1, H, W)[0], gap)
    crowd_centre = goal[:, decoy[0]] if len(decoy) else None       # no decoy, no crowd
    for role, centre in ((ROLE_AUDIENCE, vip), (ROLE_CROWD, crowd_centre), (ROLE_COMPANION, None)):
        members = np.flatnonzero(roles == role)
        if not len(members):
            continue
        if role == ROLE_COMPANION:
            host = np.flatnonzero(roles == ROLE_HOST)[0]
            centre = goal[:, host]
            offsets = np.array([[rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 0.9) * base_h, 0.0]])
        else:
            side = np.sign(0.5 * W - centre[0, 0] + 1e-6) * rng.choice([1.0, -1.0], p=[0.7, 0.3])
            offsets = _audience_offsets(rng, len(members), category_index, base_h, side)
        goal[:, members] = centre[:, None] + offsets[None]
        goal[..., members, 0] = goal[..., members, 0].clip(0.05 * W, 0.95 * W)
        goal[..., members, 1] = goal[..., members, 1].clip(GROUND[0] * H, GROUND[1] * H)
        if role != ROLE_CROWD:
            walks[members[rng.permutation(len(members))[:2]]] = True
        start[members] = _from_outside(rng, goal[0, members], centre[0], distance[members])
    route = start[None] + progress * (goal - start[None])
    centres = np.where(walks[None, :, None], route, goal) + idle
    heights = base_h * (0.55 + 0.9 * centres[0, :, 1] / H) * rng.uniform(0.9, 1.1, P)

    # Facing: walkers look where they go; a gathering looks at its centre once there (now and then away);
    # the VIP at its audience; the host at its companion; others turn at random.
    velocity = np.gradient(centres[..., 0], axis=0)                                   # (T, P)
    facing = np.where(rng.random((1, P)) < 0.5, 1.0, -1.0) * np.where(rng.random((T, P)) < 0.15, -1.0, 1.0)
    facing = np.where(np.abs(velocity) > 0.004 * W, np.sign(velocity), facing)
    arrived = (progress[..., 0] > 0.8) | ~walks[None]
    look = rng.random((T, P)) > 0.12
    a = np.flatnonzero(roles == ROLE_AUDIENCE)
    facing[:, a] = np.where(arrived[:, a] & look[:, a], np.sign(centres[:, :1, 0] - centres[:, a, 0] + 1e-6), facing[:, a])
    facing[:, 0] = np.where(look[:, 0], np.sign(centres[:, a, 0].mean(1) - centres[:, 0, 0] + 1e-6), facing[:, 0])
    pair = np.flatnonzero(np.isin(roles, (ROLE_HOST, ROLE_COMPANION)))
    if len(pair) == 2:
        towards = np.sign(centres[:, pair[::-1], 0] - centres[:, pair, 0] + 1e-6)
        facing[:, pair] = np.where(arrived[:, pair[1:]] & look[:, pair], towards, facing[:, pair])

    # Everyone takes turns to gesture at the same rate.
    gesture = np.sin(2 * np.pi * (t * rng.uniform(1, 3, P) + rng.random(P))) > rng.uniform(0.3, 0.9, P)

    # The frame's edges, and a tracker that loses anyone for a few frames now and then.
    visible = (centres[..., 0] > -0.05 * W) & (centres[..., 0] < 1.05 * W)
    gap_start, gap_len = rng.integers(0, T, P), rng.integers(1, max(2, T // 5), P)
    frame = np.arange(T)[:, None]
    visible &= ~((rng.random(P) < 0.35) & (frame >= gap_start) & (frame < gap_start + gap_len))
    return centres, heights, facing, gesture, visible, roles
