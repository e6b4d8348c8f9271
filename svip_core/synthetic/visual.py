"""Scene family "visual": only a small mark on the VIP's shirt sets it apart, in the pixels.

Everyone comes from one process: the same shirt colour (a slight jitter each), the same distributions of
spots, walks, sway, size, facing and gestures. Everyone wears a small badge on the chest of the same mean
colour; the VIP's is striped across (horizontal lines), everyone else's striped along (vertical lines). So no box,
track or motion cue and no colour finds the VIP: only the orientation of a texture a few pixels across, which
pooled features of a frozen backbone carry badly (it averages out over a box) and tuned blocks can learn to keep.
"""
from __future__ import annotations

import numpy as np

from svip_core.synthetic.motion import smoothstep, sway

ROLE_VIP, ROLE_OTHER = 0, 1
GROUND = (0.45, 0.72)            # body centre y, as a fraction of the height
BADGE_HORIZONTAL, BADGE_VERTICAL = 1, 2


def scene(rng: np.random.Generator, T: int, P: int, H: int, W: int, category_index: int):
    """Trajectories of one scene. Returns centres (T,P,2) in pixels, heights (P,), facing (T,P), gesture (T,P)
    bool, visible (T,P) bool and roles (P,)."""
    t = np.linspace(0.0, 1.0, T)[:, None]
    start = np.stack([rng.uniform(0.08, 0.92, P) * W, rng.uniform(*GROUND, P) * H], -1)          # (P, 2)
    goal = np.stack([rng.uniform(0.08, 0.92, P) * W, rng.uniform(*GROUND, P) * H], -1)
    walks = rng.random(P) < 0.5
    t0 = rng.uniform(0.0, 0.45, P)
    progress = smoothstep((t - t0) / np.minimum(rng.uniform(0.3, 0.6, P), 0.95 - t0)) * walks   # (T, P)
    centres = start + progress[..., None] * (goal - start) + sway(rng, t, P, W, 0.03)
    heights = 0.34 * H * (0.55 + 0.9 * start[:, 1] / H) * rng.uniform(0.9, 1.1, P)
    facing = np.where(rng.random(P) < 0.5, 1.0, -1.0)[None] * np.where(rng.random((T, P)) < 0.1, -1.0, 1.0)
    gesture = rng.random((T, P)) < 0.06
    visible = np.ones((T, P), bool)
    roles = np.array([ROLE_VIP] + [ROLE_OTHER] * (P - 1))
    return centres, heights, facing, gesture, visible, roles


def look(rng: np.random.Generator, roles: np.ndarray, category_index: int) -> dict:
    """Each person's shirt colour (P, 3) and badge kind (P,): one colour for the scene, jittered a little."""
    base = rng.integers(70, 190, 3)
    shirt = np.clip(base + rng.normal(0, 6, (len(roles), 3)), 0, 255).astype(np.int64)
    badge = np.where(roles == ROLE_VIP, BADGE_HORIZONTAL, BADGE_VERTICAL)
    return {"shirt": shirt, "badge": badge}
