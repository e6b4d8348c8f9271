"""The backbone split at block L-k for fine-tuning its last k blocks (``train.finetune_blocks``).

The frozen trunk (patch embedding and blocks 0 .. L-k-1) runs once, at extract, and its output tokens are what a
store keeps (``extract.person_features_and_tokens`` takes them from the backbone's pass, through Hugging Face's
``output_hidden_states``); the tuned head (blocks L-k .. L-1 and the final layer norm, copied from the backbone)
runs in training, and person features are pooled from its output as ``extract.person_features`` pools them from
the whole backbone's, so with the head's weights unchanged the two give the same features. DINOv2 and DINOv2 with
registers are split this way (``backbone.encoder.layer``, ``backbone.layernorm``).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from svip_core.features.backbone import BackboneError, leading_tokens, load_backbone
from svip_core.features.roi_pooling import roi_pool


def _blocks(backbone) -> nn.ModuleList:
    encoder = getattr(backbone, "encoder", None)
    if encoder is None or not hasattr(encoder, "layer") or not hasattr(backbone, "layernorm"):
        raise BackboneError(f"cannot split {type(backbone).__name__} for fine-tuning (no encoder.layer and "
                            "layernorm). Fix: use a DINOv2 backbone, or set train.finetune_blocks: 0")
    return encoder.layer


def check_tuned_blocks(backbone, k: int) -> None:
    """Refuse a backbone that cannot be split, or a k it cannot be split at (0 < k <= L), in the config's one-line
    form."""
    _blocks(backbone)
    L = backbone.config.num_hidden_layers
    if not 0 < k <= L:
        raise BackboneError(f"train.finetune_blocks = {k}, but the backbone has {L} blocks. "
                            f"Fix: set train.finetune_blocks between 0 and {L}")


def pool_persons(hidden: torch.Tensor, boxes: torch.Tensor, mode: str, lead: int, grid: tuple[int, int] | None,
                 roi_samples: int | None, roi_pooling: str = "mean") -> torch.Tensor:
    """The backbone's last hidden state -> L2-normalised person features (F, N, D') float32 (D' from
    ``person_feature_dim``). roi mode: hidden (F, lead + h*w, D) of whole frames whose patch grid is ``grid``,
    pooled inside boxes (F, N, 4) normalised xyxy (``roi_pooling`` "grid": the k*k samples side by side, each
    normalised); crop mode: hidden (F*N, S, D) of each person's crop, frame-major, whose CLS token is the feature."""
    if mode == "roi":
        h, w = grid
        patches = hidden[:, lead:].transpose(1, 2).reshape(len(hidden), -1, h, w)
        feats = roi_pool(patches.float(), boxes, roi_samples, roi_pooling)
        return F.normalize(feats, dim=-1).flatten(2)
    return F.normalize(hidden[:, 0].float().view(*boxes.shape[:2], -1), dim=-1)


def roi_cells(features_cfg: dict) -> int:
    """How many samples of a box a person's visual feature holds side by side: k*k for roi mode's "grid"
    pooling, else 1."""
    if features_cfg.get("mode") == "roi" and features_cfg.get("roi_pooling", "mean") == "grid":
        return features_cfg["roi_samples"] ** 2
    return 1


def person_feature_dim(config, features_cfg: dict) -> int:
    """The length of a person's visual feature in a frame: the backbone's width times ``roi_cells``."""
    return roi_cells(features_cfg) * config.hidden_size


def patch_grid(config, features_cfg: dict) -> tuple[int, int] | None:
    """(h, w) patches of a roi-mode frame (the patch embedding drops a partial patch); None in crop mode."""
    if features_cfg["mode"] != "roi":
        return None
    H, W = features_cfg["frame_size"]
    return H // config.patch_size, W // config.patch_size


class TunedHead(nn.Module):
    """The backbone's last k blocks and its final layer norm, trainable, with the person pooling of
    ``extract.person_features`` after them. ``grid``: the patch grid (h, w) of a frame, in roi mode."""

    def __init__(self, backbone, k: int, mode: str, roi_samples: int | None, grid: tuple[int, int] | None = None,
                 roi_pooling: str = "mean"):
        super().__init__()
        check_tuned_blocks(backbone, k)
        blocks = _blocks(backbone)
        self.blocks = nn.ModuleList(copy.deepcopy(blocks[len(blocks) - k:]))
        self.layernorm = copy.deepcopy(backbone.layernorm)
        self.requires_grad_(True)
        self.mode, self.roi_samples, self.grid, self.roi_pooling = mode, roi_samples, grid, roi_pooling
        self.feature_dim = person_feature_dim(backbone.config, {"mode": mode, "roi_samples": roi_samples,
                                                                 "roi_pooling": roi_pooling})
        self.lead = leading_tokens(backbone.config)
        self.checkpointing = False          # activation checkpointing of each block: memory for recomputation

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (F, S, D) entering block L-k -> (F, S, D) the backbone's last hidden state."""
        for block in self.blocks:
            if self.checkpointing and self.training:
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
        return self.layernorm(tokens)

    def forward(self, tokens: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """L2-normalised person features (F, N, D) float32.

        roi mode: tokens (F, S, D) of whole frames, boxes (F, N, 4) normalised xyxy; the patch tokens are pooled
        inside each box. crop mode: tokens (F*N, S, D) of each person's crop (frame-major); the CLS token of each.
        """
        return pool_persons(self.hidden(tokens), boxes, self.mode, self.lead, self.grid, self.roi_samples,
                            self.roi_pooling)

    def clip_features(self, tokens: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """A batch of clips as a store holds them -> visual (B, T, N, D) float32, zero where a person is absent
        (as the store's ``visual``). tokens: (B, T, S, D) in roi mode, (B, T, N, S, D) in crop mode; boxes
        (B, T, N, 4) normalised xyxy; valid (B, T, N). Only frames with someone in them (roi) or present people's
        crops (crop) run through the blocks."""
        dtype = self.layernorm.weight.dtype
        out = boxes.new_zeros((*valid.shape, self.feature_dim), dtype=torch.float32)
        if self.mode == "roi":
            frames = valid.any(-1)                                                      # (B, T)
            out[frames] = self(tokens[frames].to(dtype), boxes[frames])
        else:
            hidden = self.hidden(tokens[valid].to(dtype))                               # (P, S, D)
            out[valid] = F.normalize(hidden[:, 0].float(), dim=-1)
        return out * valid[..., None]


def tuned_head_for(backbone_source, k: int, features_cfg: dict) -> TunedHead:
    """The tuned head of the backbone at ``backbone_source`` (a folder or hub id), pooling as ``features_cfg``
    (the features section that made the stores) says."""
    backbone = load_backbone(backbone_source)
    return TunedHead(backbone, k, features_cfg["mode"], features_cfg.get("roi_samples"),
                     patch_grid(backbone.config, features_cfg), features_cfg.get("roi_pooling", "mean"))
