"""The workflow through a REAL two-node SLURM (slurmctld, two slurmd in network namespaces of their own, munge, from
Debian's packages), training across both nodes and surviving a lost node's torchrun and a preemption.

Run with `make test-cluster` (CI does): as root the setup installs and starts the cluster with
tests/cluster/start_local_slurm.sh. Without an accounting database the plugin must poll with squeue.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, TINY, WORKFLOW_FILES, clone_workflow, copy_workflow, snakemake, write_config

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


def run_on_slurm(wd: Path, *targets: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    # SIGINT, not SIGTERM, stops a Snakemake that waits on the cluster.
    return subprocess.run(["timeout", "-s", "INT", "-k", "15", "900", str(BIN / "snakemake"), *targets, "--profile",
                           "profiles/slurm", "--slurm-status-command", "squeue",
                           "--slurm-init-seconds-before-status-checks", "2",
                           "--default-resources", "slurm_partition=debug", "mem_mb=1000", "runtime=30"],
                          cwd=wd, env=env, capture_output=True, text=True)


# One process on each of 2 nodes; no dropout, so that one process with their global batch draws nothing they do not.
# Short batches and a checkpoint every step leave a kill time to land inside an epoch.
ACROSS = {"nproc": 1, "nodes": 2, "epochs": 6, "batch_size": 2, "checkpoint_every": 1}


@pytest.fixture(scope="module")
def across_nodes(slurm, tmp_path_factory):
    """The tiny workflow run on the cluster, training across both nodes: (its folder, the SLURM jobs it ran as
    [id, state, rule, nodes]). The reference run of the tests that interrupt its training."""
    config = {**TINY, "train": {**TINY["train"], **ACROSS}, "model": {**TINY["model"], "dropout": 0.0}}
    wd = copy_workflow(tmp_path_factory.mktemp("across"), config)
    before = slurm_jobs()
    result = run_on_slurm(wd)
    assert result.returncode == 0, result.stderr[-4000:]
    return wd, [v.split("|") for k, v in slurm_jobs().items() if k not in before]


def train_dir(wd: Path, *configfiles: Path) -> Path:
    from svip_core.config import load_config
    from svip_core.stages import stage_dir

    return wd / stage_dir(load_config(wd / "config.yaml", list(configfiles)), "train")


def test_the_workflow_runs_as_slurm_jobs_extract_on_both_nodes_and_train_across_them(across_nodes):
    wd, jobs = across_nodes
    assert all(state == "COMPLETED" for _, state, _, _ in jobs), jobs
    rules = [rule for _, _, rule, _ in jobs]
    for rule in ("rule_prepare", "rule_extract", "rule_train", "rule_evaluate", "rule_report"):
        assert any(r.startswith(rule) for r in rules), (rule, rules)
    assert list(wd.glob("results/report/*/gallery.png"))
    # The two extract jobs (2 shards, each asking for a node's 2 CPUs) ran side by side, one on each node.
    assert {nodes for _, _, rule, nodes in jobs if rule.startswith("rule_extract")} == {"node1", "node2"}, jobs
    (train_job, nodes), = [(job, nodes) for job, _, rule, nodes in jobs if rule.startswith("rule_train")]
    assert nodes == "node[1-2]", jobs
    record = subprocess.run(["scontrol", "show", "job", train_job], capture_output=True, text=True).stdout
    assert "NumNodes=2" in record and ("gres:gpu:1" in record or "gres/gpu:1" in record), record   # per node
    assert json.loads((train_dir(wd) / "model.json").read_text())["world_size"] == 2


def test_two_nodes_train_as_two_processes_on_one_and_as_one_process_with_their_batch(across_nodes, tmp_path):
    """From the same stores, trained on this machine (no SLURM): 2 processes on one node give the same weights and
    curves as 1 process on each of 2 nodes (the same global ranks, so the same batches), bit for bit; 1 process
    with their global batch (2 x 2 clips) the same within float tolerance (gradients summed in another order)."""
    from safetensors.torch import load_file

    wd = clone_workflow(across_nodes[0], tmp_path / "wd")
    across = train_dir(wd)
    runs = {}
    for name, train in {"one node": {"nproc": 2, "nodes": 1}, "one process": {"nproc": 1, "nodes": 1,
                                                                               "batch_size": 4}}.items():
        layer = write_config(tmp_path / f"{name}.yaml", {"train": train})
        runs[name] = train_dir(wd, layer)
        result = snakemake(wd, str(runs[name].relative_to(wd) / "model.safetensors"), "--configfile", str(layer))
        assert result.returncode == 0, result.stderr[-3000:]
    times = ["data_wait_seconds", "train_seconds", "seconds"]
    reference, weights = pd.read_csv(across / "metrics.csv").drop(columns=times), load_file(across / "model.safetensors")
    assert (runs["one node"] / "model.safetensors").read_bytes() == (across / "model.safetensors").read_bytes()
    pd.testing.assert_frame_equal(pd.read_csv(runs["one node"] / "metrics.csv").drop(columns=times), reference)
    pd.testing.assert_frame_equal(pd.read_csv(runs["one process"] / "metrics.csv").drop(columns=times), reference,
                                  rtol=1e-4)
    single = load_file(runs["one process"] / "model.safetensors")
    assert single.keys() == weights.keys()
    # AdamW divides each gradient by its running size: where that is near 0, a last-bit difference moves a weight by
    # a fraction of a step (lr = 1e-3), not of the weight; measured: 4e-5 at most after 18 steps.
    for name, tensor in weights.items():
        assert (single[name] - tensor).abs().max() <= 0.1 * TINY["train"]["lr"], name


def when_mid_epoch(wd: Path, then, after: int = 1) -> threading.Thread:
    """Calls ``then(state)`` once the train run in ``wd`` has written a checkpoint inside an epoch after ``after``."""
    def watch():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            for path in wd.glob("results/train/*/checkpoints/state.json"):
                try:
                    state = json.loads(path.read_text())
                except (OSError, ValueError):      # being replaced
                    continue
                if state["epoch"] >= after and state.get("batches"):
                    then(state)
                    return
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def rerun_train(reference: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished workflow without the reference run's model: (its folder, the train folder)."""
    wd = clone_workflow(reference, tmp_path / "wd")
    out = train_dir(wd)
    shutil.rmtree(out)
    return wd, out


def process_on(node: str, program: bytes) -> int:
    """The pid of the process SLURM started on ``node`` that runs ``program`` (one of its first three arguments ends
    with it: python [-u] PROGRAM; every node's processes are this machine's)."""
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SLURMD_NODENAME={node}".encode() in environ and any(a.endswith(program) for a in argv[:3]):
            return int(proc.name)
    raise AssertionError(f"no {program.decode()} on {node}")


def test_a_killed_rank_and_a_killed_torchrun_restart_the_step_which_ends_with_the_same_weights(across_nodes, tmp_path):
    """SIGKILL to node2's rank inside epoch 2, then to node2's torchrun inside epoch 4 or later: each ends the step
    (a rank's death ends its torchrun; a torchrun's ends its ranks and its srun task), the launcher starts it again
    (train.max_restarts = 2) and the ranks resume at the last step checkpoint. The job completes with the
    uninterrupted run's weights and curves."""
    wd, out = rerun_train(across_nodes[0], tmp_path)
    killed = []

    def kill(program):
        def then(state):
            os.kill(process_on("node2", program), signal.SIGKILL)
            killed.append((program, state["epoch"], state["batches"]))
            if program == b"train.py":
                when_mid_epoch(wd, kill(b"/torchrun"), after=3)
        return then

    when_mid_epoch(wd, kill(b"train.py"))
    result = run_on_slurm(wd, str(out.relative_to(wd) / "model.safetensors"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert [k[0] for k in killed] == [b"train.py", b"/torchrun"], f"the run ended before both kills: {killed}"
    log = (out / "logs" / "train.log").read_text()
    for restart in ("restart 1 of 2", "restart 2 of 2"):
        assert f"starting it again ({restart})" in log, log[-3000:]
    # The second resume may come after an epoch's end: a checkpoint can land between the watcher's look and the kill.
    assert "resuming at batch " in log and len(re.findall(r"resuming (?:at batch|after epoch) ", log)) == 2, log[-3000:]
    reference = train_dir(across_nodes[0])
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    times = ["data_wait_seconds", "train_seconds", "seconds"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv").drop(columns=times),
                                  pd.read_csv(reference / "metrics.csv").drop(columns=times))


def test_a_preempted_train_job_writes_a_checkpoint_is_requeued_and_resumes_at_the_same_sample(across_nodes, tmp_path):
    """`scontrol requeue` inside epoch 2 does what preemption in REQUEUE mode does: SIGTERM to every process of the
    job (SIGKILL KillWait seconds later), then the job back in the queue. The ranks finish their step, agree and
    write a checkpoint there; the requeued job resumes at that sample and ends with the uninterrupted run's weights,
    while Snakemake waits for the same job id."""
    wd, out = rerun_train(across_nodes[0], tmp_path)
    requeued = []

    def requeue(state):
        (job,) = [line.split("|")[0] for line in slurm_jobs().values()
                  if line.split("|")[2].startswith("rule_train") and line.split("|")[1] == "RUNNING"]
        subprocess.run(["scontrol", "requeue", job], check=True)
        requeued.append(job)
        # SLURM holds a requeued job back for a while (its begin time); the test does not wait that out.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and slurm_jobs()[job].split("|")[1] != "PENDING":
            time.sleep(0.5)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)

    when_mid_epoch(wd, requeue)
    result = run_on_slurm(wd, str(out.relative_to(wd) / "model.safetensors"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert requeued, "the run ended before a checkpoint inside epoch 2"
    record = subprocess.run(["scontrol", "show", "job", requeued[0]], capture_output=True, text=True).stdout
    assert "Restarts=1" in record and "JobState=COMPLETED" in record, record
    log = (out / "logs" / "train.log").read_text()
    assert "where SIGTERM stopped it" in log, log[-3000:]
    reference = train_dir(across_nodes[0])
    assert (out / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()


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
    assert "mpi=" not in train, train                     # one node: Snakemake's srun -n1 job step
    tiny_config["train"]["nodes"] = 2
    write_config(tmp_path / "config.yaml", tiny_config)
    plan = subprocess.run([str(BIN / "snakemake"), "--profile", "profiles/slurm", "-n", "--default-resources",
                           "slurm_partition=debug"], cwd=tmp_path, env=env, capture_output=True, text=True)
    train = plan_of(plan, "train")
    # -> sbatch --nodes=2 --ntasks=2 (one torchrun per node), run as it is in the batch step (mpi)
    assert "nodes=2" in train and "tasks=2" in train and "mpi=srun" in train, train


def plan_of(plan: subprocess.CompletedProcess, rule: str) -> str:
    """The resources line of the first job of ``rule`` in a dry run's plan."""
    lines = (plan.stdout + plan.stderr).splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"rule {rule}:")
    return next(line for line in lines[start:] if line.strip().startswith("resources:"))

