"""Feature extraction on the real transformers DINOv2 code (tiny random model saved and reloaded)."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import zarr

from svip_core.atomic import stale_partials
from svip_core.dataset.containers import clip_digests
from svip_core.features.backbone import IMAGENET_MEAN, IMAGENET_STD, BackboneError, build_embedded, load_backbone
from svip_core.features.extract import extract_shard, frame_indices, person_slots
from svip_core.features.geometry import GEOMETRY_FIELDS, box_geometry, corner_boxes
from svip_core.features.roi_pooling import crop_boxes, roi_pool
from svip_core.features.store import open_store, writing_store
from svip_core.synthetic.generate import write_dataset

EMBEDDED = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "patch_size": 8, "seed": 0}
FEATURES = {"mode": "roi", "frame_size": [48, 80], "crop_size": 16, "roi_samples": 2, "num_frames": 6,
            "batch_clips": 2, "workers": 0, "precision": "fp32"}


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory):
    return build_embedded(EMBEDDED, tmp_path_factory.mktemp("bb") / "backbone")


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    paths = write_dataset(tmp_path_factory.mktemp("data"), {"train": 3}, 7, 4, 40, 64, ["meeting"], seed=2)
    return [{"video_id": p.stem, "split": "train", "path": str(p), "content_hash": clip_digests(p)[0]} for p in paths]


def test_embedded_backbone_loads_through_from_pretrained_and_is_frozen(backbone_dir):
    model = load_backbone(backbone_dir)
    assert type(model).__name__ == "Dinov2Model" and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    again = load_backbone(backbone_dir)
    x = torch.rand(1, 3, 48, 80)
    torch.testing.assert_close(model(pixel_values=x).last_hidden_state, again(pixel_values=x).last_hidden_state)


def test_unreachable_hub_id_fails_fast_with_a_fix(monkeypatch):
    import huggingface_hub.constants

    # The hub client reads HF_HUB_OFFLINE once, at import; a job's process starts with it set.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(BackboneError, match="features.backbone"):
        load_backbone("facebook/dinov2-base-not-cached")
    assert time.perf_counter() - start < 30


def test_roi_pool_of_a_constant_region_returns_that_constant():
    tokens = torch.zeros(1, 2, 4, 4)
    tokens[0, :, :2, :2] = torch.tensor([3.0, -1.0])[:, None, None]   # top-left quarter
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]])
    pooled = roi_pool(tokens, boxes, samples=2)
    torch.testing.assert_close(pooled, torch.tensor([[[3.0, -1.0], [0.0, 0.0]]]))


def test_grid_roi_pooling_keeps_where_in_the_box_each_sample_lies():
    """The whole frame as one box, 2 x 2 samples: "grid" keeps the top-left quarter's constant in the first cell
    (row by row), and its cells average to the "mean" pooling."""
    tokens = torch.zeros(1, 2, 4, 4)
    tokens[0, :, :2, :2] = torch.tensor([3.0, -1.0])[:, None, None]
    tokens[0, :, 2:, 2:] = torch.tensor([1.0, 5.0])[:, None, None]                  # bottom-right quarter
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    cells = roi_pool(tokens, boxes, samples=2, pooling="grid")
    torch.testing.assert_close(cells, torch.tensor([[[[3.0, -1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 5.0]]]]))
    torch.testing.assert_close(cells.mean(2), roi_pool(tokens, boxes, samples=2))


def test_crop_of_the_full_frame_is_the_resized_frame():
    frames = torch.rand(1, 3, 8, 8)
    crops = crop_boxes(frames, torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]), 8)
    torch.testing.assert_close(crops[0, 0], frames[0], atol=1e-5, rtol=0)


def test_geometry_has_no_jump_when_a_person_reappears():
    boxes = torch.tensor([[0.1, 0.1, 0.2, 0.3], [0, 0, 0, 0], [0.6, 0.5, 0.7, 0.7], [0.62, 0.5, 0.72, 0.7]])[:, None]
    valid = torch.tensor([True, False, True, True])[:, None]
    g = box_geometry(boxes, valid)
    speed = g[..., GEOMETRY_FIELDS.index("speed")][:, 0]
    torch.testing.assert_close(speed, torch.tensor([0.0, 0.0, 0.0, 0.02]))


def test_frame_and_person_selection():
    assert frame_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert frame_indices(2, 4).tolist() == [0, 1, -1, -1]
    valid = np.array([[1, 1, 0, 1], [1, 1, 0, 0]], bool)
    assert person_slots(valid, target=2, max_persons=2).tolist() == [0, 2]      # the target is never cut
    assert person_slots(valid, target=0, max_persons=5).tolist() == [0, 1, 2, 3, -1]


def test_roi_features_pool_the_patch_grid_of_a_backbone_with_register_tokens(tmp_path):
    """DINOv2 with registers puts 4 register tokens between CLS and the patches: the ROI features are pooled from
    the patches alone, as for a plain DINOv2 (loaded through the same AutoModel path as any folder)."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from svip_core.features.extract import person_features

    torch.manual_seed(0)
    config = Dinov2WithRegistersConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, patch_size=8, image_size=224, num_register_tokens=4)
    Dinov2WithRegistersModel(config).save_pretrained(tmp_path / "registers")
    backbone = load_backbone(tmp_path / "registers")
    frames = torch.randint(0, 256, (2, 3, 48, 80), dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.4, 0.2, 0.9, 0.8]]).expand(2, 2, 4)
    mean, std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    found = person_features(backbone, frames, boxes, "roi", 2, None, mean, std, "fp32")

    with torch.no_grad():
        hidden = backbone(pixel_values=frames.float() / 255.0).last_hidden_state        # (2, 1 + 4 + 6*10, 16)
    assert hidden.shape[1] == 65
    patches = hidden[:, 5:].transpose(1, 2).reshape(2, 16, 6, 10)
    torch.testing.assert_close(found, torch.nn.functional.normalize(roi_pool(patches, boxes, 2), dim=-1))


def test_every_precision_mode_runs_on_the_cpu_and_stays_near_fp32(backbone_dir):
    """The modes are part of the features' identity (so stores never mix them); each runs on the CPU as on a GPU.
    On the embedded backbone bf16 moves the L2-normalised features by about 1e-3 and fp16 by 2e-4; tf32 is fp32 on
    the CPU."""
    from svip_core.features.extract import person_features

    backbone = load_backbone(backbone_dir)
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (4, 3, 48, 80), dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.4, 0.2, 0.9, 0.8]]).expand(4, 2, 4)
    mean, std = torch.full((1, 3, 1, 1), 0.45), torch.full((1, 3, 1, 1), 0.225)
    found = {p: person_features(backbone, frames, boxes, "roi", 2, None, mean, std, p)
             for p in ("fp32", "tf32", "bf16", "fp16")}
    assert torch.equal(found["tf32"], found["fp32"])
    for p in ("bf16", "fp16"):
        assert found[p].dtype == torch.float32 and not torch.equal(found[p], found["fp32"])
        torch.testing.assert_close(found[p], found["fp32"], atol=1e-2, rtol=0)


@pytest.mark.parametrize("mode", ["roi", "crop"])
def test_extract_shard_writes_a_complete_zarr_store(tmp_path, backbone_dir, members, mode):
    out = tmp_path / "shard.zarr"
    extract_shard(members, out, {**FEATURES, "mode": mode}, 4, backbone_dir, {"shard_key": "shard"})
    g = zarr.open_group(out, mode="r")                       # plain zarr, no SVIP
    assert g["visual"].shape == (3, 6, 4, 16) and g["visual"].chunks == (1, 6, 4, 16)
    vis, mask = g["visual"][:].astype(np.float32), g["person_mask"][:]
    np.testing.assert_allclose(np.linalg.norm(vis[mask], axis=-1), 1.0, atol=2e-3)
    assert (vis[~mask] == 0).all()
    assert list(g["video_id"][:]) == [m["video_id"] for m in members]
    assert g.attrs["complete"] and g.attrs["feature_dim"] == 16
    import xarray

    ds = xarray.open_zarr(out, consolidated=False)
    assert ds["visual"].dims == ("clip", "frame", "person", "feature") and ds.sizes["clip"] == 3
    assert not list(tmp_path.glob(".*.partial-*"))
    again = tmp_path / "again.zarr"
    extract_shard(members, again, {**FEATURES, "mode": mode}, 4, backbone_dir, {"shard_key": "shard"})
    np.testing.assert_array_equal(zarr.open_group(again, mode="r")["visual"][:], g["visual"][:])


def test_an_interrupted_store_is_never_taken_as_complete(tmp_path):
    out = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError):
        with writing_store(out, {}) as g:
            g.create_array("x", shape=(2,), dtype="int64")
            raise RuntimeError("killed")
    assert not out.exists() and not list(tmp_path.iterdir())
    g = zarr.open_group(tmp_path / "manual.zarr", mode="w")
    g.attrs["complete"] = False
    with pytest.raises(RuntimeError, match="incomplete"):
        open_store(tmp_path / "manual.zarr")


@pytest.mark.slow
def test_a_killed_extract_job_leaves_no_complete_store_and_the_rerun_matches(tmp_path, backbone_dir):
    import json
    import signal
    import subprocess
    import sys

    from conftest import ROOT

    paths = write_dataset(tmp_path / "clips", {"train": 16}, 7, 4, 40, 64, ["meeting"], seed=4)
    members = [{"video_id": p.stem, "split": "train", "path": str(p), "content_hash": clip_digests(p)[0]} for p in paths]
    shard = tmp_path / "shard.json"
    shard.write_text(json.dumps(members))
    stage = {"config": {"features": FEATURES, "data": {"max_persons": 4}}}
    settings = {"backbone": str(backbone_dir), "features": {"batch_clips": 1}}

    def extract(out):
        return subprocess.Popen([sys.executable, str(ROOT / "workflow_scripts/extract.py"), "--config", json.dumps(stage),
                                 "--settings", json.dumps(settings), "--shard", str(shard), "--out", str(out),
                                 "--stage-hash", "h"], stderr=subprocess.DEVNULL)

    killed = tmp_path / "killed" / "store.zarr"
    job = extract(killed)
    deadline = time.time() + 120
    while time.time() < deadline and job.poll() is None:
        written = [c for tmp in stale_partials(killed) for c in tmp.glob("visual/c/*")]
        if len(written) >= 3:           # some clips written, not all: kill it mid-write
            break
        time.sleep(0.05)
    assert job.poll() is None, "the job finished before it could be killed"
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not killed.exists()                                  # nothing looks finished
    assert stale_partials(killed)                                # the half-written store is under its temporary name
    with pytest.raises(Exception):
        open_store(stale_partials(killed)[0])

    assert extract(killed).wait() == 0                          # re-run: replaces the partial store
    assert not stale_partials(killed)
    clean = tmp_path / "clean" / "store.zarr"                   # the stage's code run once, uninterrupted
    extract_shard(members, clean, {**FEATURES, **settings["features"]}, 4, backbone_dir, {})
    a, b = open_store(killed), open_store(clean)
    for name in ("visual", "geometry", "person_mask", "frame_mask", "target_index", "video_id"):
        np.testing.assert_array_equal(a[name][:], b[name][:])


def test_extract_refuses_clips_changed_since_prepare(tmp_path):
    """A store is filed under its clips' content key: clips edited after prepare must not be extracted under it."""
    from svip_core.features.extract import check_members

    paths = write_dataset(tmp_path / "clips", {"train": 2}, 5, 4, 40, 64, ["meeting"], seed=4)
    members = [{"video_id": p.stem, "split": "train", "path": str(p), "content_hash": clip_digests(p)[0]} for p in paths]
    check_members(members)
    arrays = dict(np.load(paths[1]))
    arrays["bboxes"] = arrays["bboxes"] * 0.5
    np.savez(paths[1], **arrays)
    with pytest.raises(RuntimeError, match="changed since prepare"):
        check_members(members)


@pytest.mark.parametrize("mode", ["roi", "crop"])
def test_the_split_backbone_gives_the_whole_backbones_features_and_only_its_head_learns(tmp_path, mode):
    """Trunk tokens (what a store keeps for train.finetune_blocks = 1) through the tuned head give the features
    the whole backbone gives at extract; a loss on them reaches the head's block and layer norm, never the trunk."""
    from svip_core.features.extract import person_features_and_tokens
    from svip_core.features.split_backbone import TunedHead

    backbone = load_backbone(build_embedded({**EMBEDDED, "num_layers": 3}, tmp_path / "bb"))
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (3, 3, 48, 80), dtype=torch.uint8)
    corner = torch.rand(3, 4, 2) * 0.5
    boxes = torch.cat([corner, corner + 0.2 + torch.rand(3, 4, 2) * 0.3], -1)          # (F, N, 4) xyxy in [0, 1]
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    whole, tokens = person_features_and_tokens(backbone, frames, boxes, mode, 2, 16, mean, std, "fp32", 1)
    assert tokens.shape == ((3, 1 + 6 * 10, 16) if mode == "roi" else (3 * 4, 1 + 2 * 2, 16))
    head = TunedHead(backbone, 1, mode, roi_samples=2, grid=(6, 10))
    split = head(tokens, boxes)
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-6)
    with pytest.raises(BackboneError, match="has 3 blocks"):
        person_features_and_tokens(backbone, frames, boxes, mode, 2, 16, mean, std, "fp32", 4)

    probe = torch.randn_like(split)
    (split * probe).sum().backward()                                # any loss of the features
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert not tokens.requires_grad and all(p.grad is None for p in backbone.parameters())
    # Activation checkpointing (train.checkpoint_blocks) recomputes the blocks: the same gradients.
    grads = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()
    head.checkpointing = True
    (head(tokens, boxes) * probe).sum().backward()
    for before, p in zip(grads, head.parameters()):
        torch.testing.assert_close(p.grad, before)


@pytest.mark.parametrize("mode,pooling", [("roi", "mean"), ("crop", "mean"), ("roi", "grid")])
def test_a_store_for_tuned_blocks_holds_the_tokens_that_give_its_features_back(tmp_path, members, mode, pooling):
    """extract_shard with tuned_blocks = 1 stores, beside the usual arrays (unchanged), the compressed tokens
    entering the last block; the tuned head on them gives the stored features (to fp16's precision), the k*k
    samples of each box side by side with roi_pooling "grid"."""
    from svip_core.features.split_backbone import tuned_head_for

    backbone_dir = build_embedded({**EMBEDDED, "num_layers": 2}, tmp_path / "bb")
    cfg = {**FEATURES, "mode": mode, "roi_pooling": pooling}
    extract_shard(members, tmp_path / "frozen.zarr", cfg, 4, backbone_dir, {})
    extract_shard(members, tmp_path / "tuned.zarr", cfg, 4, backbone_dir, {}, tuned_blocks=1)
    frozen, tuned = open_store(tmp_path / "frozen.zarr"), open_store(tmp_path / "tuned.zarr")
    assert tuned.attrs["tuned_blocks"] == 1 and "tokens" not in frozen
    assert tuned["visual"].shape[-1] == tuned.attrs["feature_dim"] == 16 * (4 if pooling == "grid" else 1)
    for name in ("visual", "geometry", "person_mask", "frame_mask", "target_index"):
        np.testing.assert_array_equal(frozen[name][:], tuned[name][:])
    tokens = tuned["tokens"]
    assert tokens.dtype == np.float16 and tokens.compressors
    assert tokens.shape == ((3, 6, 1 + 6 * 10, 16) if mode == "roi" else (3, 6, 4, 1 + 2 * 2, 16))

    head = tuned_head_for(backbone_dir, 1, cfg).eval()
    # The boxes the features were pooled at come from the stored geometry (normalised corners).
    with torch.no_grad():
        again = head.clip_features(torch.from_numpy(tokens[:]), corner_boxes(torch.from_numpy(tuned["geometry"][:])),
                                   torch.from_numpy(tuned["person_mask"][:]))
    stored = torch.from_numpy(tuned["visual"][:]).float()
    torch.testing.assert_close(again, stored, atol=2e-3, rtol=0)
