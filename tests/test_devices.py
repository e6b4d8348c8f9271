"""GPU slots: concurrent jobs get disjoint devices, a killed job's slot comes back (simulated devices)."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import clone_workflow

SVIP = [sys.executable, "-m", "svip_core.cli", "with-gpus"]
REPORT = "import os, sys, time; print(os.environ['CUDA_VISIBLE_DEVICES'], time.time(), flush=True); " \
         "time.sleep(float(sys.argv[1])); print(time.time(), flush=True)"


def intervals_overlap(intervals: list[tuple[str, float, float]]) -> bool:
    for i, (da, sa, ea) in enumerate(intervals):
        for db, sb, eb in intervals[i + 1:]:
            if set(da.split(",")) & set(db.split(",")) and sa < eb and sb < ea:
                return True
    return False


def test_concurrent_jobs_get_disjoint_devices(tmp_path):
    env = {**os.environ, "SVIP_GPUS": "2"}
    jobs = [subprocess.Popen(SVIP + ["--lock-dir", str(tmp_path), "1", "--", sys.executable, "-c", REPORT, "1.5"],
                             env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [job.communicate(timeout=60)[0].split() for job in jobs]
    assert all(job.returncode == 0 for job in jobs)
    intervals = [(out[0], float(out[1]), float(out[2])) for out in outputs]
    assert {d for d, _, _ in intervals} <= {"0", "1"}
    assert not intervals_overlap(intervals)
    starts = sorted(s for _, s, _ in intervals)
    assert starts[2] - starts[0] > 1.0                        # the third job had to wait for a free slot


def test_a_killed_jobs_slot_comes_back(tmp_path):
    env = {**os.environ, "SVIP_GPUS": "1"}
    holder = subprocess.Popen(SVIP + ["--lock-dir", str(tmp_path), "1", "--", sys.executable, "-c", REPORT, "60"],
                              env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert holder.stdout.readline().split()[0] == "0"          # it holds the only device
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    start = time.time()
    next_job = subprocess.run(SVIP + ["--lock-dir", str(tmp_path), "1", "--", sys.executable, "-c", REPORT, "0"],
                              env=env, capture_output=True, text=True, timeout=30)
    assert next_job.returncode == 0 and next_job.stdout.split()[0] == "0" and time.time() - start < 10


def test_a_scheduler_given_device_list_is_used_as_is(tmp_path):
    env = {**os.environ, "SVIP_GPUS": "4", "CUDA_VISIBLE_DEVICES": "3", "SLURM_JOB_ID": "77"}
    out = subprocess.run(SVIP + ["--lock-dir", str(tmp_path), "1", "--", sys.executable, "-c", REPORT, "0"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "3" and not list(tmp_path.iterdir())


def test_a_users_device_list_without_a_scheduler_is_shared_out_one_each(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")}
    env.update(SVIP_GPUS="4", CUDA_VISIBLE_DEVICES="0,1", SVIP_GPU_LOCK_DIR=str(tmp_path))
    jobs = [subprocess.Popen(SVIP + ["1", "--", sys.executable, "-c", REPORT, "1.5"], env=env,
                             stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [job.communicate(timeout=60)[0].split() for job in jobs]
    assert all(job.returncode == 0 for job in jobs)
    assert sorted(out[0] for out in outputs) == ["0", "1"]              # one device each, never both
    (_, start_a, end_a), (_, start_b, end_b) = [(o[0], float(o[1]), float(o[2])) for o in outputs]
    assert start_a < end_b and start_b < end_a                          # side by side, neither waited


def _two_workflows_to_extract(finished: Path, folder: Path) -> list[tuple[Path, list[str]]]:
    """Two copies of the shared workflow, each with one of its feature stores removed: each copy's extract
    target."""
    stores = [str(p.relative_to(finished)) for p in sorted(finished.glob("results/features/*/*.zarr"))[:1]]
    flows = [(clone_workflow(finished, folder / name), stores) for name in ("a", "b")]
    for wd, _ in flows:
        for store in stores:
            shutil.rmtree(wd / store)
            _log(wd, store).unlink()
    return flows


def _log(wd: Path, store: str) -> Path:
    return wd / Path(store).parent / "logs" / f"{Path(store).stem}.log"


def _slot_intervals(wd: Path, stores: list[str]) -> list[tuple[str, float, float]]:
    stamp = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) GPU slots (\S+) (acquired|released)"
    intervals = []
    for store in stores:
        events = re.findall(stamp, _log(wd, store).read_text())
        times = {kind: datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp() for t, _, kind in events}
        intervals.append((events[0][1], times["acquired"], times["released"]))
    return intervals


@pytest.mark.slow
def test_two_workflows_in_different_folders_never_share_a_device(finished_workflow, tmp_path):
    """Two workflows started at once on a machine with one (simulated) device, an extract job each: the lock
    folder is the machine's, not each workflow's results/, so the second job waits for the first's device.
    (Jobs of one workflow sharing devices out: test_concurrent_jobs_get_disjoint_devices.)"""
    os.environ.update(SVIP_GPUS="1", SVIP_GPU_LOCK_DIR=str(tmp_path / "machine-locks"))
    try:
        flows = _two_workflows_to_extract(finished_workflow, tmp_path)
        runs = [subprocess.Popen([str(Path(sys.executable).parent / "snakemake"), *stores, "--cores", "2",
                                  "--resources", "gpu=1"], cwd=wd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for wd, stores in flows]
        outputs = []
        for run in runs:
            out, err = run.communicate(timeout=600)
            assert run.returncode == 0, err[-3000:]
            outputs.append(out + err)
    finally:
        os.environ.pop("SVIP_GPUS")
        os.environ.pop("SVIP_GPU_LOCK_DIR")
    assert all("gpu=1" in text for text in outputs)                # each extract job asks for one
    intervals = [i for wd, stores in flows for i in _slot_intervals(wd, stores)]
    assert len(intervals) == 2 and {d for d, _, _ in intervals} == {"0"}
    assert not intervals_overlap(intervals)


def test_torchrun_spans_the_nodes_of_a_slurm_allocation():
    from svip_core.launch import torchrun_command

    script = ["workflow_scripts/train.py", "--out-dir", "x"]
    assert torchrun_command(2, script, env={}) == ["torchrun", "--standalone", "--nproc_per_node=2", *script]
    one_node = {"SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "1"}
    assert torchrun_command(4, script, env=one_node)[:2] == ["torchrun", "--standalone"]
    two_nodes = {"SLURM_JOB_ID": "1234", "SLURM_JOB_NUM_NODES": "2", "SLURMD_NODENAME": "gpu01"}
    cmd = torchrun_command(4, script, env=two_nodes)
    assert cmd[:cmd.index("torchrun")] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert {"--nnodes=2", "--nproc_per_node=4", "--max-restarts=0", "--rdzv-backend=c10d",
            "--rdzv-endpoint=gpu01:29734", "--rdzv-id=svip-1234-0.0"} <= set(cmd)
    # A requeued job, and a restarted step, meet in a rendezvous of their own.
    again = torchrun_command(4, script, env={**two_nodes, "SLURM_RESTART_COUNT": "1", "SVIP_STEP_ATTEMPT": "2"})
    assert "--rdzv-id=svip-1234-1.2" in again
    assert cmd[-len(script):] == script


def test_a_jobs_threads_are_shared_out_among_its_ranks():
    """Under Snakemake (which sets OMP_NUM_THREADS and its kin to the rule's `threads`) each rank gets its share;
    never fewer than one; without a setting, the cores this process may use are the budget."""
    import os

    from svip_core.launch import rank_threads

    snakemake_job = {"OMP_NUM_THREADS": "8", "MKL_NUM_THREADS": "8", "OPENBLAS_NUM_THREADS": "8"}
    assert rank_threads(4, snakemake_job) == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
                                              "OPENBLAS_NUM_THREADS": "2"}
    assert rank_threads(4, {"OMP_NUM_THREADS": "2"}) == {"OMP_NUM_THREADS": "1"}
    assert rank_threads(1, {}) == {"OMP_NUM_THREADS": str(len(os.sched_getaffinity(0)))}
