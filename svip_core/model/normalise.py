"""Feature standardisation with statistics of the training split, stored in the model's weights.

The statistics are buffers, so they travel in ``model.safetensors`` and evaluate and predict apply exactly what
training used. They are computed from the training split only (``fit``), which the train stage's identity
already covers.
"""
from __future__ import annotations

import torch
from torch import nn

CLIP = 8.0   # standardised values beyond this many deviations are clamped: one odd box must not dominate


class FeatureNorm(nn.Module):
    """(..., C) -> (..., C) standardised per channel: (x - mean) / std, clamped to [-CLIP, CLIP]."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    @torch.no_grad()
    def fit(self, samples: torch.Tensor) -> None:
        """samples (M, C): the training split's values (valid entries only)."""
        if len(samples) == 0:
            return
        samples = samples.double()
        self.mean.copy_(samples.mean(0))
        # A constant channel (for example a field no clip ever varies) keeps unit scale instead of exploding.
        std = samples.std(0, unbiased=False)
        self.std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).clamp(-CLIP, CLIP)

    def stats(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}
