"""From scores to a ranking. Tie rule: tied people are taken in uniformly random order, and every figure is
its exact expectation under that order, so neither slot order nor a constant score can win by accident.
A clip whose target is absent (tied == 0) counts as a miss: 0 in every figure, never NaN."""
from __future__ import annotations

import torch


def target_rank_stats(scores: torch.Tensor, target: torch.Tensor, present: torch.Tensor):
    """scores (V, N), target (V,), present (V, N) -> (above, tied), each (V,): how many present people score
    strictly above the target, and how many tie with it (the target included; 0 when the target is absent)."""
    s = scores.float().masked_fill(~present, float("-inf"))
    t = s.gather(1, target[:, None])
    above = ((s > t) & present).sum(1)
    tied = ((s == t) & present).sum(1)
    return above, tied


def hit_at_k(above: torch.Tensor, tied: torch.Tensor, k: int) -> torch.Tensor:
    """(V,) probability that the target is within the first k (CMC@k; k=1 is top-1); 0 if it is absent."""
    return torch.where(tied > 0, (k - above).float() / tied.clamp(min=1).float(), 0.0).clamp(0, 1)


def reciprocal_rank(above: torch.Tensor, tied: torch.Tensor) -> torch.Tensor:
    """(V,) expected 1/rank with the target's rank uniform over above+1 .. above+tied; 0 if it is absent."""
    n = int((above + tied).max()) + 1 if len(above) else 1
    harmonic = torch.cat([torch.zeros(1), torch.cumsum(1.0 / torch.arange(1, n + 1), 0)]).to(above.device)
    rr = (harmonic[above + tied] - harmonic[above]) / tied.clamp(min=1).float()
    return torch.where(tied > 0, rr, 0.0)


def rank_people(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """scores (V, N) -> rank (V, N) starting at 1 for the most important present person, 0 for absent ones.
    Ties share the best rank among them."""
    s = scores.float().masked_fill(~present, float("-inf"))
    rank = ((s[:, None, :] > s[:, :, None]) & present[:, None, :]).sum(-1) + 1
    return rank * present
