"""How two people of a frame stand and move relative to each other: features of each directed pair.

For an edge src -> dst (dst attends to src) and raw box geometry (``features.geometry.GEOMETRY_FIELDS``):
offset of src from dst (dx, dy), distance, distance in body heights, IoU, log height and width ratios,
how fast src moves toward dst, how fast dst moves toward src, and how fast the gap closes. Motion is the
per-sample step already in the geometry, so "everyone walks up to me" is a direct input, not something the
model must reconstruct from absolute positions.
"""
from __future__ import annotations

import torch

from svip_core.features.geometry import GEOMETRY_FIELDS

RELATION_FIELDS = ("dx", "dy", "distance", "distance_in_heights", "iou", "log_height_ratio", "log_width_ratio",
                   "src_toward_dst", "dst_toward_src", "closing_speed")
_F = {name: i for i, name in enumerate(GEOMETRY_FIELDS)}


def complete_graph_edges(valid: torch.Tensor) -> torch.Tensor:
    """valid (F, N) bool -> edge_index (2, E) over F*N nodes: src -> dst for every ordered pair of distinct
    valid people in the same frame."""
    Fr, N = valid.shape
    pair = valid[:, :, None] & valid[:, None, :] & ~torch.eye(N, dtype=torch.bool, device=valid.device)
    frame, src, dst = pair.nonzero(as_tuple=True)
    return torch.stack([frame * N + src, frame * N + dst])


def relation_features(geometry: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """geometry (M, G) raw per node, edges (2, E) -> (E, len(RELATION_FIELDS))."""
    src, dst = geometry[edges[0]], geometry[edges[1]]
    centre = [_F["cx"], _F["cy"]]
    offset = src[:, centre] - dst[:, centre]                                          # (E, 2)
    distance = offset.norm(dim=-1)
    unit = offset / distance.clamp(min=1e-6)[:, None]                                 # from dst toward src
    height = (src[:, _F["h"]] + dst[:, _F["h"]]).clamp(min=1e-6) / 2
    inter_w = (torch.minimum(src[:, _F["x2"]], dst[:, _F["x2"]]) - torch.maximum(src[:, _F["x1"]], dst[:, _F["x1"]])).clamp(min=0)
    inter_h = (torch.minimum(src[:, _F["y2"]], dst[:, _F["y2"]]) - torch.maximum(src[:, _F["y1"]], dst[:, _F["y1"]])).clamp(min=0)
    inter = inter_w * inter_h
    iou = inter / (src[:, _F["area"]] + dst[:, _F["area"]] - inter).clamp(min=1e-8)
    motion = [_F["dcx"], _F["dcy"]]
    src_toward_dst = -(src[:, motion] * unit).sum(-1)
    dst_toward_src = (dst[:, motion] * unit).sum(-1)
    log_ratio = lambda a, b: torch.log(src[:, a].clamp(min=1e-4) / dst[:, b].clamp(min=1e-4))  # noqa: E731
    return torch.stack([offset[:, 0], offset[:, 1], distance, distance / height, iou, log_ratio(_F["h"], _F["h"]),
                        log_ratio(_F["w"], _F["w"]), src_toward_dst, dst_toward_src,
                        src_toward_dst + dst_toward_src], -1)
