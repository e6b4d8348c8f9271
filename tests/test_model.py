"""The ranker: batched graph, masks, permutation equivariance, loss, tie-aware ranking."""
from __future__ import annotations

import pytest
import torch

from svip_core.model.graph import complete_graph_edges
from svip_core.model.loss import ranking_loss
from svip_core.model.ranker import build_ranker
from svip_core.model.ranking import hit_at_k, rank_people, reciprocal_rank, target_rank_stats

CFG = {"fused_dim": 32, "geometry_dim": 8, "gat_hidden": 16, "gat_layers": 2, "gat_heads": 2, "d_model": 16,
       "temporal_layers": 1, "temporal_heads": 2, "temporal_ffn": 32, "time_encoding": True, "event_token": True,
       "dual_head": True, "pooling": "attention", "dropout": 0.0}


def test_complete_graph_edges_link_valid_people_within_each_frame_only():
    valid = torch.tensor([[True, True, False], [True, False, True]])
    edges = complete_graph_edges(valid).T.tolist()
    assert sorted(map(tuple, edges)) == [(0, 1), (1, 0), (3, 5), (5, 3)]


@pytest.mark.parametrize("variant", [{}, {"gat_layers": 0}, {"temporal_layers": 0}, {"event_token": False},
                                     {"dual_head": False}, {"pooling": "mean"}])
def test_absent_people_get_no_score_and_slots_are_permutation_equivariant(variant):
    torch.manual_seed(0)
    model = build_ranker({**CFG, **variant}, 12, 5).eval()
    B, T, N = 2, 5, 4
    visual, geometry = torch.randn(B, T, N, 12), torch.randn(B, T, N, 5)
    valid = torch.rand(B, T, N) > 0.3
    valid[:, :, 0] = True
    valid[1, :, 3] = False
    logits = model(visual, geometry, valid)["logits"]
    assert logits.shape == (B, N) and torch.isinf(logits[1, 3]) and torch.isfinite(logits[valid.any(1)]).all()
    perm = torch.tensor([2, 0, 3, 1])
    permuted = model(visual[:, :, perm], geometry[:, :, perm], valid[:, :, perm])["logits"]
    torch.testing.assert_close(permuted, logits[:, perm], atol=1e-5, rtol=1e-4)


def test_loss_prefers_the_target_and_backpropagates_everywhere():
    torch.manual_seed(0)
    model = build_ranker(CFG, 12, 5)
    valid = torch.ones(3, 4, 5, dtype=torch.bool)
    out = model(torch.randn(3, 4, 5, 12), torch.randn(3, 4, 5, 5), valid)
    losses = ranking_loss(out["logits"], torch.tensor([0, 1, 2]), valid.any(1), 0.3, 0.5, 0.2)
    losses["total"].backward()
    assert all(p.grad is not None for p in model.parameters())
    good = torch.tensor([[5.0, 0.0, 0.0]])
    bad = torch.tensor([[0.0, 5.0, 0.0]])
    present, target = torch.ones(1, 3, dtype=torch.bool), torch.tensor([0])
    assert ranking_loss(good, target, present, 0.3, 0.0, 0.2)["total"] < ranking_loss(bad, target, present, 0.3, 0.0, 0.2)["total"]


def test_ties_count_at_their_expected_value_not_by_slot_order():
    scores = torch.tensor([[1.0, 1.0, 1.0, 0.0], [2.0, 1.0, 0.0, 0.0]])
    present = torch.tensor([[True, True, True, True], [True, True, True, False]])
    target = torch.tensor([0, 1])
    above, tied = target_rank_stats(scores, target, present)
    torch.testing.assert_close(hit_at_k(above, tied, 1), torch.tensor([1 / 3, 0.0]))
    torch.testing.assert_close(hit_at_k(above, tied, 2), torch.tensor([2 / 3, 1.0]))
    torch.testing.assert_close(reciprocal_rank(above, tied), torch.tensor([(1 + 1 / 2 + 1 / 3) / 3, 0.5]))
    assert rank_people(scores, present).tolist() == [[1, 1, 1, 4], [1, 2, 3, 0]]
