"""GPU slots on one machine: each job gets its own devices before CUDA starts.

Snakemake counts ``gpu`` as a number and never sets ``CUDA_VISIBLE_DEVICES``. ``svip with-gpus N -- CMD`` takes
N free devices (one lock file per device under ``results/.gpu-slots/``, held with ``flock`` so the kernel frees
it when the job ends, even by SIGKILL), sets ``CUDA_VISIBLE_DEVICES`` and runs CMD. Where a scheduler already
set ``CUDA_VISIBLE_DEVICES`` (SLURM does), that is used as given. With no GPU the command just runs.
``SVIP_GPUS=K`` simulates K devices (for tests on machines without GPUs).
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


def device_count() -> int:
    """GPUs on this machine, without initialising CUDA in this process (so children can still choose)."""
    if os.environ.get("SVIP_GPUS"):
        return int(os.environ["SVIP_GPUS"])
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def acquire(count: int, lock_dir, poll_s: float = 0.5, timeout_s: float | None = None) -> tuple[list[int], list]:
    """Block until ``count`` device locks are held; returns (device indices, open lock files)."""
    total = device_count()
    if count > total:
        raise RuntimeError(f"{count} GPUs requested but this machine has {total}. Fix: lower the rule's gpu "
                           f"resource (train.nproc) or run with --resources gpu={total}")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    start, waited = time.monotonic(), False
    while True:
        held, files = [], []
        for device in range(total):
            f = open(lock_dir / f"gpu{device}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            held.append(device)
            files.append(f)
            if len(held) == count:
                return held, files
        for f in files:          # not enough free: give back what we took and wait
            f.close()
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no {count} free GPU slots under {lock_dir} after {timeout_s} s")
        if not waited:
            log.warning("waiting for %d free GPU slot(s) under %s", count, lock_dir)
            waited = True
        time.sleep(poll_s)


def run_with_gpus(count: int, command: list[str], lock_dir="results/.gpu-slots") -> int:
    """Run ``command`` on ``count`` devices of its own; returns its exit status."""
    env = dict(os.environ)
    files: list = []
    if count > 0 and "CUDA_VISIBLE_DEVICES" not in env and device_count() > 0:
        devices, files = acquire(count, lock_dir)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
        log.info("GPU slots %s acquired", env["CUDA_VISIBLE_DEVICES"])
    elif "CUDA_VISIBLE_DEVICES" in env:
        log.info("using CUDA_VISIBLE_DEVICES=%s as given", env["CUDA_VISIBLE_DEVICES"])
    try:
        return subprocess.run(command, env=env).returncode
    finally:
        if files:
            log.info("GPU slots %s released", env["CUDA_VISIBLE_DEVICES"])
        for f in files:
            f.close()
