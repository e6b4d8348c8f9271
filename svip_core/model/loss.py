"""Ranking loss: cross-entropy + preference loss + optional pairwise hard-negative margin."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def ranking_loss(logits: torch.Tensor, target: torch.Tensor, present: torch.Tensor, preference_weight: float,
                 pairwise_weight: float, margin: float) -> dict[str, torch.Tensor]:
    """logits (B, N) with -inf for absent people, target (B,), present (B, N) bool -> loss terms (scalars).

    Preference: softplus(log-mean-exp of the negatives - positive). Pairwise: softplus(hardest negative -
    positive + margin). Clips with no negative contribute zero to both.
    """
    safe = logits.masked_fill(~present, -1e4)
    ce = F.cross_entropy(safe, target)
    pos = safe.gather(1, target[:, None])[:, 0]
    neg = present.clone()
    neg.scatter_(1, target[:, None], False)
    has_neg = neg.any(1).to(logits.dtype)
    neg_logits = safe.masked_fill(~neg, -1e4)
    count = neg.sum(1).clamp(min=1).to(logits.dtype)
    neg_soft = torch.logsumexp(neg_logits, 1) - torch.log(count)
    pref = (F.softplus(neg_soft - pos) * has_neg).sum() / has_neg.sum().clamp(min=1)
    total = ce + preference_weight * pref
    out = {"ce": ce.detach(), "preference": pref.detach()}
    if pairwise_weight > 0:
        pair = (F.softplus(neg_logits.max(1).values - pos + margin) * has_neg).sum() / has_neg.sum().clamp(min=1)
        total = total + pairwise_weight * pair
        out["pairwise"] = pair.detach()
    out["total"] = total
    return out
