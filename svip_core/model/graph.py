"""Social context within a frame: GATv2 over one batched graph holding every frame's people."""
from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import GATv2Conv


def complete_graph_edges(valid: torch.Tensor) -> torch.Tensor:
    """valid (F, N) bool -> edge_index (2, E) over F*N nodes: i -> j for every pair of distinct valid people
    in the same frame (GATv2Conv adds the self-loops)."""
    Fr, N = valid.shape
    pair = valid[:, :, None] & valid[:, None, :] & ~torch.eye(N, dtype=torch.bool, device=valid.device)
    frame, src, dst = pair.nonzero(as_tuple=True)
    return torch.stack([frame * N + src, frame * N + dst])


class FrameGAT(nn.Module):
    """(B, T, N, C) person features -> (B, T, N, hidden), each frame's people attending to each other."""

    def __init__(self, in_dim: int, hidden: int, layers: int, heads: int, dropout: float):
        super().__init__()
        assert hidden % heads == 0, "model.gat_hidden must be divisible by model.gat_heads"
        self.in_proj = nn.Linear(in_dim, hidden)
        self.convs = nn.ModuleList(GATv2Conv(hidden, hidden // heads, heads=heads, dropout=dropout)
                                   for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        B, T, N, _ = x.shape
        h = self.in_proj(x).flatten(0, 2)                                             # (B*T*N, hidden)
        edges = complete_graph_edges(valid.flatten(0, 1))
        keep = valid.flatten()[:, None]
        for conv, norm in zip(self.convs, self.norms):
            h = (h + norm(self.dropout(nn.functional.elu(conv(h, edges))))) * keep
        return h.view(B, T, N, -1)
