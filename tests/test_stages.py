"""Stage hashes cover exactly what each stage reads, and `svip hash` prints them."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import folder_dataset, planned_jobs, snakemake

from svip_core.config import load_config, validate_config
from svip_core.stages import all_stage_hashes, runs


def hashes(cfg):
    return all_stage_hashes(validate_config(copy.deepcopy(cfg)))


@pytest.mark.parametrize("section,key,value,changed", [
    ("train", "lr", 0.5, {"train", "evaluate", "report"}),
    ("model", "pooling", "mean", {"train", "evaluate", "report"}),
    ("model", "track_summary", False, {"train", "evaluate", "report"}),
    ("model", "looks_at", 2, {"train", "evaluate", "report"}),
    ("model", "neighbours", 3, {"train", "evaluate", "report"}),
    ("model", "relational_memory", True, {"train", "evaluate", "report"}),
    ("train", "facing_weight", 0.5, set()),                   # read only with model.looks_at
    ("train", "augment", {"drop_visual_clips": 0.5}, {"train", "evaluate", "report"}),
    ("train", "self_training", {"weight": 1.0}, set()),       # a synthetic benchmark's unlabelled clips: train.clips
    ("features", "mode", "crop", {"extract", "train", "evaluate", "report"}),
    ("features", "roi_pooling", "grid", {"extract", "train", "evaluate", "report"}),
    ("data", "max_persons", 5, {"extract", "train", "evaluate", "report"}),
    ("data", "num_shards", 3, {"prepare", "train", "evaluate", "report"}),
    ("synthetic", "seed", 9, {"prepare", "train", "evaluate", "report"}),
    ("evaluate", "ks", [1, 2], {"evaluate", "report"}),
    ("report", "gallery_size", 1, {"report"}),
])
def test_an_edit_changes_exactly_the_downstream_hashes(tiny_config, section, key, value, changed):
    before = hashes(tiny_config)
    tiny_config.setdefault(section, {})[key] = value
    after = hashes(tiny_config)
    assert {s for s in before if before[s] != after[s]} == changed



def test_the_facing_loss_weight_is_part_of_a_model_with_facing_directions(tiny_config):
    tiny_config.setdefault("model", {})["looks_at"] = 2
    before = hashes(tiny_config)
    tiny_config.setdefault("train", {})["facing_weight"] = 0.5
    after = hashes(tiny_config)
    assert {s for s in before if before[s] != after[s]} == {"train", "evaluate", "report"}


def test_self_training_is_part_of_a_run_that_has_clips_to_learn_from_without_labels(tiny_config):
    tiny_config.setdefault("train", {})["clips"] = 4
    before = hashes(tiny_config)
    tiny_config["train"]["self_training"] = {"weight": 1.0}
    middle = hashes(tiny_config)
    tiny_config["train"]["self_training"]["threshold"] = 0.5
    after = hashes(tiny_config)
    assert {s for s in before if before[s] != middle[s]} == {s for s in middle if middle[s] != after[s]} == \
        {"train", "evaluate", "report"}


def test_self_training_is_part_of_a_run_on_a_users_dataset_which_may_hold_unlabelled_clips(tiny_config, tmp_path):
    source = folder_dataset(tmp_path, {"train": 2, "val": 1}, 0)
    tiny_config["data"] = {**tiny_config.get("data", {}), "source": str(source)}
    before = hashes(tiny_config)
    tiny_config.setdefault("train", {})["self_training"] = {"weight": 1.0}
    assert {s for s in before if before[s] != hashes(tiny_config)[s]} == {"train", "evaluate", "report"}


def test_a_benchmarks_unlabelled_clips_are_part_of_a_run_that_self_trains_on_them(tiny_config):
    tiny_config.setdefault("synthetic", {}).setdefault("clips", {})["unlabelled"] = 4
    before = hashes(tiny_config)
    del tiny_config["synthetic"]["clips"]["unlabelled"]
    assert {s for s in before if before[s] != hashes(tiny_config)[s]} == {"prepare", "report"}
    tiny_config.setdefault("train", {})["self_training"] = {"weight": 1.0}
    off = hashes(tiny_config)
    tiny_config["synthetic"]["clips"]["unlabelled"] = 4
    assert {s for s in off if off[s] != hashes(tiny_config)[s]} == {"prepare", "train", "evaluate", "report"}


def test_a_users_unlabelled_clips_are_part_of_a_run_that_self_trains_on_them(tiny_config, tmp_path):
    import numpy as np

    source = folder_dataset(tmp_path / "data", {"train": 2, "val": 1}, 0)
    tiny_config["data"] = {**tiny_config.get("data", {}), "source": str(source)}
    off = hashes(tiny_config)
    tiny_config.setdefault("train", {})["self_training"] = {"weight": 1.0}
    on = hashes(tiny_config)
    extra = folder_dataset(tmp_path / "extra", {"train": 1}, 5) / "train"
    arrays = {k: v for k, v in np.load(next(extra.glob("*.npz"))).items() if k != "target_index"}
    (source / "unlabelled").mkdir()
    np.savez(source / "unlabelled" / "u.npz", **{**arrays, "video_id": np.array("u")})
    assert {s for s in on if on[s] != hashes(tiny_config)[s]} == {"prepare", "train", "evaluate", "report"}
    tiny_config["train"]["self_training"] = {"weight": 0.0}
    assert {s for s in off if off[s] != hashes(tiny_config)[s]} == {"prepare", "report"}


def test_a_model_trained_without_its_benchmarks_unlabelled_clips_still_knows_its_scenes(tiny_config, tmp_path):
    """svip predict's caveat finds the synthetic dataset a model was trained on, also when the run left the
    benchmark's unlabelled clips out of its identity."""
    import json

    from svip_core.predict.model_choice import model_caveat
    from svip_core.stages import stage_inputs

    tiny_config["synthetic"]["scene"] = "relational"
    tiny_config["synthetic"]["clips"]["unlabelled"] = 4
    config = validate_config(copy.deepcopy(tiny_config))
    run = next(iter(runs(config).values()))
    for stage, inputs in (("prepare", stage_inputs(config, "prepare")), ("train", stage_inputs(run, "train"))):
        (tmp_path / stage / "h").mkdir(parents=True)
        (tmp_path / stage / "h" / "config.json").write_text(json.dumps(inputs))
    (tmp_path / "train" / "h" / "model.json").write_text(json.dumps({"features": {}}))
    assert "trained on synthetic relational scenes only" in model_caveat(tmp_path / "train" / "h")


def test_embedded_backbone_recipe_is_part_of_the_feature_hash(tiny_config):
    before = hashes(tiny_config)
    tiny_config["features"]["embedded"]["seed"] = 1
    assert hashes(tiny_config)["extract"] != before["extract"]


@pytest.mark.parametrize(("library", "release", "changed"), [
    ("torch", "2.99.0", {"extract", "train", "evaluate", "report"}),
    ("transformers", "9.0.0", {"extract", "train", "evaluate", "report"}),
    ("torch_geometric", "9.0.0", {"train", "evaluate", "report"}),
    ("numpy", "9.0.0", {"evaluate", "report"}),
    ("torch", "2.13.0+cu128", set()),                  # a CUDA build of the same release: the same arithmetic
    ("zarr", "9.0.0", set()),                          # stores, computes nothing
])
def test_a_library_upgrade_reruns_the_stages_whose_numbers_it_computes(tiny_config, tmp_path, monkeypatch, library,
                                                                        release, changed):
    """On a folder dataset (the synthetic one also follows numpy, whose random streams may change)."""
    import importlib.metadata

    tiny_config["data"]["source"] = str(folder_dataset(tmp_path / "data", {"train": 4, "val": 2, "test": 2}, seed=1))
    monkeypatch.chdir(tmp_path)
    before = hashes(tiny_config)
    installed = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: release if name == library else installed(name))
    after = hashes(tiny_config)
    assert {s for s in before if before[s] != after[s]} == changed


def test_the_synthetic_dataset_follows_numpys_release(tiny_config, monkeypatch):
    import importlib.metadata

    before = hashes(tiny_config)
    installed = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.0.0" if name == "numpy" else installed(name))
    after = hashes(tiny_config)
    assert {s for s in before if before[s] != after[s]} == {"prepare", "train", "evaluate", "report"}


def test_local_backbone_is_identified_by_its_weights_not_its_path(tiny_config, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, content in ((a, b"weights-1"), (b, b"weights-1")):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(content)
        (folder / "config.json").write_text('{"model_type": "dinov2", "patch_size": 8}')
    tiny_config["features"]["backbone"] = str(a)
    ha = hashes(tiny_config)["extract"]
    tiny_config["features"]["backbone"] = str(b)
    assert hashes(tiny_config)["extract"] == ha               # same weights elsewhere: same features
    (b / "model.safetensors").write_bytes(b"weights-2")
    assert hashes(tiny_config)["extract"] != ha               # new weights at the same path: new features


def test_svip_cli_prints_version_and_hash(tmp_path, tiny_config):
    from conftest import write_config

    write_config(tmp_path / "config.yaml", tiny_config)
    svip = str(Path(sys.executable).parent / "svip")
    version = subprocess.run([svip, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("svip ")
    out = subprocess.run([svip, "hash", "train"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == hashes(tiny_config)["train"]
    path = subprocess.run([svip, "hash", "extract", "--path"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert path.stdout.strip() == f"results/features/{hashes(tiny_config)['extract']}"


def test_ablations_and_seeds_add_runs_without_touching_existing_ones(tiny_config):
    from svip_core.stages import runs, stage_hash

    base = validate_config(copy.deepcopy(tiny_config))
    full = stage_hash(base, "train")
    tiny_config["ablations"] = {"no_gat": {"gat_layers": 0}}
    tiny_config["train"]["seeds"] = [0, 1]
    tiny_config["learning_curve"] = [6]
    more = validate_config(tiny_config)
    all_runs = runs(more)
    assert list(all_runs) == ["full/seed0", "full/seed1", "no_gat/seed0", "no_gat/seed1", "full@6/seed0", "full@6/seed1"]
    train_hashes = {name: stage_hash(run, "train") for name, run in all_runs.items()}
    assert train_hashes["full/seed0"] == full and len(set(train_hashes.values())) == 6
    assert all_runs["full@6/seed1"]["train"]["clips"] == 6 and all_runs["full@6/seed1"]["model"] == base["model"]
    assert all_runs["no_gat/seed1"]["model"]["gat_layers"] == 0 and all_runs["no_gat/seed1"]["train"]["seed"] == 1
    assert stage_hash(more, "report") != stage_hash(base, "report")


def test_an_override_file_can_turn_the_ablations_off(workflow_dir):
    """Snakemake merges an override's `ablations: {}` into the base mapping (nothing changes); `none` replaces it."""
    config = load_config(workflow_dir / "config.yaml")
    config["ablations"] = {"no_gat": {"gat_layers": 0}, "mean_pooling": {"pooling": "mean"}}
    (workflow_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (workflow_dir / "no_ablations.yaml").write_text("ablations: none\n")
    assert len(runs(load_config(workflow_dir / "config.yaml"))) == 3
    assert list(runs(load_config(workflow_dir / "config.yaml", [workflow_dir / "no_ablations.yaml"]))) == ["full/seed0"]
    planned = snakemake(workflow_dir, "-n", "--configfile", "no_ablations.yaml")
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert planned_jobs(planned)["train"] == 1


@pytest.mark.parametrize("stage", ["prepare", "extract", "train", "evaluate", "report"])
def test_a_stages_code_identity_covers_what_its_workflow_script_imports(stage):
    """Editing a module the stage's script imports (extract's shard reader, prepare's dataset scanner) re-runs the
    stage: its code identity holds every svip_core module the script reaches, but those that only log or name
    results, and the synthetic generator for a folder dataset, which it does not run."""
    from svip_core.hashing import code_closure, imported_modules
    from svip_core.stages import NOT_CODE, PROJECT_ROOT, stage_code

    folder_dataset = {"data": {"source": "/data/clips"}}
    code = stage_code(stage, folder_dataset)
    reached = code_closure(imported_modules(PROJECT_ROOT / "workflow_scripts" / f"{stage}.py"), NOT_CODE)
    missing = [m for m in reached if m not in code and not (stage == "prepare" and m.startswith("svip_core.synthetic"))]
    assert not missing, missing
    assert f"{stage}.py" in code
    if stage == "prepare":
        assert not any(m.startswith("svip_core.synthetic") for m in code)
        assert "svip_core.synthetic.generate" in stage_code(stage, validate_config({}))
