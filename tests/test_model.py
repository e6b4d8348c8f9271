"""The ranker: batched graph, masks, permutation equivariance, loss, tie-aware ranking."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from svip_core.features.geometry import box_geometry
from svip_core.model.graph import FrameGAT
from svip_core.model.loss import ranking_loss
from svip_core.model.pair_history import PairHistory
from svip_core.model.ranker import build_ranker
from svip_core.model.ranking import hit_at_k, rank_people, reciprocal_rank, target_rank_stats
from svip_core.model.relations import (RELATION_FIELDS, FacingDirections, complete_graph_edges, edge_relations, looks_at,
                                       nearest_pairs, pair_mask, pair_relations, walking_facing_loss)
from svip_core.model.temporal import EventContext

CFG = {"fused_dim": 32, "geometry_dim": 8, "gat_hidden": 16, "gat_layers": 2, "gat_heads": 2, "d_model": 16,
       "temporal_layers": 1, "temporal_heads": 2, "temporal_ffn": 32, "time_encoding": True, "event_token": True,
       "dual_head": True, "pooling": "attention", "track_summary": True, "dropout": 0.0}


def test_complete_graph_edges_link_valid_people_within_each_frame_only():
    valid = torch.tensor([[True, True, False], [True, False, True]])
    edges = complete_graph_edges(valid).T.tolist()
    assert sorted(map(tuple, edges)) == [(0, 1), (1, 0), (3, 5), (5, 3)]



def test_nearest_pairs_keep_each_persons_k_nearest_present_others():
    """Four people on a line at x = 0, 0.1, 0.3, 0.9 and an absent one: with k = 2 the one at 0.9 attends to
    0.3 and 0.1 only, and nobody attends to or from the absent one."""
    x = torch.tensor([0.0, 0.1, 0.3, 0.9, 0.5])
    boxes = torch.stack([x, x * 0 + 0.4, x + 0.05, x * 0 + 0.6], -1)[None]            # (T=1, N=5, 4)
    valid = torch.tensor([[True, True, True, True, False]])
    kept = nearest_pairs(box_geometry(boxes, valid), valid, 2)[0]                     # (N src, N dst)
    assert kept[:, 3].tolist() == [False, True, True, False, False]
    assert kept[:, 0].tolist() == [False, True, True, False, False]
    assert kept.sum(0).tolist() == [2, 2, 2, 2, 0] and not kept[4].any()

def random_geometry(B: int, T: int, N: int, valid: torch.Tensor) -> torch.Tensor:
    """Raw geometry (B, T, N, 12) of boxes that wander a little from frame to frame."""
    xy = (torch.rand(B, 1, N, 2) * 0.7 + torch.cumsum(torch.randn(B, T, N, 2) * 0.02, 1)).clamp(0, 0.8)
    return box_geometry(torch.cat([xy, xy + 0.1 + torch.rand(B, 1, N, 2) * 0.1], -1), valid)


RELATIONAL = {"relation_features": True, "attention_flow": True}


@pytest.mark.parametrize("variant", [{}, RELATIONAL, {**RELATIONAL, "attention_flow": False},
                                     {**RELATIONAL, "relation_features": False}, {"gat_layers": 0},
                                     {"temporal_layers": 0}, {"event_token": False}, {"dual_head": False},
                                     {"pooling": "mean"}, {"track_summary": False}, {**RELATIONAL, "looks_at": 2},
                                     {**RELATIONAL, "neighbours": 2}, {**RELATIONAL, "relational_memory": True}])
def test_absent_people_get_no_score_and_slots_are_permutation_equivariant(variant):
    torch.manual_seed(0)
    B, T, N = 2, 5, 4
    valid = torch.rand(B, T, N) > 0.3
    valid[:, :, 0] = True
    valid[1, :, 3] = False
    visual, geometry = torch.randn(B, T, N, 12), random_geometry(B, T, N, valid)
    model = build_ranker({**CFG, **variant}, 12, 12)
    model.fit_normalisation(geometry, valid)
    model.eval()
    logits = model(visual, geometry, valid)["logits"]
    assert logits.shape == (B, N) and torch.isinf(logits[1, 3]) and torch.isfinite(logits[valid.any(1)]).all()
    perm = torch.tensor([2, 0, 3, 1])
    permuted = model(visual[:, :, perm], geometry[:, :, perm], valid[:, :, perm])["logits"]
    torch.testing.assert_close(permuted, logits[:, perm], atol=1e-5, rtol=1e-4)



def test_on_grid_features_the_fusion_reads_the_cells_mean_and_only_the_facing_directions_their_layout():
    """Visual features of 2 x 2 cells per box (features.roi_pooling: grid): shuffling the cells inside each box
    leaves the scores of a model without facing directions unchanged, and changes those of one with them."""
    torch.manual_seed(0)
    B, T, N = 2, 5, 4
    valid = torch.ones(B, T, N, dtype=torch.bool)
    geometry, cells = random_geometry(B, T, N, valid), torch.randn(B, T, N, 4, 6)
    grid = {"mode": "roi", "roi_pooling": "grid", "roi_samples": 2}
    shuffled = cells[..., [3, 1, 0, 2], :]
    for looks, changes in ((0, False), (2, True)):
        model = build_ranker({**CFG, **RELATIONAL, "looks_at": looks}, 24, 12, grid).eval()
        model.fit_normalisation(geometry, valid)
        assert model.fuse[0].in_features == 6 + CFG["geometry_dim"]
        before, after = (model(c.flatten(-2), geometry, valid)["logits"] for c in (cells, shuffled))
        assert changes != torch.allclose(before, after, atol=1e-6)

def test_loss_prefers_the_target_and_backpropagates_everywhere():
    torch.manual_seed(0)
    model = build_ranker({**CFG, **RELATIONAL}, 12, 12)
    valid = torch.ones(3, 4, 5, dtype=torch.bool)
    out = model(torch.randn(3, 4, 5, 12), random_geometry(3, 4, 5, valid), valid)
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


def test_relation_features_say_who_walks_toward_whom_and_how_boxes_overlap():
    # Frame 1: person 0 stands still at x=0.2; person 1 steps from x=0.7 to 0.6, toward it; person 2 overlaps 0.
    boxes = torch.tensor([[[0.15, 0.4, 0.25, 0.8], [0.65, 0.4, 0.75, 0.8], [0.2, 0.4, 0.3, 0.8]],
                          [[0.15, 0.4, 0.25, 0.8], [0.55, 0.4, 0.65, 0.8], [0.2, 0.4, 0.3, 0.8]]])
    valid = torch.ones(1, 2, 3, dtype=torch.bool)
    geometry = box_geometry(boxes, valid[0])[None]                                    # (1, 2, 3, 12)
    edges = torch.tensor([[4, 3, 5], [3, 4, 3]])                                      # frame 1: 1 -> 0, 0 -> 1, 2 -> 0
    r = dict(zip(RELATION_FIELDS, edge_relations(pair_relations(geometry, valid), edges).T))
    torch.testing.assert_close(r["dx"][:2], torch.tensor([0.4, -0.4]))
    torch.testing.assert_close(r["src_toward_dst"][:2], torch.tensor([0.1, 0.0]))     # 1 walks toward 0
    torch.testing.assert_close(r["dst_toward_src"][:2], torch.tensor([0.0, 0.1]))
    torch.testing.assert_close(r["closing_speed"][:2], torch.tensor([0.1, 0.1]))
    torch.testing.assert_close(r["iou"], torch.tensor([0.0, 0.0, 1 / 3]))
    torch.testing.assert_close(r["distance_in_heights"][0], torch.tensor(0.4 / 0.4))
    # 1 is 0.25 heights closer to 0 than in frame 0, and 0 and 2 (both still) do not move together.
    torch.testing.assert_close(r["approach_since_first_seen"], torch.tensor([0.25, 0.25, 0.0]))
    torch.testing.assert_close(r["moving_together"], torch.tensor([0.0, 0.0, 0.0]))



def test_looks_at_compares_each_persons_facing_with_where_the_others_stand():
    """A feature that says "faces right" (its sign) becomes, pair by pair, looking toward whoever stands to the
    right: person 1 stands between 0 (left) and 2 (right); 0 and 1 face right, 2 faces left; the absent
    person 3 neither looks nor is looked at."""
    boxes = torch.tensor([[[0.1, 0.4, 0.2, 0.8], [0.4, 0.4, 0.5, 0.8], [0.7, 0.4, 0.8, 0.8], [0.0, 0.0, 0.1, 0.1]]])
    valid = torch.tensor([[[True, True, True, False]]])
    geometry = box_geometry(boxes, valid[0])[None]                                    # (1, 1, 4, 12)
    directions = FacingDirections(in_dim=1, directions=1)
    with torch.no_grad():
        directions.read.weight.copy_(torch.tensor([[20.0], [0.0]]))                   # x component: the feature
        directions.read.bias.zero_()
    faces_right = torch.tensor([1.0, 1.0, -1.0, 1.0]).view(1, 1, 4, 1)
    at = looks_at(directions(faces_right), geometry, valid)[0, 0, ..., 0]             # (N src, N dst)
    assert at[0, 1] > 0.99 and at[0, 2] > 0.99 and at[1, 2] > 0.99                    # toward the right
    assert at[1, 0] < -0.99 and at[2, 1] > 0.99 and at[2, 0] > 0.99                   # 2 faces left, toward 1, 0
    assert (at[3] == 0).all() and (at[:, 3] == 0).all() and (at.diagonal() == 0).all()


def test_the_facing_loss_reads_walkers_only_and_wants_them_facing_the_way_they_walk():
    """Person 0 walks right (a box height every frame), person 1 sways in place, person 2 walks left but is
    absent: only person 0's frames count, and a direction pointing right costs nothing there."""
    x0 = torch.tensor([0.1, 0.3, 0.5])
    boxes = torch.stack([torch.stack([x0, x0 * 0 + 0.4, x0 + 0.1, x0 * 0 + 0.6], -1),
                         torch.tensor([[0.5, 0.4, 0.6, 0.6], [0.501, 0.4, 0.601, 0.6], [0.5, 0.4, 0.6, 0.6]]),
                         torch.stack([0.8 - x0, x0 * 0 + 0.4, 0.9 - x0, x0 * 0 + 0.6], -1)], 1)  # (T=3, N=3, 4)
    valid = torch.tensor([[True, True, False]] * 3)
    geometry = box_geometry(boxes, valid)[None]
    right, left = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])
    facing = torch.stack([right.expand(3, 2), left.expand(3, 2), left.expand(3, 2)], 1)[None, :, :, None]  # (1,3,3,1,2)
    assert walking_facing_loss(facing, geometry, valid[None]) == 0                    # 1 does not walk; 2 is absent
    torch.testing.assert_close(walking_facing_loss(-facing, geometry, valid[None]), torch.tensor(4.0))


def test_attention_flow_counts_attention_received_from_others_and_given_away():
    torch.manual_seed(0)
    valid = torch.ones(1, 2, 4, dtype=torch.bool)
    valid[0, 1, 3] = False
    gat = FrameGAT(8, 8, 1, 2, 0.0).eval()
    geometry = random_geometry(1, 2, 4, valid)
    gat.relation_norm.fit(pair_relations(geometry, valid)[pair_mask(valid)])
    _, flow, _ = gat(torch.randn(1, 2, 4, 8), geometry, valid)
    heads = 2
    received, given = flow[..., :heads], flow[..., heads:2 * heads]
    # Each person gives away what its self-loop does not keep, so given is in [0, 1]; on average over a
    # frame, what is received (as a share of the others) equals what is given.
    assert ((given >= 0) & (given <= 1)).all() and (flow[0, 1, 3] == 0).all()
    for t, people in ((0, 4), (1, 3)):
        torch.testing.assert_close(received[0, t, :people].sum(0) * (people - 1), given[0, t, :people].sum(0))


def all_slots_gat(gat: FrameGAT, x: torch.Tensor, geometry: torch.Tensor, valid: torch.Tensor):
    """The GAT as it ran before it took present people only: every slot a node, absent ones zeroed after each
    layer; the same weights and the same attention-flow arithmetic, over all B*T*N slots."""
    B, T, N, _ = x.shape
    frames = valid.flatten(0, 1)
    edges = complete_graph_edges(frames)
    relations = edge_relations(gat.relation_norm(pair_relations(geometry, valid)), edges)
    keep = valid.flatten()[:, None]
    h = gat.in_proj(x).flatten(0, 2)
    for i, (conv, norm, scale) in enumerate(zip(gat.convs, gat.norms, gat.scales)):
        out, (loop_edges, alpha) = conv(h, edges, relations, return_attention_weights=True)
        h = (h + scale * norm(torch.nn.functional.elu(out))) * keep
    src, dst = loop_edges
    a = alpha * (src != dst)[:, None]
    others = (frames.sum(-1, keepdim=True) - 1).clamp(min=1).expand_as(frames).flatten()[:, None]
    received = torch.zeros(len(h), a.shape[1]).index_add_(0, src, a) / others
    given = torch.zeros(len(h), a.shape[1]).index_add_(0, dst, a)
    E = len(relations)
    weighted = (a[:E, :, None] * relations[:, None, :]).flatten(1)
    by_attention = torch.zeros(len(h), weighted.shape[1]).index_add_(0, src[:E], weighted) / others
    mean_relation = torch.zeros(len(h), relations.shape[1]).index_add_(0, dst[:E], relations) / others
    flow = torch.cat([received, given, (received - given).mean(-1, keepdim=True), by_attention, mean_relation], -1)
    return h.view(B, T, N, -1), (flow * keep).view(B, T, N, -1)


def test_the_gat_over_present_people_only_equals_the_gat_over_every_slot():
    torch.manual_seed(0)
    B, T, N = 3, 4, 6
    valid = torch.rand(B, T, N) > 0.5
    valid[0, 0] = False                                                                # an empty frame
    valid[1, 1, :1] = True
    geometry = random_geometry(B, T, N, valid)
    gat = FrameGAT(10, 8, 2, 2, 0.0).eval()
    gat.relation_norm.fit(pair_relations(geometry, valid)[pair_mask(valid)])
    x = torch.randn(B, T, N, 10)
    with torch.no_grad():
        for scale in gat.scales:
            scale.uniform_(0.5, 1.5)                                                   # the layers must count
        h, flow, _ = gat(x, geometry, valid)
        h_ref, flow_ref = all_slots_gat(gat, x, geometry, valid)
    torch.testing.assert_close(h, h_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(flow, flow_ref, atol=1e-6, rtol=1e-5)
    assert (h[~valid] == 0).all() and h[valid].abs().sum(-1).gt(0).all()


def test_relational_memory_starts_as_the_gat_without_it_and_carries_each_persons_state_forward_only():
    """Frame by frame with a zero recall (as built), the memory's GAT gives the batched GAT's outputs; once the
    recall counts, a change of the people's features in frame 2 reaches frames 3 and 4 through their states and
    leaves frames 0 and 1 as they were. Without memory it stays in frame 2."""
    torch.manual_seed(0)
    B, T, N = 3, 5, 4
    valid = torch.rand(B, T, N) > 0.3
    valid[:, :, 0] = True
    valid[0, 3] = False                                              # an empty frame: states wait through it
    geometry, x = random_geometry(B, T, N, valid), torch.randn(B, T, N, 10)
    changed = x.clone()
    changed[:, 2] += 1.0
    gats = {}
    for memory in (False, True):
        torch.manual_seed(1)
        gats[memory] = FrameGAT(10, 8, 2, 2, 0.0, memory=memory).eval()
        gats[memory].relation_norm.fit(pair_relations(geometry, valid)[pair_mask(valid)])
    with torch.no_grad():
        (h, flow, _), (h_mem, flow_mem, _) = (gats[m](x, geometry, valid) for m in (False, True))
        torch.testing.assert_close(h_mem, h, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(flow_mem, flow, atol=1e-6, rtol=1e-5)
        torch.nn.init.normal_(gats[True].recall.weight)
        for memory, reaches in ((False, [False, False, True, False, False]), (True, [False, False, True, True, True])):
            before, after = gats[memory](x, geometry, valid)[0], gats[memory](changed, geometry, valid)[0]
            moved = (after - before).abs().amax(dim=(0, 2, 3)) > 1e-6                  # per frame
            assert moved.tolist() == reaches
            assert (after[~valid] == 0).all()


def test_the_event_token_adds_to_each_person_and_never_replaces_them_all_by_one_vector():
    torch.manual_seed(0)
    event = EventContext(8, 2, 16, 0.0).eval()
    with torch.no_grad():
        event.gate.bias.fill_(50.0)                                                   # gate fully open
    x = torch.randn(1, 3, 4, 8)
    out = event(x, torch.ones(1, 3, 4, dtype=torch.bool))
    assert (out[0, :, 0] - out[0, :, 1]).abs().max() > 0.1
    torch.testing.assert_close(out[0, :, 0] - out[0, :, 1], x[0, :, 0] - x[0, :, 1])


def test_normalisation_statistics_come_from_the_data_and_travel_with_the_weights(tmp_path):
    from svip_core.train.checkpoint import load_weights, save_weights

    torch.manual_seed(0)
    valid = torch.rand(4, 6, 5) > 0.2
    geometry = random_geometry(4, 6, 5, valid)
    model = build_ranker({**CFG, **RELATIONAL}, 12, 12)
    stats = model.fit_normalisation(geometry, valid)
    torch.testing.assert_close(torch.tensor(stats["geometry"]["mean"]), geometry[valid].mean(0).double(), check_dtype=False)
    assert len(stats["relations"]["std"]) == len(RELATION_FIELDS)
    save_weights(model, tmp_path / "m.safetensors")
    fresh = build_ranker({**CFG, **RELATIONAL}, 12, 12)
    load_weights(fresh, tmp_path / "m.safetensors")
    torch.testing.assert_close(fresh.geometry_norm.mean, model.geometry_norm.mean)
    torch.testing.assert_close(fresh.gat.relation_norm.std, model.gat.relation_norm.std)


def test_early_stopping_never_counts_a_slow_start_or_a_falling_loss_as_a_plateau():
    from svip_core.train.loop import bad_epochs_after

    chance = 0.2
    # Still at chance at epoch 9: no epoch counts, however long it has been.
    assert bad_epochs_after(4, 0.2, 0.22, 1.9, 1.8, epoch=9, min_epochs=6, chance=chance) == 0
    # Left chance, but before min_epochs: nothing counts yet.
    assert bad_epochs_after(0, 0.5, 0.6, 1.9, 1.8, epoch=3, min_epochs=6, chance=chance) == 0
    # Left chance and past min_epochs: a worse epoch counts, a tie with the best resets.
    assert bad_epochs_after(1, 0.5, 0.6, 1.9, 1.8, epoch=7, min_epochs=6, chance=chance) == 2
    assert bad_epochs_after(1, 0.6, 0.6, 1.9, 1.8, epoch=7, min_epochs=6, chance=chance) == 0
    # Top-1 below its best, but the lowest val loss yet: the run is still learning.
    assert bad_epochs_after(3, 0.5, 0.6, 1.7, 1.7, epoch=9, min_epochs=6, chance=chance) == 0


def test_min_steps_stretches_a_small_training_sets_schedule_and_leaves_a_large_ones_alone():
    from svip_core.train.loop import schedule

    cfg = {"epochs": 12, "patience": 4, "min_epochs": 6, "min_steps": 1200}
    assert schedule(cfg, steps_per_epoch=250) == (12, 4, 6)              # 3000 steps already
    assert schedule(cfg, steps_per_epoch=14) == (86, 29, 43)             # 112 clips in batches of 8: x 7.14
    assert schedule({**cfg, "min_steps": 0}, steps_per_epoch=14) == (12, 4, 6)


def test_pair_history_counts_who_approaches_and_ignores_absent_people():
    torch.manual_seed(0)
    history = PairHistory(person_dim=4, relation_dim=3, hidden=8, out_dim=6, dropout=0.0).eval()
    B, T, N = 1, 5, 4
    x = torch.zeros(B, T, N, 4)
    relations = torch.zeros(B, T, N, N, 3)
    # Person 0 is walked up to by two people (1 and 2), person 3 by one (2): same relation, different counts.
    relations[0, :, 1, 0, 0] = relations[0, :, 2, 0, 0] = relations[0, :, 2, 3, 0] = 2.0
    valid = torch.ones(B, T, N, dtype=torch.bool)
    out = history(x, relations, pair_mask(valid))
    assert out.shape == (B, N, 6) and not torch.allclose(out[0, 0], out[0, 3])
    # A person never present gets zeros, and what absent pairs hold cannot leak into anyone's history.
    valid[:, :, 3] = False
    noisy = relations.clone()
    noisy[0, :, 3] = noisy[0, :, :, 3] = 99.0
    out_absent = history(x, noisy, pair_mask(valid))
    assert (out_absent[0, 3] == 0).all()
    torch.testing.assert_close(out_absent[0, :3], history(x, relations, pair_mask(valid))[0, :3])


def test_pair_summary_reads_each_pairs_first_and_last_shared_frames_only():
    from svip_core.model.pair_history import pair_summary

    B, T, N = 1, 6, 3
    relations = torch.arange(T, dtype=torch.float32).view(1, T, 1, 1, 1).expand(B, T, N, N, 1).clone()
    valid = torch.ones(B, T, N, dtype=torch.bool)
    valid[0, :2, 2] = False                      # person 2 arrives at frame 2, leaves after frame 4
    valid[0, 5, 2] = False
    relations[0, :2, :, 2] = relations[0, 5, :, 2] = 99.0     # what absent frames hold must not count
    out = pair_summary(relations, pair_mask(valid))            # (B, N, N, 5 + 3)
    mean, low, high, first, last, share, start, end = out[0, 0, 2]
    assert (mean, low, high, first, last) == (3.0, 2.0, 4.0, 2.0, 4.0)
    assert share == pytest.approx(0.5) and start == pytest.approx(0.4) and end == pytest.approx(0.8)
    assert out[0, 0, 1, 3:5].tolist() == [0.0, 5.0] and (out[0, 1, 1] == 0).all()   # a person with itself: nothing


def test_track_summary_reads_each_persons_valid_frames_only():
    from svip_core.model.temporal_pooling import track_summary
    x = torch.tensor([[[1.0], [9.0], [3.0]], [[5.0], [5.0], [5.0]]]).permute(1, 0, 2)[None]   # (1, T=3, N=2, 1)
    valid = torch.tensor([[True, False, True], [False, False, False]]).T[None]              # (1, 3, 2)
    summary = track_summary(x, valid)                     # mean, spread, min, max, first, last
    assert summary.shape == (1, 2, 6)
    torch.testing.assert_close(summary[0, 0], torch.tensor([2.0, 1.0, 1.0, 3.0, 0.0, 1.0]))
    assert (summary[0, 1] == 0).all()


def test_people_buckets_follow_the_data():
    from svip_core.evaluate.metrics import people_buckets
    labels, names = people_buckets(np.array([2, 3, 3, 4, 2]))
    assert names == ["2", "3", "4"] and list(labels) == ["2", "3", "3", "4", "2"]
    counts = np.repeat(np.arange(6, 13), [5, 9, 3, 8, 4, 6, 5])           # 6 to 12 people, 40 clips
    labels, names = people_buckets(counts)                                # quartiles, on whole counts
    assert names == ["6-7", "8-9", "10-11", "12"] and [int(np.sum(labels == n)) for n in names] == [14, 11, 10, 5]
    assert dict(zip(counts.tolist(), labels)) == {6: "6-7", 7: "6-7", 8: "8-9", 9: "8-9", 10: "10-11", 11: "10-11",
                                                  12: "12"}


def test_augmentations_keep_the_vip_and_the_relations_between_people():
    """Shift and scale move the scene without changing any relation the GAT reads; mirroring twice is the
    identity; dropping people and cutting the clip never remove the VIP, and keep at least two people; modality
    dropout removes a clip's visual features entirely or not at all."""
    from svip_core.train.augment import augment, drop_people, frame_window, jitter_boxes, reframe

    torch.manual_seed(0)
    B, T, N = 64, 16, 8
    valid = torch.rand(B, T, N) < 0.8
    target = torch.randint(0, N, (B,))
    valid[torch.arange(B), :, target] = True
    boxes = torch.rand(B, T, N, 2) * 0.6 + 0.2
    size = torch.rand(B, 1, N, 2) * 0.1 + 0.05
    geometry = box_geometry(torch.cat([boxes - size, boxes + size], -1), valid)

    moved = reframe(geometry, valid, shift=0.1, scale=0.2, mirror=0.0)
    assert not torch.allclose(moved, geometry)
    # Distances in body heights, IoU, area ratios, motion toward each other are unchanged; raw offsets scale.
    invariant = [RELATION_FIELDS.index(f) for f in ("distance_in_heights", "iou", "log_height_ratio", "log_width_ratio",
                                                    "approach_since_first_seen", "moving_together")]
    assert torch.allclose(pair_relations(moved, valid)[..., invariant], pair_relations(geometry, valid)[..., invariant],
                          atol=1e-4)
    # Moving the boxes and computing their geometry again gives the same motion fields as moving the geometry.
    assert torch.allclose(box_geometry(moved[..., :4], valid), moved, atol=1e-5)
    wobbly = jitter_boxes(geometry, valid, 0.05)
    assert ((wobbly[..., 2] > wobbly[..., 0]) | ~valid).all() and not torch.allclose(wobbly, geometry)
    assert torch.allclose(box_geometry(wobbly[..., :4], valid), wobbly, atol=1e-6)
    mirrored = reframe(geometry, valid, shift=0.0, scale=0.0, mirror=1.0)
    assert torch.allclose(box_geometry(mirrored[..., :4], valid), mirrored, atol=1e-5)
    assert torch.allclose(reframe(mirrored, valid, 0.0, 0.0, 1.0), geometry, atol=1e-6)

    fewer = drop_people(valid, target, 0.5)
    assert (fewer <= valid).all() and fewer[torch.arange(B), :, target].equal(valid[torch.arange(B), :, target])
    assert (fewer.any(1).sum(1) >= torch.clamp(valid.any(1).sum(1), max=2)).all()
    assert fewer.any(1).sum() < valid.any(1).sum()
    cut = frame_window(valid, target, 0.5)
    assert (cut <= valid).all() and cut[torch.arange(B), :, target].any(1).all()
    assert cut.sum() < valid.sum()

    batch = {"visual": torch.zeros(B, T, N, 4), "geometry": geometry, "valid": valid, "target": target}
    cfg = {"shift": 0.1, "scale": 0.1, "jitter": 0.05, "mirror": 0.5, "drop_people": 0.2, "frame_window": 0.75,
           "drop_visual": 0.3}
    torch.manual_seed(1)
    a = augment(batch, cfg)
    torch.manual_seed(1)
    b = augment(batch, cfg)
    assert a["geometry"].equal(b["geometry"]) and a["valid"].equal(b["valid"])      # the seed decides
    assert (a["geometry"][~a["valid"]] == 0).all() and a["visual"].equal(b["visual"])

    # Modality dropout: a clip keeps all its visual features or none.
    visual = torch.rand(B, T, N, 4) + 0.1
    batch = {"visual": visual, "geometry": geometry, "valid": valid, "target": target}
    dropped = augment(batch, {"drop_visual_clips": 0.5})["visual"]
    kept = dropped.flatten(1).ne(0).all(1)
    assert (dropped.flatten(1)[~kept] == 0).all() and dropped[kept].equal(visual[kept])
    assert 10 < kept.sum() < 54
