"""Social context within a frame: GATv2 over one batched graph holding every frame's people.

With ``relation_features`` each edge carries how the two people stand and move relative to each other
(``relations``), standardised with training statistics, and it biases GATv2's attention (``edge_dim``). With
``attention_flow`` the last layer's attention is summarised per person: how much attention it receives from
the others (per head, as a share of what they could give), how much it gives away from itself, their
difference (focality), the relations of the people attending to it, weighted by each head's attention, and the
mean relation of everyone else to it (how the others, on average, stand and move relative to it). With
relation features it also summarises each pair's relations over the whole clip (``pair_history``). With
``memory`` each person carries a relational state from frame to frame (a GRU over its GAT outputs and attention
flow) that enters the next frame's graph beside its features, so who attended to whom before can steer who
attends to whom now.
"""
from __future__ import annotations

import torch
from torch import nn
from torch_geometric.nn import GATv2Conv
from torch_geometric.utils import scatter

from svip_core.model.normalise import FeatureNorm
from svip_core.model.pair_history import PairHistory
from svip_core.model.relations import (RELATION_FIELDS, edge_relations, graph_edges, looks_at, nearest_pairs, pair_mask,
                                       pair_relations)

LAYER_SCALE_INIT = 0.1


def flow_dim(heads: int, relation_count: int) -> int:
    return 2 * heads + 1 + (heads + 1) * relation_count


def attention_flow(alpha: torch.Tensor, edges: torch.Tensor, relations: torch.Tensor | None,
                   nodes: int) -> torch.Tensor:
    """alpha (E', heads) over edges (2, E') among ``nodes`` nodes that include self-loops, relations (E, R) for
    the first E edges (the non-self ones, in order) or None -> (M, flow_dim) per-node flow features. Shares are
    of the others who can attend to a node (its out-edges as src) and of those it attends to (its in-edges as
    dst): in a complete graph both are everyone else in its frame, with neighbour limits they differ."""
    src, dst = edges
    other = (src != dst).to(alpha.dtype)
    a = alpha * other[:, None]                                                        # self-attention excluded
    share = scatter(other, src, 0, dim_size=nodes, reduce="sum").clamp(min=1)[:, None]
    attends = scatter(other, dst, 0, dim_size=nodes, reduce="sum").clamp(min=1)[:, None]
    received = scatter(a, src, 0, dim_size=nodes, reduce="sum") / share               # (M, heads)
    given = scatter(a, dst, 0, dim_size=nodes, reduce="sum")                          # (M, heads)
    parts = [received, given, (received - given).mean(-1, keepdim=True)]
    if relations is not None:
        E = len(relations)
        weighted = (a[:E, :, None] * relations[:, None, :]).flatten(1)                 # (E, heads * R)
        parts += [scatter(weighted, src[:E], 0, dim_size=nodes, reduce="sum") / share,
                  scatter(relations, dst[:E], 0, dim_size=nodes, reduce="sum") / attends]
    return torch.cat(parts, -1)


def present_nodes(valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """valid (F, N) -> nodes (M,) the flat indices of the present people, numbering (F*N,) each present
    slot's node number (0..M-1, in slot order; meaningless for absent slots)."""
    flat = valid.flatten()
    return flat.nonzero().squeeze(1), torch.cumsum(flat, 0) - 1


def scatter_slots(values: torch.Tensor, nodes: torch.Tensor, slots: int) -> torch.Tensor:
    """values (M, C) of the present nodes -> (slots, C) with zeros for absent people."""
    return values.new_zeros(slots, values.shape[-1]).index_copy_(0, nodes, values)


class FrameGAT(nn.Module):
    """(B, T, N, C) person features -> (B, T, N, hidden) with each frame's people attending to each other,
    (B, T, N, flow_dim) attention-flow features (None without ``attention_flow``) and (B, N, history_dim) pair
    histories (None without ``relation_features``)."""

    def __init__(self, in_dim: int, hidden: int, layers: int, heads: int, dropout: float,
                 relation_features: bool = True, attention_flow: bool = True, history_dim: int = 0,
                 pair_summary: bool = False, facing_directions: int = 0, neighbours: int = 0, memory: bool = False):
        super().__init__()
        assert hidden % heads == 0, "model.gat_hidden must be divisible by model.gat_heads"
        # With relation features, each of the ``facing_directions`` given to forward adds a relation per pair.
        relation_count = len(RELATION_FIELDS) + facing_directions if relation_features else 0
        edge_dim = relation_count or None
        self.relation_norm = FeatureNorm(len(RELATION_FIELDS)) if relation_features else None
        self.in_proj = nn.Linear(in_dim, hidden)
        self.convs = nn.ModuleList(GATv2Conv(hidden, hidden // heads, heads=heads, dropout=dropout, edge_dim=edge_dim)
                                   for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        # LayerScale: each layer's output enters the residual at a tenth of its size at first. At full size the
        # near-uniform attention of an untrained layer adds the same mean of everyone to every person, so the
        # people start alike (measured: the full model gained about 0.04 top-1 on the relational scenes).
        self.scales = nn.ParameterList(nn.Parameter(torch.full((hidden,), LAYER_SCALE_INIT)) for _ in range(layers))
        self.dropout = nn.Dropout(dropout)
        self.attention_flow = attention_flow
        # Each person attends to its k nearest only (0: everyone in the frame); the pair history still reads
        # every pair.
        self.neighbours = neighbours
        self.flow_dim = flow_dim(heads, relation_count) if attention_flow else 0
        self.history = (PairHistory(in_dim, relation_count, hidden, history_dim, dropout, pair_summary)
                        if relation_features and history_dim else None)
        self.memory = self.recall = None
        if memory:
            self.memory = nn.GRUCell(hidden + self.flow_dim, hidden)
            # The recalled state enters at zero: the model starts as the one without memory and learns to read it.
            self.recall = nn.Linear(hidden, hidden)
            nn.init.zeros_(self.recall.weight)
            nn.init.zeros_(self.recall.bias)

    def forward(self, x: torch.Tensor, geometry: torch.Tensor, valid: torch.Tensor,
                facing: torch.Tensor | None = None):
        """x (B,T,N,C), geometry (B,T,N,G) raw, valid (B,T,N); facing (B,T,N,K,2) each person's facing
        directions (``relations.FacingDirections``) when the model reads them."""
        B, T, N, _ = x.shape
        # Only present people enter the graph: absent slots (often most of them) would cost every layer.
        linked = nearest_pairs(geometry, valid, self.neighbours) if self.neighbours else pair_mask(valid)
        slot_edges = graph_edges(linked.flatten(0, 1))                                  # (2, E) over B*T*N slots
        nodes, numbering = present_nodes(valid.flatten(0, 1))
        edges = numbering[slot_edges]                                                   # (2, E) over M nodes
        h = self.in_proj(x.flatten(0, 2)[nodes])                                       # (M, hidden)
        relations = history = None
        if self.relation_norm is not None:
            pairs = self.relation_norm(pair_relations(geometry, valid))               # (B, T, N, N, R)
            if facing is not None:
                pairs = torch.cat([pairs, looks_at(facing, geometry, valid).to(pairs.dtype)], -1)
            relations = edge_relations(pairs, slot_edges)                             # (E, R)
            if self.history is not None:
                history = self.history(x, pairs, pair_mask(valid))
        if self.memory is None:
            h, flow = self.layers(h, edges, relations)
        else:
            h, flow = self.recurrent_layers(h, edges, relations, nodes, B, T, N)
        if flow is not None:
            flow = scatter_slots(flow, nodes, B * T * N).view(B, T, N, -1)
        return scatter_slots(h, nodes, B * T * N).view(B, T, N, -1), flow, history

    def layers(self, h: torch.Tensor, edges: torch.Tensor, relations: torch.Tensor | None):
        """h (M, hidden) node features, edges (2, E) among them, relations (E, R) or None -> h (M, hidden) after
        the GAT layers, flow (M, flow_dim) from the last layer's attention (None without attention_flow)."""
        flow = None
        for i, (conv, norm, scale) in enumerate(zip(self.convs, self.norms, self.scales)):
            if i == len(self.convs) - 1 and self.attention_flow:
                out, (loop_edges, alpha) = conv(h, edges, relations, return_attention_weights=True)
                flow = attention_flow(alpha, loop_edges, relations, len(h))
            else:
                out = conv(h, edges, relations)
            h = h + scale * norm(self.dropout(nn.functional.elu(out)))
        return h, flow

    def recurrent_layers(self, h: torch.Tensor, edges: torch.Tensor, relations: torch.Tensor | None,
                         nodes: torch.Tensor, B: int, T: int, N: int):
        """As ``layers``, one frame at a time (frame t's graph reads the state its people left at their last
        frame before t): h (M, hidden) over nodes (M,), the flat B*T*N slot of each, edges (2, E) within frames.
        A recurrence is sequential, so the frames are a loop; each step still holds every clip and person."""
        frame, person = (nodes // N) % T, (nodes // (T * N)) * N + nodes % N           # (M,), (M,) in B*N
        edge_frame = frame[edges[0]]
        # Each frame's nodes and edges, in their order, from one sort each and a single host sync for the sizes.
        node_sizes, edge_sizes = torch.stack([frame.bincount(minlength=T), edge_frame.bincount(minlength=T)]).tolist()
        frame_nodes = frame.sort(stable=True).indices.split(node_sizes)                 # T x (M_t,)
        frame_edges = edge_frame.sort(stable=True).indices.split(edge_sizes)            # T x (E_t,)
        local = torch.empty_like(nodes)
        state = h.new_zeros(B * N, h.shape[-1])                                          # (B*N, hidden)
        out, flow = torch.empty_like(h), h.new_empty(len(h), self.flow_dim) if self.attention_flow else None
        for here, chosen in zip(frame_nodes, frame_edges):
            if not len(here):
                continue
            local[here] = torch.arange(len(here), device=h.device)
            who = person[here]
            h_t, flow_t = self.layers(h[here] + self.recall(state[who]), local[edges[:, chosen]],
                                      relations[chosen] if relations is not None else None)
            out[here] = h_t
            step = h_t if flow_t is None else torch.cat([h_t, flow_t], -1)
            state = state.index_copy(0, who, self.memory(step, state[who]))
            if flow is not None:
                flow[here] = flow_t
        return out, flow
