"""GPU slots on one machine: each job gets its own devices before CUDA starts.

Snakemake counts ``gpu`` as a number and never sets ``CUDA_VISIBLE_DEVICES``. ``svip with-gpus N -- CMD`` takes
N free devices (one lock file per device in a machine-wide folder, ``$SVIP_GPU_LOCK_DIR`` or
``/tmp/svip-gpu-slots``, held with ``flock`` so the kernel frees it when the job ends, even by SIGKILL), sets
``CUDA_VISIBLE_DEVICES`` and runs CMD. Two workflows on one workstation therefore share its GPUs safely.
Inside a scheduler's job (SLURM, PBS, LSF) the ``CUDA_VISIBLE_DEVICES`` it set is the job's allocation and is
used as given. Elsewhere a ``CUDA_VISIBLE_DEVICES`` the user exported only says which devices SVIP may use, and
each job still takes its own among them. With no GPU the command just runs. ``SVIP_GPUS=K`` simulates K
devices (for tests on machines without GPUs).
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from svip_core.interrupt import exit_like, quiet_sigint, run_through_stops

log = logging.getLogger(__name__)
# Set inside a batch scheduler's job, whose CUDA_VISIBLE_DEVICES is then that job's allocation.
SCHEDULER_JOB_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")


def default_lock_dir() -> str:
    """One folder for the whole machine, so concurrent workflows (any folder, any user) see each other's slots."""
    return os.environ.get("SVIP_GPU_LOCK_DIR") or os.path.join(tempfile.gettempdir(), "svip-gpu-slots")


def visible_devices(env: dict) -> list[str]:
    """The devices jobs may take: the user's CUDA_VISIBLE_DEVICES entries, else every device of the machine."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    return [str(i) for i in range(device_count())]


def device_count() -> int:
    """GPUs on this machine, without initialising CUDA in this process (so children can still choose)."""
    if os.environ.get("SVIP_GPUS"):
        return int(os.environ["SVIP_GPUS"])
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def acquire(count: int, lock_dir, devices: list[str], poll_s: float = 0.5,
            timeout_s: float | None = None) -> tuple[list[str], list[int]]:
    """Block until ``count`` of ``devices`` are locked; returns (devices, lock fds)."""
    if count > len(devices):
        raise RuntimeError(f"{count} GPUs requested but {len(devices)} are available ({', '.join(devices) or 'none'}). "
                           f"Fix: lower the rule's gpu resource (train.nproc) or run with --resources gpu={len(devices)}")
    lock_dir = Path(lock_dir)
    if not lock_dir.is_dir():
        lock_dir.mkdir(parents=True, exist_ok=True)
        try:        # every user of the machine must be able to add lock files (sticky, like /tmp)
            os.chmod(lock_dir, 0o1777)
        except OSError:
            pass
    start, waited = time.monotonic(), False
    while True:
        held, fds = [], []
        for device in devices:
            # Read-only is enough for flock, so another user's lock file (mode 644 under a umask) still works.
            fd = os.open(lock_dir / f"gpu{device.replace('/', '_')}.lock", os.O_RDONLY | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append(device)
            fds.append(fd)
            if len(held) == count:
                return held, fds
        for fd in fds:           # not enough free: give back what we took and wait
            os.close(fd)
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"no {count} free GPU slots under {lock_dir} after {timeout_s} s")
        if not waited:
            log.warning("waiting for %d free GPU slot(s) under %s", count, lock_dir)
            waited = True
        time.sleep(poll_s)


def run_with_gpus(count: int, command: list[str], lock_dir=None) -> int:
    """Run ``command`` on ``count`` devices of its own; returns its exit status. SIGINT or SIGTERM (Ctrl-C, SLURM)
    ends the wait for slots quietly; once the command runs, they reach it too, and the slots are released when it
    has stopped (interrupt.run_through_stops); a command killed by one kills this process by the same signal."""
    quiet_sigint()                                   # waiting for slots: stop without a traceback
    env = dict(os.environ)
    fds: list[int] = []
    scheduled = any(v in env for v in SCHEDULER_JOB_VARS) and "CUDA_VISIBLE_DEVICES" in env
    if count > 0 and scheduled:
        log.info("using the scheduler's CUDA_VISIBLE_DEVICES=%s as given", env["CUDA_VISIBLE_DEVICES"])
    elif count > 0 and (devices := visible_devices(env)):
        devices, fds = acquire(count, lock_dir or default_lock_dir(), devices)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        log.info("GPU slots %s acquired", env["CUDA_VISIBLE_DEVICES"])
    try:
        returncode = run_through_stops(command, env=env)
    finally:
        if fds:
            log.info("GPU slots %s released", env["CUDA_VISIBLE_DEVICES"])
        for fd in fds:
            os.close(fd)
    return exit_like(returncode)
