"""The workflow through a REAL single-node SLURM (slurmctld, slurmd, munge from Debian's packages).

Run with `make test-cluster` (CI does): as root the setup installs and starts the cluster with
tests/cluster/start_local_slurm.sh. Without an accounting database the plugin must poll with squeue.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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
    # The two extract jobs (2 shards, each asking for a node's 2 CPUs) ran side by side, one on each node.
    extract_nodes = {line.split("|")[3] for line in new.values() if line.split("|")[2].startswith("rule_extract")}
    assert extract_nodes == {"node1", "node2"}, new
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

