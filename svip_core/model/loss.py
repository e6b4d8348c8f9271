"""Ranking loss: cross-entropy + preference loss + optional pairwise hard-negative margin."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _clip_mean(per_clip: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """per_clip (B,), keep (B,) bool -> mean over the kept clips; 0 (still attached to the graph) if none."""
    # where, not a product: a dropped clip's term may be huge, and its gradient must be exactly zero.
    return torch.where(keep, per_clip, torch.zeros_like(per_clip)).sum() / keep.sum().clamp(min=1)


def ranking_loss(logits: torch.Tensor, target: torch.Tensor, present: torch.Tensor, preference_weight: float,
                 pairwise_weight: float, margin: float, keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """logits (B, N) with -inf for absent people, target (B,), present (B, N) bool -> loss terms (scalars).

    Preference: softplus(log-mean-exp of the negatives - positive). Pairwise: softplus(hardest negative -
    positive + margin). Clips with no negative contribute zero to both. A clip whose target is absent (a broken
    clip: validation and sampling should make it impossible) has no label to learn from: it is left out of
    every term, and ``target_absent`` counts such clips. ``keep`` (B,) bool: only these clips count (the
    confident ones of self-training; the others are not counted as absent targets).
    """
    labelled = present.gather(1, target[:, None])[:, 0]                                # (B,)
    absent = ~labelled
    if keep is not None:
        labelled = labelled & keep
    safe = logits.masked_fill(~present, -1e4)
    ce = _clip_mean(F.cross_entropy(safe, target, reduction="none"), labelled)
    pos = safe.gather(1, target[:, None])[:, 0]
    neg = present.clone()
    neg.scatter_(1, target[:, None], False)
    has_neg = neg.any(1) & labelled
    neg_logits = safe.masked_fill(~neg, -1e4)
    count = neg.sum(1).clamp(min=1).to(logits.dtype)
    neg_soft = torch.logsumexp(neg_logits, 1) - torch.log(count)
    pref = _clip_mean(F.softplus(neg_soft - pos), has_neg)
    total = ce + preference_weight * pref
    out = {"ce": ce.detach(), "preference": pref.detach(), "target_absent": absent.sum().detach()}
    if pairwise_weight > 0:
        pair = _clip_mean(F.softplus(neg_logits.max(1).values - pos + margin), has_neg)
        total = total + pairwise_weight * pair
        out["pairwise"] = pair.detach()
    out["total"] = total
    return out
