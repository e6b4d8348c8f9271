"""Person features from a backbone: ROI pooling of patch tokens, or square crops for the crop mode."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _box_grid(boxes: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """boxes (F, N, 4) normalised xyxy -> sampling grid (F, N*rows, cols, 2) in grid_sample's [-1, 1] space,
    at the centres of a rows x cols lattice of cells inside each box."""
    steps_y = (torch.arange(rows, device=boxes.device, dtype=boxes.dtype) + 0.5) / rows
    steps_x = (torch.arange(cols, device=boxes.device, dtype=boxes.dtype) + 0.5) / cols
    x1, y1, x2, y2 = boxes.unbind(-1)                                                 # (F, N)
    ys = y1[..., None] + (y2 - y1)[..., None] * steps_y                               # (F, N, rows)
    xs = x1[..., None] + (x2 - x1)[..., None] * steps_x                               # (F, N, cols)
    grid = torch.stack(torch.broadcast_tensors(xs[:, :, None, :], ys[:, :, :, None]), -1)  # (F, N, rows, cols, 2)
    return (grid * 2 - 1).flatten(1, 2)


def roi_pool(tokens: torch.Tensor, boxes: torch.Tensor, samples: int, pooling: str = "mean") -> torch.Tensor:
    """tokens (F, D, h, w) patch-token map, boxes (F, N, 4) -> bilinear samples at a k x k lattice inside each
    box (k = ``samples``): "mean" averages them, (F, N, D); "grid" keeps them row by row, (F, N, k*k, D), as
    RoIAlign does, so where in the box a feature lies (which side of the head the face is on) survives."""
    Fr, N = boxes.shape[:2]
    grid = _box_grid(boxes.to(tokens.dtype), samples, samples)
    pooled = F.grid_sample(tokens, grid, mode="bilinear", padding_mode="border", align_corners=False)
    cells = pooled.view(Fr, -1, N, samples * samples).permute(0, 2, 3, 1)            # (F, N, k*k, D)
    return cells if pooling == "grid" else cells.mean(2)


def crop_boxes(frames: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """frames (F, 3, H, W), boxes (F, N, 4) -> (F, N, 3, size, size): each box stretched to a square
    (the reference's crop behaviour)."""
    Fr, N = boxes.shape[:2]
    grid = _box_grid(boxes.to(frames.dtype), size, size)
    crops = F.grid_sample(frames, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return crops.view(Fr, 3, N, size, size).transpose(1, 2)
