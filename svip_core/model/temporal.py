"""Context over time: a Transformer per person track, and the clip-level event token."""
from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_time_encoding(T: int, dim: int, device) -> torch.Tensor:
    """(T, dim) fixed sinusoidal encoding of frame position."""
    pos = torch.arange(T, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    enc = torch.zeros(T, dim, device=device)
    enc[:, 0::2] = torch.sin(pos * freq)
    enc[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return enc


def transformer(d_model: int, heads: int, ffn: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d_model, heads, ffn, dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def padding_mask(valid: torch.Tensor) -> torch.Tensor:
    """valid (S, T) -> key padding mask (S, T); a sequence with no valid step keeps its first step unmasked
    so attention stays finite (its output is zeroed by the caller)."""
    pad = ~valid
    pad[:, 0] &= valid.any(1)
    return pad


class PersonTemporalEncoder(nn.Module):
    """(B, T, N, C) -> (B, T, N, d_model): each person's track is one sequence over time."""

    def __init__(self, in_dim: int, d_model: int, heads: int, ffn: int, layers: int, dropout: float,
                 time_encoding: bool):
        super().__init__()
        self.proj = nn.Linear(in_dim, d_model)
        self.time_encoding = time_encoding
        self.encoder = transformer(d_model, heads, ffn, layers, dropout) if layers > 0 else None

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B, T, N, _ = x.shape
        h = self.proj(x)
        if self.time_encoding:
            h = h + sinusoidal_time_encoding(T, h.shape[-1], h.device)[:, None]
        if self.encoder is not None:
            seq = h.permute(0, 2, 1, 3).flatten(0, 1)                                 # (B*N, T, d)
            mask = valid.permute(0, 2, 1).flatten(0, 1)                               # (B*N, T)
            seq = self.encoder(seq, src_key_padding_mask=padding_mask(mask))
            h = seq.view(B, N, T, -1).permute(0, 2, 1, 3)
        return h * valid[..., None]


class EventContext(nn.Module):
    """A learned event token reads each frame's people, a Transformer runs over the resulting event sequence,
    and each person token receives its frame's event through a learned per-person gate. (B,T,N,d) -> same.

    The event is added to the person's vector, never substituted for it: a convex mix could replace every
    person by the same event vector, and then everyone scores alike (a run stuck at chance)."""

    def __init__(self, d_model: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.read = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.encoder = transformer(d_model, heads, ffn, 1, dropout)
        self.gate = nn.Linear(2 * d_model, 1)
        self.mix = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B, T, N, d = x.shape
        people = x.flatten(0, 1)                                                      # (B*T, N, d)
        frame_ok = valid.flatten(0, 1)
        event, _ = self.read(self.token.expand(B * T, 1, d), people, people,
                             key_padding_mask=padding_mask(frame_ok), need_weights=False)
        event = self.encoder(event.view(B, T, d), src_key_padding_mask=padding_mask(valid.any(-1)))
        event = event[:, :, None].expand(B, T, N, d)
        g = torch.sigmoid(self.gate(torch.cat([x, event], -1)))
        return (x + g * self.mix(event)) * valid[..., None]
