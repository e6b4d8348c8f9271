"""GPU slots: concurrent jobs get disjoint devices, a killed job's slot comes back (simulated devices)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from conftest import snakemake, write_config
from svip_core.stages import load_config, stage_dir

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
    env = {**os.environ, "SVIP_GPUS": "4", "CUDA_VISIBLE_DEVICES": "3"}
    out = subprocess.run(SVIP + ["--lock-dir", str(tmp_path), "1", "--", sys.executable, "-c", REPORT, "0"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "3" and not list(tmp_path.iterdir())


def test_three_extract_jobs_on_two_devices_never_share_one(workflow_dir, tiny_config):
    tiny_config["data"]["num_shards"] = 3
    tiny_config["synthetic"]["clips"] = {"train": 24, "val": 6, "test": 6}
    write_config(workflow_dir / "config.yaml", tiny_config)
    os.environ["SVIP_GPUS"] = "2"
    try:
        config = load_config(workflow_dir / "config.yaml")
        run = snakemake(workflow_dir, str(stage_dir(config, "prepare") / "manifest.parquet"))
        assert run.returncode == 0, run.stderr[-2000:]
        dry = snakemake(workflow_dir, "-n", "-p", "--cores", "8", "--resources", "gpu=4")
        stores = [str(stage_dir(config, "extract") / f"{shard.stem}.zarr")
                  for shard in (workflow_dir / stage_dir(config, "prepare") / "shards").glob("*.json")]
        # Snakemake may start three extract jobs (gpu=3) but the machine has two devices.
        run = snakemake(workflow_dir, *stores, "--cores", "6", "--resources", "gpu=3")
        assert run.returncode == 0, run.stderr[-3000:]
    finally:
        os.environ.pop("SVIP_GPUS")
    assert "gpu=1" in dry.stdout + dry.stderr
    stamp = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) GPU slots (\S+) (acquired|released)"
    intervals = []
    logs = sorted(Path(workflow_dir, "results", "features").glob("*/logs/*.log"))
    for log in [p for p in logs if p.name != "backbone.log"]:
        events = re.findall(stamp, log.read_text())
        times = {kind: datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp() for t, _, kind in events}
        intervals.append((events[0][1], times["acquired"], times["released"]))
    assert len(intervals) == 3
    assert not intervals_overlap(intervals)
    assert {d for d, _, _ in intervals} == {"0", "1"}             # both devices were used


def test_torchrun_spans_the_nodes_of_a_slurm_allocation():
    from svip_core.launch import torchrun_command

    script = ["workflow_scripts/train.py", "--out-dir", "x"]
    assert torchrun_command(2, script, env={}) == ["torchrun", "--standalone", "--nproc_per_node=2", *script]
    one_node = {"SLURM_JOB_ID": "77", "SLURM_JOB_NUM_NODES": "1"}
    assert torchrun_command(4, script, env=one_node)[:2] == ["torchrun", "--standalone"]
    two_nodes = {"SLURM_JOB_ID": "1234", "SLURM_JOB_NUM_NODES": "2", "SLURMD_NODENAME": "gpu01"}
    cmd = torchrun_command(4, script, env=two_nodes)
    assert cmd[:cmd.index("torchrun")] == ["srun", "--overlap", "--nodes=2", "--ntasks-per-node=1",
                                           "--kill-on-bad-exit=1"]
    assert {"--nnodes=2", "--nproc_per_node=4", "--rdzv-backend=c10d", "--rdzv-endpoint=gpu01:29734",
            "--rdzv-id=svip-1234"} <= set(cmd)
    assert cmd[-len(script):] == script
