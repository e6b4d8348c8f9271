"""From a person's track to one vector: attention pooling over time (mean pooling as an option)."""
from __future__ import annotations

import torch
from torch import nn

from svip_core.model.temporal import padding_mask


def masked_mean(x: torch.Tensor, valid: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x (..., d), valid (...) bool -> the mean over ``dim`` where valid (0 where nothing is); (S,T,d) -> (S,d)."""
    w = valid[..., None].to(x.dtype)
    return (x * w).sum(dim) / w.sum(dim).clamp(min=1)


def masked_max(x: torch.Tensor, valid: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x (..., d), valid (...) bool -> the max over ``dim`` where valid (0 where nothing is); (S,T,d) -> (S,d)."""
    peak = x.masked_fill(~valid[..., None], float("-inf")).amax(dim)
    return torch.where(valid.any(dim)[..., None], peak, torch.zeros_like(peak))


class TemporalPool(nn.Module):
    """(B, T, N, d) -> (B, N, out_dim). Attention: a learned query, shifted by the track's mean, attends
    over the valid frames."""

    def __init__(self, d_model: int, out_dim: int, heads: int, dropout: float, pooling: str):
        super().__init__()
        self.pooling = pooling
        if pooling == "attention":
            self.query = nn.Parameter(torch.zeros(1, 1, d_model))
            self.query_proj = nn.Linear(d_model, d_model)
            self.attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.out = nn.Sequential(nn.Linear(d_model, out_dim), nn.LayerNorm(out_dim), nn.GELU())

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B, T, N, d = x.shape
        seq = x.permute(0, 2, 1, 3).flatten(0, 1)                                     # (B*N, T, d)
        ok = valid.permute(0, 2, 1).flatten(0, 1)
        pooled = masked_mean(seq, ok)
        if self.pooling == "attention":
            q = self.query + self.query_proj(pooled)[:, None]
            attended, _ = self.attn(q, seq, seq, key_padding_mask=padding_mask(ok), need_weights=False)
            pooled = pooled + attended[:, 0]
        return self.out(pooled).view(B, N, -1)
