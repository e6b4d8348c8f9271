"""Stage hashes cover exactly what each stage reads, and `svip hash` prints them."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import planned_jobs, snakemake

from svip_core.config import load_config, validate_config
from svip_core.stages import all_stage_hashes, runs


def hashes(cfg):
    return all_stage_hashes(validate_config(copy.deepcopy(cfg)))


@pytest.mark.parametrize("section,key,value,changed", [
    ("train", "lr", 0.5, {"train", "evaluate", "report"}),
    ("model", "pooling", "mean", {"train", "evaluate", "report"}),
    ("model", "track_summary", False, {"train", "evaluate", "report"}),
    ("features", "mode", "crop", {"extract", "train", "evaluate", "report"}),
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


def test_embedded_backbone_recipe_is_part_of_the_feature_hash(tiny_config):
    before = hashes(tiny_config)
    tiny_config["features"]["embedded"]["seed"] = 1
    assert hashes(tiny_config)["extract"] != before["extract"]


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
    more = validate_config(tiny_config)
    all_runs = runs(more)
    assert list(all_runs) == ["full/seed0", "full/seed1", "no_gat/seed0", "no_gat/seed1"]
    train_hashes = {name: stage_hash(run, "train") for name, run in all_runs.items()}
    assert train_hashes["full/seed0"] == full and len(set(train_hashes.values())) == 4
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
