"""The workflow through a REAL single-node SLURM (slurmctld, slurmd, munge from Debian's packages).

Run with `make test-cluster` (CI does): as root the setup installs and starts the cluster with
tests/cluster/start_local_slurm.sh. Without an accounting database the plugin must poll with squeue.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, WORKFLOW_FILES, write_config

pytestmark = pytest.mark.cluster
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def slurm():
    if shutil.which("sinfo") is None and os.geteuid() != 0:
        pytest.skip("no SLURM here, and starting one needs root")
    # Two compute nodes, each in a network namespace of its own (tests/cluster/start_local_slurm.sh).
    start = subprocess.run(["bash", str(ROOT / "tests/cluster/start_local_slurm.sh")], capture_output=True, text=True,
                           env={**os.environ, "SLURM_FAKE_GPUS": "2", "SLURM_NODES": "2"})
    assert start.returncode == 0, start.stderr[-3000:]
    yield
    if os.environ.get("SVIP_KEEP_SLURM") != "1":
        subprocess.run(["bash", str(ROOT / "tests/cluster/stop_local_slurm.sh")], capture_output=True)


def slurm_jobs() -> dict[str, str]:
    """{job id: "id|state|comment|nodes"}, finished jobs included (for MinJobAge seconds)."""
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%i|%T|%k|%N"], capture_output=True, text=True,
                         check=True)
    return {line.split("|")[0]: line for line in out.stdout.splitlines()}


def copy_tiny_workflow(folder: Path, config: dict) -> Path:
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, folder / name)
    write_config(folder / "config.yaml", config)
    return folder


def run_on_slurm(folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    # SIGINT, not SIGTERM, stops a Snakemake that waits on the cluster.
    return subprocess.run(["timeout", "-s", "INT", "-k", "15", "1200", str(BIN / "snakemake"), "--profile",
                           "profiles/slurm", "--slurm-status-command", "squeue",
                           "--slurm-init-seconds-before-status-checks", "2",
                           "--default-resources", "slurm_partition=debug", "mem_mb=1000", "runtime=30"],
                          cwd=folder, env=env, capture_output=True, text=True)


def test_the_tiny_workflow_runs_as_slurm_jobs(slurm, tmp_path, tiny_config):
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    write_config(tmp_path / "config.yaml", tiny_config)
    before = slurm_jobs()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    # SIGINT, not SIGTERM, stops a Snakemake that waits on the cluster.
    result = subprocess.run(["timeout", "-s", "INT", "-k", "15", "1200", str(BIN / "snakemake"), "--profile",
                             "profiles/slurm", "--slurm-status-command", "squeue",
                             "--slurm-init-seconds-before-status-checks", "2",
                             "--default-resources", "slurm_partition=debug", "mem_mb=1000", "runtime=30"],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    new = {k: v for k, v in slurm_jobs().items() if k not in before}
    rules = [line.split("|")[2] for line in new.values()]
    assert all(line.split("|")[1] == "COMPLETED" for line in new.values()), new
    for rule in ("rule_prepare", "rule_extract", "rule_train", "rule_evaluate", "rule_report"):
        assert any(r.startswith(rule) for r in rules), (rule, rules)
    assert list(tmp_path.glob("results/report/*/gallery.png"))
    train_job = next(k for k, v in new.items() if v.split("|")[2].startswith("rule_train"))
    record = subprocess.run(["scontrol", "show", "job", train_job], capture_output=True, text=True).stdout
    assert "gres:gpu:2" in record or "gres/gpu:2" in record, record   # sbatch --gres=gpu:2: train.nproc=2 per node


def test_the_train_jobs_sbatch_line_asks_for_its_gpus_and_nodes(tmp_path, tiny_config):
    """The profile's sbatch line for train, read from a dry run's plan (no cluster needed)."""
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    write_config(tmp_path / "config.yaml", tiny_config)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    plan = subprocess.run([str(BIN / "snakemake"), "--profile", "profiles/slurm", "-n", "--default-resources",
                           "slurm_partition=debug"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr[-3000:]
    train = plan_of(plan, "train")
    # train.nproc=2 processes on each node -> sbatch --gres=gpu:2 (per node), and no job-wide --gpus
    assert "gres=gpu:2" in train and "gpu=0" in train, train
    tiny_config["train"]["nodes"] = 2
    write_config(tmp_path / "config.yaml", tiny_config)
    plan = subprocess.run([str(BIN / "snakemake"), "--profile", "profiles/slurm", "-n", "--default-resources",
                           "slurm_partition=debug"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "nodes=2" in plan_of(plan, "train")            # -> sbatch --nodes=2, one torchrun per node


def plan_of(plan: subprocess.CompletedProcess, rule: str) -> str:
    """The resources line of the first job of ``rule`` in a dry run's plan."""
    lines = (plan.stdout + plan.stderr).splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"rule {rule}:")
    return next(line for line in lines[start:] if line.strip().startswith("resources:"))


def test_training_across_two_nodes_equals_two_processes_on_one(slurm, tmp_path, tiny_config):
    """train.nodes: 2 with one process each: SLURM gives the train job both nodes, srun starts a torchrun on each and
    they meet through c10d; the weights and curves equal those of 2 processes on one node (the same global ranks,
    so the same batches and dropout), trained locally from the same stores. Extract jobs ran on both nodes."""
    tiny_config["train"].update(nproc=1, nodes=2)
    wd = copy_tiny_workflow(tmp_path, tiny_config)
    before = slurm_jobs()
    result = run_on_slurm(wd)
    assert result.returncode == 0, result.stderr[-4000:]
    new = [v.split("|") for k, v in slurm_jobs().items() if k not in before]
    assert all(state == "COMPLETED" for _, state, _, _ in new), new
    train = [nodes for _, _, rule, nodes in new if rule.startswith("rule_train")]
    assert train == ["node[1-2]"], new
    extract_nodes = {nodes for _, _, rule, nodes in new if rule.startswith("rule_extract")}
    assert extract_nodes == {"node1", "node2"}, new

    from svip_core.config import load_config
    from svip_core.stages import stage_dir

    across = wd / stage_dir(load_config(wd / "config.yaml"), "train")
    local = write_config(tmp_path / "local.yaml", {"train": {"nproc": 2, "nodes": 1}})
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    one = subprocess.run([str(BIN / "snakemake"), "--cores", "2", "--configfile", str(local),
                          str(stage_dir(load_config(wd / "config.yaml", [local]), "train") / "model.safetensors")],
                         cwd=wd, env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-4000:]
    on_one = wd / stage_dir(load_config(wd / "config.yaml", [local]), "train")
    assert json.loads((across / "model.json").read_text())["world_size"] == 2
    assert (across / "model.safetensors").read_bytes() == (on_one / "model.safetensors").read_bytes()
    curves = [pd.read_csv(d / "metrics.csv").drop(columns=["data_wait_seconds", "train_seconds", "seconds"])
              for d in (across, on_one)]
    pd.testing.assert_frame_equal(*curves)
