"""Motion shared by the scene families: eased walks and the idle sway everyone has."""
from __future__ import annotations

import numpy as np


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Eased progress in [0, 1]: starts and stops gently, as people walk."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def sway(rng: np.random.Generator, t: np.ndarray, count: int, W: int, max_amplitude: float) -> np.ndarray:
    """(T, count, 2) idle sway in pixels for times ``t`` (T, 1) in [0, 1]: each person its own amplitude (up to
    ``max_amplitude`` of the width), frequency and phase, mostly sideways."""
    amp = rng.uniform(0.0, max_amplitude, (1, count, 1)) * W
    freq, phase = rng.uniform(0.5, 2.0, (1, count, 1)), rng.random((1, count, 2))
    return amp * np.sin(2 * np.pi * (t[..., None] * freq + phase)) * np.array([1.0, 0.3])
