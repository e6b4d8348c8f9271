"""The SVIP ranker: fused person features -> frame graph -> person tracks -> clip context -> scores.

Shapes: B clips, T frames, N person slots, D visual dim, G geometry dim. ``valid`` (B,T,N) marks a person
present in a valid frame; a person never valid in the clip gets no score (-inf logit). Geometry comes in raw
(``features.geometry``) and is standardised inside the model with training statistics (``fit_normalisation``),
so evaluate and predict read it exactly as training did.
"""
from __future__ import annotations

import torch
from torch import nn

from svip_core.features.geometry import corner_boxes
from svip_core.features.split_backbone import TunedHead, roi_cells, tuned_head_for
from svip_core.model.graph import FrameGAT
from svip_core.model.normalise import FeatureNorm
from svip_core.model.relations import FacingDirections, pair_mask, pair_relations, walking_facing_loss
from svip_core.model.temporal import EventContext, PersonTemporalEncoder
from svip_core.model.temporal_pooling import TemporalPool, TrackSummary, masked_max, masked_mean


def scoring_head(dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim // 2), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim // 2, 1))


class SVIPRanker(nn.Module):
    """Relational branch: fusion -> GATv2 per frame (relation features on its edges) -> temporal Transformer ->
    event token -> pooling, plus the attention flow pooled over time. Self branch (dual head): fusion -> the same
    temporal encoder and pooling, no social context. Both add the person's track summary. A learned per-person
    gate mixes the two scores."""

    def __init__(self, visual_dim: int, geometry_in: int, cfg: dict, visual_cells: int = 1):
        super().__init__()
        d, drop = cfg["d_model"], cfg["dropout"]
        # A grid of cells per box (features.roi_pooling: grid): the fusion reads their mean (of the normalised
        # cells, renormalised: close to mean pooling's feature, not equal) since, fed the whole grid, the model
        # memorised sooner (0.873 top-1 against 0.912 at 600 relational clips); only the facing directions read
        # where in the box each feature lies.
        self.visual_cells = visual_cells
        self.geometry_norm = FeatureNorm(geometry_in)
        self.geometry = nn.Sequential(nn.Linear(geometry_in, cfg["geometry_dim"]), nn.ReLU(),
                                      nn.Linear(cfg["geometry_dim"], cfg["geometry_dim"]))
        self.fuse = nn.Sequential(nn.Linear(visual_dim // visual_cells + cfg["geometry_dim"], cfg["fused_dim"]), nn.ReLU(),
                                  nn.Dropout(drop))
        self.gat = (FrameGAT(cfg["fused_dim"] + geometry_in, cfg["gat_hidden"], cfg["gat_layers"], cfg["gat_heads"],
                             drop, cfg.get("relation_features", False), cfg.get("attention_flow", False),
                             history_dim=d, pair_summary=cfg.get("pair_summary", False),
                             facing_directions=cfg.get("looks_at", 0), neighbours=cfg.get("neighbours", 0),
                             memory=cfg.get("relational_memory", False))
                    if cfg["gat_layers"] > 0 else None)
        # Facing directions (model.looks_at of them) are read from the visual features alone, by one linear map:
        # through the fusion the ranking loss never found them (600 clips), and with the motion fields beside
        # them the walking loss is met by reading the motion, which says nothing of people standing.
        looks = cfg.get("looks_at", 0) if self.gat is not None and cfg.get("relation_features", False) else 0
        self.facing = FacingDirections(visual_dim, looks) if looks else None
        flow = self.gat.flow_dim if self.gat is not None else 0
        self.flow = nn.Sequential(nn.Linear(2 * flow, d), nn.GELU()) if flow else None
        # The flow also enters the temporal encoder, per frame, so how attention moves over time counts too.
        rel_in = (cfg["gat_hidden"] + flow) if self.gat is not None else cfg["fused_dim"]
        temporal = dict(d_model=d, heads=cfg["temporal_heads"], ffn=cfg["temporal_ffn"],
                        layers=cfg["temporal_layers"], dropout=drop, time_encoding=cfg["time_encoding"])
        self.rel_temporal = PersonTemporalEncoder(rel_in, **temporal)
        self.event = EventContext(d, cfg["temporal_heads"], cfg["temporal_ffn"], drop) if cfg["event_token"] else None
        self.pool = TemporalPool(d, d, cfg["temporal_heads"], drop, cfg["pooling"])
        # Each person's own geometry over the clip, in closed form, joins both heads' pooled tracks.
        self.summary = TrackSummary(geometry_in, d) if cfg.get("track_summary", False) else None
        self.rel_score = scoring_head(d, drop)
        self.dual_head = cfg["dual_head"]
        if self.dual_head:
            self.self_proj = nn.Linear(cfg["fused_dim"], rel_in)
            self.self_score = scoring_head(d, drop)
            self.gate = nn.Sequential(nn.Linear(2 * d, d // 2), nn.ReLU(), nn.Dropout(drop), nn.Linear(d // 2, 1))
        # The backbone's last blocks when they are fine-tuned (train.finetune_blocks; attached by train, evaluate
        # and predict): visual features are then made from the stored trunk tokens in the forward pass.
        self.tuned_head: TunedHead | None = None

    @torch.no_grad()
    def fit_normalisation(self, geometry: torch.Tensor, valid: torch.Tensor) -> dict:
        """Standardise inputs with the training split's statistics: geometry (V,T,N,G) raw, valid (V,T,N).
        Returns the statistics (for model.json)."""
        self.geometry_norm.fit(geometry[valid])
        out = {"geometry": self.geometry_norm.stats()}
        if self.gat is not None and self.gat.relation_norm is not None:
            # Pairs grow with people squared: 64 clips give plenty of pairs, read 16 clips at a time.
            parts = [pair_relations(g, v)[pair_mask(v)] for g, v in zip(geometry[:64].split(16), valid[:64].split(16))]
            self.gat.relation_norm.fit(torch.cat(parts))
            out["relations"] = self.gat.relation_norm.stats()
        return out

    def forward(self, visual: torch.Tensor | None, geometry: torch.Tensor, valid: torch.Tensor,
                tokens: torch.Tensor | None = None, boxes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """visual (B,T,N,D), geometry (B,T,N,G) raw, valid (B,T,N) -> logits (B,N) (-inf for absent people).
        With a tuned head, ``tokens`` (the trunk's, as a store holds them: ``TunedHead.clip_features``) give the
        visual features instead, pooled in ``boxes`` (B,T,N,4) (default: the geometry's own; an augmented
        batch keeps the stored ones)."""
        if tokens is not None:
            boxes = corner_boxes(geometry) if boxes is None else boxes
            visual = self.tuned_head.clip_features(tokens, boxes, valid)
        # Stores keep visual features in float16 up to here (half the bytes to read and to copy).
        visual = visual.to(self.fuse[0].weight.dtype)
        m = valid[..., None].to(visual.dtype)
        standard = self.geometry_norm(geometry) * m                                   # (B, T, N, G)
        seen = visual
        if self.visual_cells > 1:
            seen = nn.functional.normalize(visual.unflatten(-1, (self.visual_cells, -1)).mean(-2), dim=-1) * m
        fused = self.fuse(torch.cat([seen, self.geometry(standard)], -1)) * m
        facing = None
        if self.gat is not None:
            # The GAT also reads each person's standardised geometry as it is, beside the fused features: mixed
            # in with visual features, where people stand and move was too hard for its attention to compare
            # (without relation features, 0.27 -> 0.66 test top-1 on the relational scenes, seed 1).
            facing = self.facing(visual * m) if self.facing is not None else None
            social, flow, history = self.gat(torch.cat([fused, standard], -1), geometry, valid, facing)
        else:
            social, flow, history = fused, None, None
        if flow is not None:
            social = torch.cat([social, flow], -1)
        rel = self.rel_temporal(social, valid)
        if self.event is not None:
            rel = self.event(rel, valid)
        summary = self.summary(standard, valid) if self.summary is not None else 0
        rel_pooled = self.pool(rel, valid) + summary
        if self.flow is not None:
            rel_pooled = rel_pooled + self.flow(pooled_flow(flow, valid))
        if history is not None:
            rel_pooled = rel_pooled + history
        logits = self.rel_score(rel_pooled)[..., 0]                                   # (B, N)
        out = {"rel_logits": logits}
        if self.dual_head:
            # Self branch shares the temporal encoder and pooling with the relational one, as in the reference.
            self_pooled = self.pool(self.rel_temporal(self.self_proj(fused) * m, valid), valid) + summary
            self_logits = self.self_score(self_pooled)[..., 0]
            g = torch.sigmoid(self.gate(torch.cat([self_pooled, rel_pooled], -1)))[..., 0]
            logits = (1 - g) * self_logits + g * logits
            out.update(self_logits=self_logits, gate=g)
        present = valid.any(1)
        out["logits"] = logits.masked_fill(~present, float("-inf"))
        if facing is not None and self.training:
            out["facing_loss"] = walking_facing_loss(facing, geometry, valid)
        return out


def pooled_flow(flow: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """flow (B,T,N,F), valid (B,T,N) -> (B,N,2F): mean and max over the frames where the person is valid."""
    return torch.cat([masked_mean(flow, valid), masked_max(flow, valid)], -1)


def build_ranker(cfg: dict, visual_dim: int, geometry_dim: int, features: dict | None = None) -> SVIPRanker:
    """``features``: the features section the stores were made with (how many cells a visual feature holds)."""
    return SVIPRanker(visual_dim, geometry_dim, cfg, roi_cells(features or {}))


def attach_tuned_head(model, k: int, features: dict, checkpointing: bool = False) -> None:
    """Give the ranker the tuned last ``k`` blocks of the backbone the stores were made with (``features``: a
    store's attributes, whose ``backbone`` is the folder it was loaded from); nothing for k = 0."""
    if k:
        model.tuned_head = tuned_head_for(features["backbone"], k, features["features"])
        model.tuned_head.checkpointing = checkpointing
