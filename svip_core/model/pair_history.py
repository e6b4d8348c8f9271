"""What the others do toward each person over the whole clip, pair by pair.

GATv2 mixes the people of one frame with softmax attention: a share, not a count, and blind to how a pair's
relation develops over the clip. Here each ordered pair's relations in every frame both are present (with both
people's features, so "src faces dst" can be read) are embedded, pooled over those frames (mean and max), and
then summed, averaged and maxed over the others: two people walking up to someone differs from one, and someone
walked up to and faced for the whole clip differs from someone passed by once.
"""
from __future__ import annotations

import torch
from torch import nn

from svip_core.model.temporal_pooling import masked_max, masked_mean


def pair_summary(relations: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """relations (B,T,N,N,R), pairs (B,T,N,N) bool -> (B,N,N,5R+3): for each ordered pair, each relation's mean,
    min, max, first and last value over the frames both are present, the share of frames they are, and when they
    first and last are (fractions of the clip); zeros for a pair never present together."""
    B, T, N = pairs.shape[:3]
    low, high = -masked_max(-relations, pairs), masked_max(relations, pairs)
    t = torch.arange(T, device=pairs.device).view(1, T, 1, 1)
    first = torch.where(pairs, t, T).amin(1).clamp(max=T - 1)                          # (B, N, N)
    last = torch.where(pairs, t, -1).amax(1).clamp(min=0)
    at = lambda i: relations.gather(1, i[:, None, ..., None].expand(B, 1, N, N, relations.shape[-1]))[:, 0]  # noqa: E731
    ever = pairs.any(1)
    span = max(T - 1, 1)
    times = torch.stack([pairs.float().mean(1), first / span, last / span], -1) * ever[..., None]
    return torch.cat([masked_mean(relations, pairs), low, high, at(first) * ever[..., None], at(last) * ever[..., None],
                      times], -1)


class PairHistory(nn.Module):
    """x (B,T,N,C) person features, relations (B,T,N,N,R) standardised ([b,t,s,d] is src s -> dst d), pairs
    (B,T,N,N) bool (both present, s != d) -> (B,N,out_dim): for each person d, what the others s did toward it."""

    def __init__(self, person_dim: int, relation_dim: int, hidden: int, out_dim: int, dropout: float,
                 summary: bool = False):
        super().__init__()
        # Each pair's relations over the clip in closed form (``pair_summary``) beside the learnt pooling:
        # whether s walked up to d and stayed is its first and last distance, read at once.
        self.summary = (nn.Sequential(nn.Linear(5 * relation_dim + 3, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                      nn.GELU()) if summary else None)
        self.relation = nn.Linear(relation_dim, hidden)
        self.src = nn.Linear(person_dim, hidden, bias=False)
        self.dst = nn.Linear(person_dim, hidden, bias=False)
        self.frame = nn.Sequential(nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.pair = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Dropout(dropout))
        self.out = nn.Sequential(nn.Linear(3 * hidden, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x: torch.Tensor, relations: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        e = self.relation(relations) + self.src(x)[:, :, :, None] + self.dst(x)[:, :, None, :]   # (B,T,N,N,H)
        e = self.frame(e)
        ever = pairs.any(1)                                                           # (B, N, N)
        p = self.pair(torch.cat([masked_mean(e, pairs), masked_max(e, pairs)], -1))                    # (B,Ns,Nd,H)
        if self.summary is not None:
            p = p + self.summary(pair_summary(relations, pairs))
        p = p * ever[..., None]
        # Summed over the others it counts; averaged it is a share; the max finds the one who stands out.
        total = p.sum(1)                                                              # (B, N, H)
        others = ever.sum(1).clamp(min=1)[..., None]
        out = self.out(torch.cat([total, total / others, masked_max(p, ever)], -1))
        return out * ever.any(1)[..., None]
