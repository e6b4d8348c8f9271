"""Raw box geometry per person per frame. Any learned encoder of it belongs to the model."""
from __future__ import annotations

import torch

GEOMETRY_FIELDS = ("x1", "y1", "x2", "y2", "cx", "cy", "w", "h", "area", "dcx", "dcy", "speed")


def box_geometry(boxes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """boxes (..., T, N, 4) normalised xyxy, valid (..., T, N) -> (..., T, N, 12) with GEOMETRY_FIELDS.

    Motion is measured only between consecutive frames where the person is valid in both, so entering,
    leaving or re-appearing after a gap gives zero motion instead of a jump from the zero box.
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    w, h = (x2 - x1).clamp(min=0), (y2 - y1).clamp(min=0)
    centre = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2], -1)                          # (..., T, N, 2)
    both = valid[..., 1:, :] & valid[..., :-1, :]
    step = (centre[..., 1:, :, :] - centre[..., :-1, :, :]) * both[..., None]
    delta = torch.cat([torch.zeros_like(centre[..., :1, :, :]), step], -3)            # (..., T, N, 2); T = 1 too
    geom = torch.cat([boxes, centre, w[..., None], h[..., None], (w * h)[..., None], delta,
                      delta.norm(dim=-1, keepdim=True)], -1)
    return geom * valid[..., None]


def corner_boxes(geometry: torch.Tensor) -> torch.Tensor:
    """Raw geometry (..., G) -> the boxes (..., 4) normalised xyxy it was computed from (zero where absent)."""
    return geometry[..., :4]
