"""Shared fixtures: a tiny config and a copy of the workflow in a temporary folder."""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_FILES = ("Snakefile", "rules", "workflow_scripts", "config.schema.yaml", "report", "envs", "profiles")
BIN = Path(sys.executable).parent


def svip(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """The installed ``svip`` command, as a user runs it."""
    return subprocess.run([str(BIN / "svip"), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)

TINY = {
    "data": {"source": "synthetic", "num_shards": 2, "max_persons": 4},
    "synthetic": {"clips": {"train": 12, "val": 4, "test": 4}, "frames": 6, "persons": 4, "height": 48,
                  "width": 80, "categories": ["meeting", "street"], "seed": 3},
    "features": {"backbone": "embedded", "embedded": {"hidden_size": 16, "num_layers": 1, "num_heads": 2,
                                                      "patch_size": 8, "seed": 0},
                 "frame_size": [48, 80], "num_frames": 6, "batch_clips": 4, "roi_samples": 2, "crop_size": 16},
    "model": {"fused_dim": 32, "geometry_dim": 8, "gat_hidden": 16, "gat_layers": 1, "gat_heads": 2, "d_model": 16,
              "temporal_layers": 1, "temporal_heads": 2, "temporal_ffn": 32},
    "train": {"seeds": [0], "nproc": 2, "epochs": 2, "batch_size": 4, "accumulation_steps": 1, "lr": 0.001,
              "warmup_steps": 1, "workers": 0},
    "evaluate": {"split": "test"},
}


@pytest.fixture
def tiny_config() -> dict:
    return copy.deepcopy(TINY)


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def copy_workflow(dst: Path, config: dict) -> Path:
    """A copy of the workflow in ``dst`` with ``config`` as its config.yaml."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    write_config(dst / "config.yaml", config)
    return dst


@pytest.fixture
def workflow_dir(tmp_path, tiny_config) -> Path:
    """A copy of the workflow with the tiny config as its config.yaml."""
    return copy_workflow(tmp_path, tiny_config)


@pytest.fixture(scope="session")
def finished_workflow(tmp_path_factory) -> Path:
    """The whole workflow run once on the tiny config; tests read it and dry-run edits against it (tests that
    change its files work on a copy)."""
    wd = copy_workflow(tmp_path_factory.mktemp("workflow"), TINY)
    result = snakemake(wd)
    assert result.returncode == 0, result.stderr[-4000:]
    return wd


def snakemake(workdir: Path, *args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**(os.environ if env is None else env), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(BIN / "snakemake"), "--cores", "2", *args], cwd=workdir, env=env, text=True,
                          capture_output=True, timeout=timeout)


def ran_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule of a real run, from Snakemake's 'Finished jobid: N (Rule: R)' lines."""
    counts: dict[str, int] = {}
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("Finished jobid") and "(Rule: " in line:
            rule = line.split("(Rule: ")[1].rstrip(")")
            counts[rule] = counts.get(rule, 0) + 1
    counts.pop("all", None)
    return counts


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts from a dry run's 'Job stats' table."""
    counts, inside = {}, False
    for line in result.stdout.splitlines() + result.stderr.splitlines():
        parts = line.split()
        if line.startswith("job ") and "count" in line:
            inside = True
        elif inside and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                inside = False
            else:
                counts[parts[0]] = int(parts[1])
    return counts


def build_stores(folder: Path, clips: dict[str, int], num_shards: int) -> list[str]:
    """Tiny synthetic clips -> prepare -> embedded backbone -> one Zarr store per shard (the real stage code)."""
    from svip_core.features.backbone import build_embedded
    from svip_core.features.extract import extract_shard
    from svip_core.io.manifest import prepare_dataset
    from svip_core.io.shards import read_shard
    from svip_core.io.synth import write_dataset
    from svip_core.config import validate_config

    cfg = validate_config(copy.deepcopy(TINY))
    s, f = cfg["synthetic"], cfg["features"]
    write_dataset(folder / "clips", clips, s["frames"], s["persons"], s["height"], s["width"], s["categories"], s["seed"])
    prepare_dataset(folder / "clips", folder / "prepare", num_shards, 10**9, "error")
    backbone = build_embedded(f["embedded"], folder / "backbone")
    stores = []
    for shard in sorted((folder / "prepare" / "shards").glob("*.json")):
        stores.append(str(folder / f"{shard.stem}.zarr"))
        extract_shard(read_shard(shard), stores[-1], f, cfg["data"]["max_persons"], backbone, {})
    return stores
