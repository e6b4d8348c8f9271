"""Label-preserving augmentations of a training batch: what changes a clip without changing who its VIP is.

Each applies to every clip of the batch with its own random draw, on the batch as the model reads it (raw box
geometry in frame fractions, masks), so it costs no extra read or extraction:
- ``shift`` / ``scale``: the whole scene moved and zoomed about the frame's middle, as another framing of the
  same event would show it; how people stand and move relative to each other is unchanged (relations are
  offsets, and distances are read in body heights);
- ``jitter``: every box's edges moved independently in every frame by noise of this fraction of the box's size
  (standard deviation), as a detector's boxes wobble; the motion fields follow the boxes;
- ``mirror``: the scene flipped left-right, boxes and motion with it (the visual features are not: they
  were made from the unflipped pixels, so a cue such as where a face looks is contradicted in flipped clips;
  measured, not assumed; refused beside model.looks_at, whose facing directions read exactly that cue);
- ``drop_people``: each person other than the VIP left out of the clip with this probability, as a detector
  that misses a bystander would (at least two people stay);
- ``frame_window``: the clip cut to a random window of at least this fraction of its frames (1: never), as
  another clip boundary around the same event would (the VIP stays in the window);
- ``drop_visual``: each person's visual features in each frame zeroed with this probability (stored features
  only; a regulariser more than a new view: the model cannot lean on one person's look in one frame);
- ``drop_visual_clips``: a whole clip's visual features zeroed with this probability (modality dropout), so the
  model must also rank from the boxes alone and cannot learn a clip by how its people happen to look: with a
  backbone whose features carry little about the VIP (the embedded random one) they are mostly a way to
  memorise a small training set.
The draws come from the process's seeded generator, which checkpoints save: same seed, same batches, and a
resumed run draws what the uninterrupted one would. Each process draws for its own clips, so with augmentations
on, a run's numbers depend on its number of processes (as its dropout does).
"""
from __future__ import annotations

import torch

from svip_core.features.geometry import GEOMETRY_FIELDS, box_geometry

_F = {name: i for i, name in enumerate(GEOMETRY_FIELDS)}
NO_AUGMENTATION = {"shift": 0.0, "scale": 0.0, "jitter": 0.0, "mirror": 0.0, "drop_people": 0.0, "frame_window": 1.0,
                   "drop_visual": 0.0, "drop_visual_clips": 0.0}


def enabled(cfg: dict | None) -> bool:
    return bool(cfg) and any(cfg.get(k, v) != v for k, v in NO_AUGMENTATION.items())


def _uniform(shape, low: float, high: float, device) -> torch.Tensor:
    # Drawn on the CPU generator, so a GPU run draws the same numbers as a CPU one.
    return (torch.rand(shape) * (high - low) + low).to(device)


def reframe(geometry: torch.Tensor, valid: torch.Tensor, shift: float, scale: float, mirror: float) -> torch.Tensor:
    """geometry (B,T,N,G) raw, valid (B,T,N) -> geometry of each clip zoomed by a factor in [1-scale, 1+scale]
    about the frame's middle, moved by up to ``shift`` of the frame each way, and mirrored with probability
    ``mirror``: the boxes are moved, and every other field is computed from them as the store's were."""
    B, device = geometry.shape[0], geometry.device
    s = _uniform((B, 1, 1, 1), 1 - scale, 1 + scale, device)
    dx, dy = _uniform((B, 1, 1, 1), -shift, shift, device), _uniform((B, 1, 1, 1), -shift, shift, device)
    flip = (torch.rand(B) < mirror).to(device).view(B, 1, 1, 1)
    x1, y1, x2, y2 = geometry[..., :4].unbind(-1)
    # Mirrored, the left edge is the old right one.
    x1, x2 = torch.where(flip[..., 0], 1 - x2, x1), torch.where(flip[..., 0], 1 - x1, x2)
    boxes = torch.stack([x1, y1, x2, y2], -1)
    offset = torch.cat([dx, dy, dx, dy], -1)
    return box_geometry(0.5 + s * (boxes - 0.5) + offset, valid)


def jitter_boxes(geometry: torch.Tensor, valid: torch.Tensor, sigma: float) -> torch.Tensor:
    """geometry (B,T,N,G) raw, valid (B,T,N) -> the geometry of the same boxes with each edge moved by Gaussian
    noise of ``sigma`` times the box's width (x edges) or height (y edges), motion recomputed from the boxes."""
    boxes = geometry[..., :4]
    size = geometry[..., [_F["w"], _F["h"], _F["w"], _F["h"]]]
    noise = torch.randn(boxes.shape).to(boxes.device) * sigma * size
    moved = boxes + noise
    # Edges must not cross: a box keeps a positive size however large the noise.
    x1, y1 = torch.minimum(moved[..., 0], moved[..., 2] - 1e-4), torch.minimum(moved[..., 1], moved[..., 3] - 1e-4)
    return box_geometry(torch.stack([x1, y1, moved[..., 2], moved[..., 3]], -1), valid)


def drop_people(valid: torch.Tensor, target: torch.Tensor, p: float) -> torch.Tensor:
    """valid (B,T,N), target (B,) -> valid without each non-target person with probability ``p``; a clip that
    would keep fewer than two people keeps everyone."""
    B, _, N = valid.shape
    dropped = (torch.rand(B, N) < p).to(valid.device)
    dropped.scatter_(1, target[:, None], False)
    present = valid.any(1)
    kept = present & ~dropped
    dropped &= (kept.sum(1, keepdim=True) >= 2)
    return valid & ~dropped[:, None]


def frame_window(valid: torch.Tensor, target: torch.Tensor, shortest: float) -> torch.Tensor:
    """valid (B,T,N), target (B,) -> valid inside a random window of at least ``shortest`` of the T frames per
    clip; a clip whose VIP would be absent from its window keeps every frame."""
    B, T, _ = valid.shape
    length = (_uniform((B,), shortest, 1.0, "cpu") * T).round().clamp(1, T).long()
    start = (torch.rand(B) * (T - length + 1)).floor().long()
    t = torch.arange(T)
    inside = ((t >= start[:, None]) & (t < (start + length)[:, None])).to(valid.device)       # (B, T)
    cut = valid & inside[..., None]
    vip_seen = cut.gather(2, target.view(B, 1, 1).expand(B, T, 1)).any(1)[:, 0]
    return torch.where(vip_seen.view(B, 1, 1), cut, valid)


def augment(batch: dict, cfg: dict) -> dict:
    """A training batch (``geometry`` raw (B,T,N,G), ``valid`` (B,T,N), ``target`` (B,), visual or tokens) ->
    the same batch augmented as ``cfg`` (keys of ``NO_AUGMENTATION``) says. With tokens (tuned backbone blocks)
    the boxes the visual features are pooled from stay the stored ones (``boxes``): only the geometry the
    ranker reads is reframed."""
    cfg = {**NO_AUGMENTATION, **cfg}
    out = dict(batch)
    valid, target = batch["valid"], batch["target"]
    if cfg["drop_people"] > 0:
        valid = drop_people(valid, target, cfg["drop_people"])
    if cfg["frame_window"] < 1:
        valid = frame_window(valid, target, cfg["frame_window"])
    geometry = batch["geometry"]
    if "tokens" in batch and any(cfg[k] > 0 for k in ("shift", "scale", "jitter", "mirror")):
        out["boxes"] = geometry[..., :4]
    if cfg["jitter"] > 0:
        geometry = jitter_boxes(geometry, valid, cfg["jitter"])
    if cfg["shift"] > 0 or cfg["scale"] > 0 or cfg["mirror"] > 0:
        geometry = reframe(geometry, valid, cfg["shift"], cfg["scale"], cfg["mirror"])
    out.update(geometry=geometry * valid[..., None].to(geometry.dtype), valid=valid)
    if cfg["drop_visual"] > 0 and "visual" in batch:
        kept = (torch.rand(valid.shape) >= cfg["drop_visual"]).to(valid.device)
        out["visual"] = batch["visual"] * kept[..., None].to(batch["visual"].dtype)
    if cfg["drop_visual_clips"] > 0 and "visual" in batch:
        kept = (torch.rand(valid.shape[:1]) >= cfg["drop_visual_clips"]).to(valid.device)
        out["visual"] = out["visual"] * kept[:, None, None, None].to(batch["visual"].dtype)
    return out
