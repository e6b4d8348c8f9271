"""How two people of a frame stand and move relative to each other: features of each ordered pair.

For the pair src -> dst (dst attends to src) in frame t, from raw box geometry (``GEOMETRY_FIELDS``): offset of
src from dst (dx, dy), distance, distance in body heights, IoU, log height and width ratios, how fast src moves
toward dst, how fast dst moves toward src, how fast the gap closes, how much closer the two are than when
first seen together (in body heights), and whether they move together (cosine of their steps). So "everyone
walks up to me and stays" is a direct input, not something the model must reconstruct from absolute
positions; the last two carry each pair's history into every frame.

Where people face is not in the boxes: ``FacingDirections`` reads it from each person's visual features,
``looks_at`` turns it into "src faces dst" for every pair, and ``walking_facing_loss`` teaches it from the tracks.
"""
from __future__ import annotations

import torch
from torch import nn

from svip_core.features.geometry import GEOMETRY_FIELDS

RELATION_FIELDS = ("dx", "dy", "distance", "distance_in_heights", "iou", "log_height_ratio", "log_width_ratio",
                   "src_toward_dst", "dst_toward_src", "closing_speed", "approach_since_first_seen",
                   "moving_together")
_F = {name: i for i, name in enumerate(GEOMETRY_FIELDS)}


def complete_graph_edges(valid: torch.Tensor) -> torch.Tensor:
    """valid (F, N) bool -> edge_index (2, E) over F*N nodes: src -> dst for every ordered pair of distinct
    valid people in the same frame."""
    return graph_edges(pair_mask(valid))


def graph_edges(pairs: torch.Tensor) -> torch.Tensor:
    """pairs (F, N, N) bool, [f, s, d]: s -> d is an edge -> edge_index (2, E) over F*N nodes."""
    N = pairs.shape[-1]
    frame, src, dst = pairs.nonzero(as_tuple=True)
    return torch.stack([frame * N + src, frame * N + dst])


def nearest_pairs(geometry: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """geometry (..., N, G) raw, valid (..., N) -> (..., N, N) bool, [s, d]: s is one of the k people nearest to d
    (box centres) in the frame, both present and s != d."""
    pairs = pair_mask(valid)
    centre = geometry.float()[..., [_F["cx"], _F["cy"]]]
    distance = torch.cdist(centre, centre).masked_fill(~pairs, float("inf"))         # (..., N src, N dst)
    rank = distance.argsort(dim=-2, stable=True).argsort(dim=-2, stable=True)      # each src's rank for its dst
    return pairs & (rank < k)


def pair_relations(geometry: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """geometry (B, T, N, G) raw, valid (B, T, N) -> (B, T, N, N, R): [b, t, s, d] describes src s -> dst d."""
    g = geometry.float()
    s, d = g[..., :, None, :], g[..., None, :, :]                                     # (B, T, N, 1|N, G)
    centre, motion = [_F["cx"], _F["cy"]], [_F["dcx"], _F["dcy"]]
    offset = s[..., centre] - d[..., centre]                                          # (B, T, N, N, 2)
    distance = offset.norm(dim=-1)
    unit = offset / distance.clamp(min=1e-6)[..., None]                               # from dst toward src
    height = (s[..., _F["h"]] + d[..., _F["h"]]).clamp(min=1e-6) / 2
    inter_w = (torch.minimum(s[..., _F["x2"]], d[..., _F["x2"]]) - torch.maximum(s[..., _F["x1"]], d[..., _F["x1"]])).clamp(min=0)
    inter_h = (torch.minimum(s[..., _F["y2"]], d[..., _F["y2"]]) - torch.maximum(s[..., _F["y1"]], d[..., _F["y1"]])).clamp(min=0)
    inter = inter_w * inter_h
    iou = inter / (s[..., _F["area"]] + d[..., _F["area"]] - inter).clamp(min=1e-8)
    step_s, step_d = s[..., motion], d[..., motion]
    src_toward_dst = -(step_s * unit).sum(-1)
    dst_toward_src = (step_d * unit).sum(-1)
    together = (step_s * step_d).sum(-1) / (step_s.norm(dim=-1) * step_d.norm(dim=-1)).clamp(min=1e-6)
    # Distance (in heights) at the first frame where both were valid, carried forward to every later frame.
    both = pair_mask(valid)                                                            # (B, T, N, N)
    T = valid.shape[1]
    steps = torch.arange(T, device=valid.device).view(1, T, 1, 1)
    first = torch.where(both, steps, T).min(1, keepdim=True).values.clamp(max=T - 1)   # (B, 1, N, N)
    scaled = distance / height
    at_first = scaled.gather(1, first)
    ratio = lambda a: torch.log(s[..., a].clamp(min=1e-4) / d[..., a].clamp(min=1e-4))  # noqa: E731
    out = torch.stack([offset[..., 0], offset[..., 1], distance, scaled, iou, ratio(_F["h"]), ratio(_F["w"]),
                       src_toward_dst, dst_toward_src, src_toward_dst + dst_toward_src, at_first - scaled,
                       together], -1)
    return out * both[..., None]


def pair_mask(valid: torch.Tensor) -> torch.Tensor:
    """valid (B, T, N) -> (B, T, N, N): both people present in the frame, and not a person with itself."""
    N = valid.shape[-1]
    return valid[..., :, None] & valid[..., None, :] & ~torch.eye(N, dtype=torch.bool, device=valid.device)


def edge_relations(pairs: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """pairs (B, T, N, N, R) from ``pair_relations``, edges (2, E) from ``graph_edges`` over the B*T
    frames -> (E, R)."""
    N = pairs.shape[2]
    flat = pairs.flatten(0, 1)                                                         # (B*T, N, N, R)
    return flat[edges[0] // N, edges[0] % N, edges[1] % N]



class FacingDirections(nn.Module):
    """Which way each person turns, read from its features in each frame: x (B,T,N,C) -> (B,T,N,K,2) directions
    in the image plane, each component in [-1, 1]. The boxes alone cannot say which way a head or body turns;
    the features can. ``looks_at`` compares them with where the others stand; ``walking_facing_loss`` teaches
    the first one from the tracks (people face the way they walk)."""

    def __init__(self, in_dim: int, directions: int):
        super().__init__()
        self.directions = directions
        self.read = nn.Linear(in_dim, 2 * directions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.read(x)).unflatten(-1, (self.directions, 2))


def looks_at(facing: torch.Tensor, geometry: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """facing (B,T,N,K,2) from ``FacingDirections``, geometry (B,T,N,G) raw, valid (B,T,N) -> (B,T,N,N,K):
    [b, t, s, d, k] how far src s's k-th direction points the way from s to d (their dot product, the way a unit
    vector); zeros where either is absent. "The others turn toward this person" marks a gathering's centre, and
    the product of a direction and an offset is built in rather than left for the pair layers to find."""
    centre = geometry.float()[..., [_F["cx"], _F["cy"]]]
    toward = centre[..., None, :, :] - centre[..., :, None, :]                         # (B,T,N,N,2) s -> d
    toward = toward / toward.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    looks = torch.einsum("btskc,btsdc->btsdk", facing.float(), toward)
    return looks * pair_mask(valid)[..., None]


# Walking: at least this many body heights per sampled frame (a walk of 1.4 m/s sampled 16 times in 3 s moves
# about 0.15 heights a frame; standing sway stays well below).
MIN_WALKING_SPEED = 0.08


def walking_facing_loss(facing: torch.Tensor, geometry: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """facing (B,T,N,K,2), geometry (B,T,N,G) raw, valid (B,T,N) -> scalar: the squared distance between the
    first direction and the way each walking person moves, over the person-frames where someone walks (0 when
    nobody does). Free labels from the tracks: what it learns of how a walker looks turned one way, the
    direction reads in people standing too."""
    g = geometry.float()
    step, speed = g[..., [_F["dcx"], _F["dcy"]]], g[..., _F["speed"]]                   # (B,T,N,2), (B,T,N)
    walking = valid & (speed > MIN_WALKING_SPEED * g[..., _F["h"]].clamp(min=1e-6))
    way = step / speed.clamp(min=1e-6)[..., None]
    error = (facing[..., 0, :].float() - way).pow(2).sum(-1)
    return torch.where(walking, error, torch.zeros_like(error)).sum() / walking.sum().clamp(min=1)
