"""Scene family "social" (the default benchmark): the VIP gestures and a group gathers in a ring around it.

The VIP stands slightly off-centre and gestures in turns (raised arm, only visible in the pixels). Group
members walk in, some from outside the frame, gather in a ring around the VIP and turn to face it.
Distractors defeat single-frame and single-track box heuristics:
- a passer-by crosses close to the camera: the largest box and the most motion;
- a still bystander stands at the frame centre: the most central and the least motion, visible throughout;
- the VIP is briefly lost by the "tracker" while the passer-by occludes it, so it is not the longest visible;
- group members enter and leave, so visibility and motion vary among them too.
The VIP's own track (its gesture pixels, its motion) suffices here: see ``synthetic.relational`` for the
benchmark where only the others' behaviour marks the VIP.
"""
from __future__ import annotations

import numpy as np

from svip_core.synthetic.motion import smoothstep
from svip_core.synthetic.motion import sway as idle_sway

ROLE_VIP, ROLE_MEMBER, ROLE_PASSER, ROLE_BYSTANDER = 0, 1, 2, 3
RING_SCALES = (0.9, 1.3, 1.1, 1.0, 1.0)   # per category


def scene(rng: np.random.Generator, T: int, P: int, H: int, W: int, category_index: int):
    """Trajectories of one scene. Returns centres (T,P,2) in pixels, heights (P,), facing (T,P),
    gesture (T,P) bool, visible (T,P) bool and roles (P,)."""
    ring_scale = RING_SCALES[category_index % len(RING_SCALES)]
    members = P - 3 if P >= 4 else max(P - 1, 1)
    roles = np.array([ROLE_VIP] + [ROLE_MEMBER] * members + [ROLE_PASSER, ROLE_BYSTANDER])[:P]
    t = np.linspace(0.0, 1.0, T)[:, None]                                            # (T, 1)

    # Everyone idles with a sway of the same range, so how much a track moves does not give the VIP away.
    def sway(count: int) -> np.ndarray:                                               # (T, count, 2)
        return idle_sway(rng, t, count, W, 0.03)

    # Depth from the foot's y: people lower in the frame are closer and taller.
    base_h = 0.34 * H
    vip0 = np.array([W * rng.choice([0.25, 0.72]) + rng.normal(0, 0.04 * W), H * rng.uniform(0.5, 0.62)])
    drift = rng.normal(0, 0.05, 2) * np.array([W, 0.3 * H]) * (rng.random() < 0.5)    # the VIP may walk a few steps
    vip_xy = vip0 + smoothstep(t) * drift + sway(1)[:, 0]                             # (T, 2)
    ring_r = ring_scale * base_h * rng.uniform(0.8, 1.0)
    angles = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, members, endpoint=False)
    offset = ring_r * np.stack([np.cos(angles), 0.45 * np.sin(angles)], -1)          # (M, 2)
    goal = vip_xy[:, None] + offset                                                   # (T, M, 2): the ring follows the VIP
    far = rng.random(members) < 0.6                                                   # the others are already there
    start = np.where(far[:, None], np.stack([rng.uniform(-0.15, 1.15, members) * W,
                                             rng.uniform(0.4, 0.75, members) * H], -1), goal[0])
    arrive = np.where(far, rng.uniform(0.35, 0.8, members), 1e-3)                     # fraction of the clip
    depart = np.where(rng.random(members) < 0.25, rng.uniform(0.75, 0.95, members), 2.0)
    walk = smoothstep(t / arrive)                                                    # (T, M)
    member_xy = start + walk[..., None] * (goal - start) + sway(members)              # (T, M, 2)
    exit_side = np.where(goal[-1, :, 0] < W / 2, -1.0, 1.0)                           # nearest edge
    member_xy[..., 0] += smoothstep((t - depart) / 0.3) * 1.3 * W * exit_side

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
