"""Results you can trust: frame sampling keeps the VIP, absent targets are explicit misses, evaluation on the
selection split is marked, and `svip predict` samples time at the training stride."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import zarr
from conftest import TINY, build_stores

from svip_core.evaluate.evaluation import SELECTION_NOTE, evaluate, load_ranker, score_split
from svip_core.evaluate.metrics import per_clip_hits
from svip_core.features.extract import frame_indices, frame_stride
from svip_core.features.geometry import GEOMETRY_FIELDS
from svip_core.features.store import frame_strides, open_store
from svip_core.model.loss import ranking_loss
from svip_core.model.ranker import build_ranker
from svip_core.predict.windows import training_stride, window_indices
from svip_core.report import figures
from svip_core.train.checkpoint import save_weights
from svip_core.train.data import StoreClips

MODEL = {"fused_dim": 32, "geometry_dim": 8, "gat_hidden": 16, "gat_layers": 1, "gat_heads": 2, "d_model": 16,
         "temporal_layers": 1, "temporal_heads": 2, "temporal_ffn": 32, "time_encoding": True, "event_token": True,
         "dual_head": True, "pooling": "attention", "dropout": 0.0}
# Runs of 3 frames that the uniform 120 -> 16 grid (0, 8, 16, ..., 48, 56, ..., 111, 119) steps over.
VIP_FRAMES = [(49, 50, 51), (1, 2, 3), (116, 117, 118), (25, 26, 27)]


# --- (c) the sampler and the predict windows -------------------------------------------------------------

def test_sampler_spreads_over_valid_frames_and_pads_short_clips():
    assert frame_indices(10, 4).tolist() == [0, 3, 6, 9]                   # all frames valid: as before
    mask = np.ones(10, bool)
    mask[:4] = False
    assert frame_indices(10, 4, mask).tolist() == [4, 6, 7, 9]             # only valid frames are candidates
    mask = np.zeros(10, bool)
    mask[[2, 5, 7]] = True
    assert frame_indices(10, 4, mask).tolist() == [2, 5, 7, -1]            # fewer valid frames: all, then padding
    assert frame_indices(2, 4).tolist() == [0, 1, -1, -1]
    assert frame_stride(np.array([4, 6, 7, 9])) == pytest.approx(5 / 3)
    assert frame_stride(np.array([3, -1, -1])) == 1.0


def test_sampler_keeps_a_target_seen_in_three_of_120_frames():
    T, num = 120, 16
    valid = np.zeros((T, 3), bool)
    valid[:, 0] = True
    valid[49:52, 1] = True
    uniform = frame_indices(T, num)
    assert not valid[uniform, 1].any()                                     # the old rule loses it
    idx = frame_indices(T, num, None, valid, target=1)
    assert len(idx) == num and (np.diff(idx) > 0).all()                    # sorted, unique
    assert valid[idx, 1].sum() == 1                                        # its share (0.4 of 16), at least one
    # Exactly the sampled frame nearest to the target's frames (48) gives way, for its middle frame.
    assert idx.tolist() == [50 if i == 48 else i for i in uniform.tolist()]
    assert frame_indices(T, num, None, valid, target=0).tolist() == uniform.tolist()   # already present


def test_sampler_gives_a_target_about_its_share_of_the_samples():
    T, num = 120, 16
    valid = np.ones((T, 2), bool)
    valid[frame_indices(T, num), 0] = False            # present in 104 of 120 frames, none of them on the grid
    idx = frame_indices(T, num, np.ones(T, bool), valid, target=0)
    assert len(idx) == num and (np.diff(idx) > 0).all() and (idx >= 0).all()
    assert valid[idx, 0].sum() == round(num * 104 / 120)


def test_sampler_ignores_target_frames_that_are_invalid():
    T = 40
    mask = np.ones(T, bool)
    mask[10:13] = False
    valid = np.zeros((T, 1), bool)
    valid[10:13, 0] = True                             # only in frames the clip marks invalid
    valid &= mask[:, None]
    idx = frame_indices(T, 4, mask, valid, target=0)
    assert not np.isin(idx, [10, 11, 12]).any() and (np.diff(idx) > 0).all()


def test_predict_windows_sample_at_the_training_stride_and_cover_the_video():
    T, num, stride = 795, 16, 8.0
    w = window_indices(T, num, stride)
    span = stride * (num - 1)
    assert w.shape[1] == num and (np.diff(w, axis=1) > 0).all() and w.min() == 0 and w.max() == T - 1
    np.testing.assert_allclose(np.diff(w, axis=1).mean(1), stride, atol=0.1)
    assert w[0, 0] == 0 and w[-1, -1] == T - 1                              # first and last frame both scored
    starts = w[:, 0]
    assert (np.diff(starts[:-1]) == span // 2).all() and np.diff(starts)[-1] <= span // 2
    covered = np.zeros(T, bool)
    for a, b in w[:, [0, -1]]:
        covered[a:b + 1] = True
    assert covered.all()
    fractional = window_indices(200, 16, 119 / 15)                           # a training stride like 120 -> 16
    assert (np.diff(fractional, axis=1) >= 7).all() and fractional[-1, -1] == 199


def test_predict_windows_of_short_videos_and_old_models():
    assert window_indices(50, 16, 8.0).tolist() == [frame_indices(50, 16).tolist()]   # shorter than a span
    assert window_indices(10, 16, 8.0).tolist() == [list(range(10)) + [-1] * 6]
    consecutive = window_indices(20, 4, 1.0)                                            # stride 1: old models
    assert consecutive[0].tolist() == [0, 1, 2, 3] and consecutive[-1].tolist() == [16, 17, 18, 19]
    assert training_stride({"features": {}}) == 1.0
    assert training_stride({"features": {"frame_stride": 7.9}}) == 7.9


# --- (a) extraction keeps the VIP ---------------------------------------------------------------------

def _rare_vip_dataset(folder) -> None:
    """Synthetic clips of 120 frames whose VIP is visible in 3 of them only, written back in the clip format."""
    from svip_core.synthetic.generate import write_dataset

    paths = write_dataset(folder, {"train": 3, "val": 1}, 120, 4, 48, 80, ["meeting"], seed=5)
    for path, frames in zip(paths, VIP_FRAMES):
        with np.load(path, allow_pickle=False) as npz:
            clip = dict(npz)
        target = int(clip["target_index"])
        seen = np.isin(np.arange(120), frames)
        clip["person_mask"][:, target] = seen
        clip["person_ids"][:, target] = np.where(seen, clip["person_ids"][:, target].max(), -1)
        clip["bboxes"][seen, target] = [10, 5, 30, 40]                 # a box inside the 48x80 frame
        np.savez_compressed(path, **clip)


def test_extraction_keeps_a_vip_visible_in_3_of_120_frames(tmp_path):
    from svip_core.config import validate_config
    from svip_core.dataset.manifest import prepare_dataset
    from svip_core.dataset.shards import read_shard
    from svip_core.features.backbone import build_embedded
    from svip_core.features.extract import extract_shard

    _rare_vip_dataset(tmp_path / "clips")
    manifest = prepare_dataset(tmp_path / "clips", tmp_path / "prepare", 1, 10**9, "error")
    assert (manifest.verdict == "accepted").all()
    cfg = validate_config(copy.deepcopy(TINY))
    features = {**cfg["features"], "num_frames": 16}
    backbone = build_embedded(features["embedded"], tmp_path / "backbone")
    shard = next((tmp_path / "prepare" / "shards").glob("*.json"))
    store_path = tmp_path / "store.zarr"
    extract_shard(read_shard(shard), store_path, features, cfg["data"]["max_persons"], backbone, {})

    g = open_store(store_path)
    mask, target = g["person_mask"][:], g["target_index"][:]
    assert mask.shape == (4, 16, 4)
    assert mask[np.arange(4), :, target].any(1).all()                  # the VIP is in every clip's features
    strides = frame_strides(g)
    assert strides.dtype == np.float32 and strides.shape == (4,)
    # Rows follow video_id, as VIP_FRAMES. A VIP seen at the clip's start or end takes the place of the end frame.
    np.testing.assert_allclose(strides, np.array([119, 117, 117, 119]) / 15, rtol=1e-6)
    assert g.attrs["frame_stride"] == pytest.approx(float(np.median(strides)))


def test_a_store_without_frame_stride_reads_as_stride_one(tmp_path):
    old = zarr.open_group(tmp_path / "old.zarr", mode="w", zarr_format=3)
    old.create_array("target_index", shape=(3,), dtype="int64")
    assert frame_strides(old).tolist() == [1.0, 1.0, 1.0]


# --- (b) absent targets, (d) the selection split --------------------------------------------------------

@pytest.fixture(scope="module")
def broken_val(tmp_path_factory):
    """A store without test split whose first val clip lost its target (person_mask edited), and a model dir."""
    tmp = tmp_path_factory.mktemp("broken")
    store = build_stores(tmp, {"train": 2, "val": 4}, num_shards=1)[0]
    group = zarr.open_group(store, mode="r+")
    row = int(np.flatnonzero(group["split"][:] == "val")[0])
    group["person_mask"][row, :, int(group["target_index"][row])] = False
    torch.manual_seed(0)
    model = build_ranker(MODEL, TINY["features"]["embedded"]["hidden_size"], len(GEOMETRY_FIELDS))
    save_weights(model, tmp / "model" / "model.safetensors")
    (tmp / "model" / "model.json").write_text(json.dumps(
        {"model": MODEL, "visual_dim": TINY["features"]["embedded"]["hidden_size"],
         "geometry_dim": len(GEOMETRY_FIELDS)}))
    return {"store": store, "model": tmp / "model", "video_id": str(group["video_id"][row]), "tmp": tmp}


def _numbers(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _numbers(v)
    elif isinstance(tree, float):
        yield tree


def test_an_absent_target_is_a_counted_miss_and_val_is_marked_as_the_selection_split(broken_val, caplog):
    out = broken_val["tmp"] / "evaluate"
    with caplog.at_level("WARNING"):
        metrics = evaluate([broken_val["store"]], broken_val["model"], out, "test", [1, 2])
    assert any("no target" in r.message and broken_val["video_id"] in r.message for r in caplog.records)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["split"] == "val" and metrics["selection_split"] is True and metrics["note"] == SELECTION_NOTE
    assert metrics["target_absent"] == {"count": 1, "video_ids": [broken_val["video_id"]]}
    assert all(math.isfinite(x) for x in _numbers({k: metrics[k] for k in ("model", "baselines")}))

    dataset = StoreClips([broken_val["store"]], "val")
    res = score_split(load_ranker(broken_val["model"]), dataset)
    hits = per_clip_hits(res["scores"], res["target"], res["valid"].any(1), [1, 2])
    assert np.isfinite(hits.to_numpy()).all()
    broken = [dataset.describe(i)["video_id"] for i in range(len(dataset))].index(broken_val["video_id"])
    assert (hits.iloc[broken] == 0).all()                                  # a miss in every metric
    assert metrics["model"]["overall"]["top1"]["mean"] == pytest.approx(hits["cmc@1"].mean())
    assert metrics["model"]["overall"]["mrr"]["mean"] == pytest.approx(hits["rr"].mean())

    figures.metrics_vs_baselines(out / "metrics.json", out / "top1.png", out / "table.html")
    table = (out / "table.html").read_text()
    assert "Selection split" in table and SELECTION_NOTE in table
    assert "1 clip(s) without their VIP" in table and broken_val["video_id"] in table
    assert "SELECTION SPLIT" in figures.top1_title(metrics)


def test_a_test_split_is_not_the_selection_split():
    clean = {"split": "test", "clips": 4, "selection_split": False, "target_absent": {"count": 0, "video_ids": []}}
    assert figures.trust_notes(clean) == "" and "SELECTION" not in figures.top1_title(clean)
    assert figures.trust_notes({"split": "test", "clips": 4}) == ""        # metrics.json of older runs


def test_the_loss_leaves_out_a_clip_without_target(broken_val):
    dataset = StoreClips([broken_val["store"]], "val")
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=len(dataset))))
    model = load_ranker(broken_val["model"]).train()
    logits = model(batch["visual"], batch["geometry"], batch["valid"])["logits"]
    present, target = batch["valid"].any(1), batch["target"]
    labelled = present[torch.arange(len(target)), target]
    assert labelled.sum() == len(target) - 1
    full = ranking_loss(logits, target, present, 0.3, 0.5, 0.2)
    rest = ranking_loss(logits[labelled], target[labelled], present[labelled], 0.3, 0.5, 0.2)
    assert torch.isfinite(full["total"]) and full["target_absent"] == 1 and rest["target_absent"] == 0
    for key in ("total", "ce", "preference", "pairwise"):
        torch.testing.assert_close(full[key], rest[key])
    full["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_a_batch_of_only_absent_targets_has_zero_loss_and_still_backpropagates():
    logits = torch.randn(2, 3, requires_grad=True)
    present = torch.tensor([[True, True, False], [False, True, True]])
    losses = ranking_loss(logits, torch.tensor([2, 0]), present, 0.3, 0.5, 0.2)
    assert losses["total"].item() == 0.0 and losses["target_absent"] == 2
    losses["total"].backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
