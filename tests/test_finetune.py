"""Fine-tuning the backbone's last block (train.finetune_blocks: 1) through the workflow, beside its frozen-backbone
ablation, on a copy of the shared workflow's results (whose model is the frozen one, k = 0)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY, clone_workflow, planned_jobs, ran_jobs, snakemake, write_config
from mot15 import MOT15
from safetensors.torch import load_file, save_file

from svip_core.config import load_config
from svip_core.features.backbone import load_backbone
from svip_core.features.store import open_store
from svip_core.stages import runs, stage_dir
from svip_core.train.data import StoreClips


@pytest.fixture(scope="module")
def finetuned(finished_workflow, tmp_path_factory):
    """The shared workflow's copy with train.finetune_blocks: 1 (so with a frozen-backbone ablation), run:
    (folder, jobs that ran)."""
    wd = clone_workflow(finished_workflow, tmp_path_factory.mktemp("finetune") / "wd")
    config = yaml.safe_load((wd / "config.yaml").read_text())
    config["train"]["finetune_blocks"] = 1          # the frozen_backbone ablation comes with it
    write_config(wd / "config.yaml", config)
    result = snakemake(wd)
    assert result.returncode == 0, result.stderr[-3000:]
    return wd, ran_jobs(result)


def train_dirs(wd) -> dict:
    config = load_config(wd / "config.yaml")
    return {name.split("/")[0]: wd / stage_dir(run, "train") for name, run in runs(config).items()}


@pytest.mark.slow
def test_fine_tuning_stores_the_tokens_and_trains_the_last_block_beside_an_unchanged_frozen_model(
        finetuned, finished_workflow):
    wd, jobs = finetuned
    # New stores (with tokens) for k = 1, and both models; the frozen one reads the same stores.
    assert jobs == {"embedded_backbone": 1, "extract": 3, "train": 2, "evaluate": 2, "report": 1}
    dirs = train_dirs(wd)
    features = json.loads((dirs["full"] / "model.json").read_text())["features"]
    for store in (wd / stage_dir(load_config(wd / "config.yaml"), "extract")).glob("*.zarr"):
        assert open_store(store).attrs["tuned_blocks"] == 1 and "tokens" in open_store(store)

    weights = load_file(dirs["full"] / "model.safetensors")
    tuned = {k for k in weights if k.startswith("tuned_head.")}
    assert "tuned_head.blocks.0.mlp.fc1.weight" in tuned and "tuned_head.layernorm.weight" in tuned
    backbone = load_backbone(features["backbone"])        # what the stores were made with
    start = {**{f"tuned_head.blocks.0.{k}": v for k, v in backbone.encoder.layer[-1].state_dict().items()},
             **{f"tuned_head.layernorm.{k}": v for k, v in backbone.layernorm.state_dict().items()}}
    assert tuned == set(start)
    assert any(not torch.equal(weights[k], start[k]) for k in tuned), "the tuned block never learned"
    log = (dirs["full"] / "logs" / "train.log").read_text()
    assert "fine-tuning the backbone's last 1 block(s)" in log
    assert features["tuned_blocks"] == 1

    # The frozen-backbone ablation is today's frozen path, bit for bit: the shared workflow's k = 0 model.
    frozen = dirs["frozen_backbone"]
    original = train_dirs(finished_workflow)["full"]
    assert (frozen / "model.safetensors").read_bytes() == (original / "model.safetensors").read_bytes()
    assert not any(k.startswith("tuned_head.") for k in load_file(frozen / "model.safetensors"))

    def model_metrics(folder, train_dir):
        evaluated = [p for p in (folder / "results" / "evaluate").glob("*/config.json")
                     if json.loads(p.read_text())["upstream"]["train"] == train_dir.name]
        return json.loads((evaluated[0].parent / "metrics.json").read_text())["model"]

    assert model_metrics(wd, frozen) == model_metrics(finished_workflow, original)
    report = wd / stage_dir(load_config(wd / "config.yaml"), "report") / "ablations.html"
    assert "frozen_backbone" in report.read_text()


def test_a_store_without_the_tokens_is_refused_in_one_line(finished_workflow):
    stores = sorted(map(str, (finished_workflow / "results" / "features").glob("*/*.zarr")))
    with pytest.raises(ValueError, match=r"holds no tokens for train.finetune_blocks = 1 .*Fix: "):
        StoreClips(stores, "train", tuned_blocks=1)


@pytest.mark.slow
def test_the_learning_rate_multiplier_retrains_without_re_extracting(finetuned, tmp_path):
    wd, _ = finetuned
    config = yaml.safe_load((wd / "config.yaml").read_text())
    config["train"]["backbone_lr_scale"] = 0.5
    result = snakemake(wd, "-n", "--configfile", str(write_config(tmp_path / "lr.yaml", config)))
    assert result.returncode == 0, result.stderr[-2000:]
    # The frozen ablation has no tuned blocks: it reads no multiplier, and stays.
    assert planned_jobs(result) == {"train": 1, "evaluate": 1, "report": 1, "all": 1}


@pytest.mark.slow
def test_predict_scores_people_with_the_tuned_block(finetuned, tmp_path):
    """svip predict's ranking runs the saved tuned block: with its weights zeroed, the scores change."""
    from svip_core.predict.footage import GivenTracks
    from svip_core.predict.scoring import rank_people

    wd, _ = finetuned
    model = train_dirs(wd)["full"]
    broken = tmp_path / "zeroed"
    broken.mkdir()
    for name in ("model.json", "config.json"):
        (broken / name).write_text((model / name).read_text())
    weights = load_file(model / "model.safetensors")
    save_file({k: torch.zeros_like(v) if k.startswith("tuned_head.blocks.") else v for k, v in weights.items()},
              str(broken / "model.safetensors"))
    tracks = GivenTracks(MOT15 / "TUD-Campus" / "gt" / "gt.txt")
    video = MOT15 / "TUD-Campus" / "TUD-Campus.mp4"
    _, scores = rank_people(video, tracks, model, device="cpu")
    _, zeroed = rank_people(video, tracks, broken, device="cpu")
    seen = ~np.isnan(scores)
    assert seen.sum() >= 3 and np.array_equal(seen, ~np.isnan(zeroed))
    # Float noise is far below 1e-5 here; the tiny model leans little on appearance, so changes are small.
    assert np.abs(scores[seen] - zeroed[seen]).min() > 1e-5


def test_the_tuned_blocks_learn_at_their_own_rate_on_the_ranker_schedule(tmp_path):
    """train.backbone_lr_scale: the tuned blocks' optimizer groups start at lr x scale, and the one schedule (warmup
    included) scales them with the ranker's."""
    from svip_core.config import validate_config
    from svip_core.features.backbone import build_embedded
    from svip_core.model.ranker import attach_tuned_head, build_ranker
    from svip_core.train.loop import param_groups, warmup_cosine

    cfg = validate_config(copy.deepcopy(TINY))
    backbone = build_embedded(cfg["features"]["embedded"], tmp_path / "backbone")
    model = build_ranker(cfg["model"], 16, 12)
    attach_tuned_head(model, 1, {"backbone": str(backbone), "features": cfg["features"]})
    groups = param_groups(model, 5e-4, 1e-3, 0.1)
    tuned = {id(p) for p in model.tuned_head.parameters()}
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in model.parameters())
    for g in groups:
        assert {id(p) in tuned for p in g["params"]} == {g["lr"] == pytest.approx(1e-4)}
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(4, 20, 0.1))
    for step in range(6):
        ratios = {round(g["lr"] / g["initial_lr"], 9) for g in optimizer.param_groups}
        assert len(ratios) == 1 and ratios == {round(warmup_cosine(4, 20, 0.1)(step), 9)}
        optimizer.step()
        scheduler.step()
