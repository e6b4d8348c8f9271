"""The torchrun command for the train stage: one process group on this machine, or one across the nodes of a
SLURM allocation (one torchrun per node, joined by a c10d rendezvous on the allocation's first node), and what
recovers a run across nodes from a lost node's processes (``run_across_nodes``)."""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess

from svip_core.interrupt import exit_like, quiet_sigint, run_through_stops

log = logging.getLogger(__name__)


def torchrun_command(nproc: int, script: list[str], env=None, nodes: int | None = None) -> list[str]:
    """``nproc`` processes per node running ``script`` on the allocation's ``nodes`` (default: asked of SLURM).
    With several, ``srun`` starts one torchrun per node and they meet at this node (the batch step runs on the
    allocation's first one). A failed process ends its torchrun, and that ends the step (``run_across_nodes``
    restarts it)."""
    env = os.environ if env is None else env
    nodes = allocated_nodes(env) if nodes is None else nodes
    if nodes <= 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={nproc}", *script]
    job = env["SLURM_JOB_ID"]
    head = env.get("SLURMD_NODENAME") or socket.gethostname()
    port = 29500 + int(job) % 1000          # distinct per job, so two jobs on one node do not collide
    # --kill-on-bad-exit: a node whose torchrun ended ends the step at once, instead of the others waiting at the
    # rendezvous for it until it times out. --max-restarts=0: torchrun's restarts in place kept its agents' store
    # across rounds, and a restarted rank read its peer's address of the round before (on the test cluster two
    # restarts in a row timed out connecting, 43 s); a new step starts new torchruns, with a rendezvous of their own.
    return ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
            "torchrun", f"--nnodes={nodes}", f"--nproc_per_node={nproc}", "--max-restarts=0",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={head}:{port}", f"--rdzv-id=svip-{job}-{_attempt(env)}",
            *script]


def _attempt(env) -> str:
    """Distinct per start of the step (SVIP_STEP_ATTEMPT, set by run_across_nodes) and per requeue of the job, so a
    new step never joins a rendezvous of a step before it."""
    return f"{env.get('SLURM_RESTART_COUNT', '0')}.{env.get('SVIP_STEP_ATTEMPT', '0')}"


def allocated_nodes(env=None) -> int:
    """Nodes of the SLURM allocation this runs in (1 outside SLURM), as the controller has it: inside the job step
    that Snakemake's executor runs a job in, SLURM's node variables describe the step (1 node), not the job."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env:
        return 1
    squeue = shutil.which("squeue", path=env.get("PATH", ""))       # the job's own, as its PATH finds it
    if squeue is not None:
        try:
            found = subprocess.run([squeue, "-h", "-j", env["SLURM_JOB_ID"], "-o", "%D"], capture_output=True,
                                   text=True, check=True, timeout=30).stdout.split()
            if found and found[0].isdigit():
                return int(found[0])
        except (OSError, subprocess.SubprocessError):
            pass
    return int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)


def nodes_problem(nodes: int, env=None) -> str:
    """The one-line config error of a run asked to span ``nodes`` nodes where it cannot ('' when it can): outside
    SLURM (a local Snakemake run; its planning cannot know the executor), or in an allocation of fewer nodes."""
    have = allocated_nodes(env)
    if nodes <= 1 or have >= nodes:
        return ""
    where = "on this machine" if have == 1 and "SLURM_JOB_ID" not in (os.environ if env is None else env) else \
        f"in an allocation of {have} node(s)"
    return (f"train.nodes = {nodes}: training across nodes runs under SLURM, not {where}. "
            "Fix: run with --profile profiles/slurm, or set train.nodes: 1")


# What Snakemake sets to a job's `threads` (snakemake/shell.py), each read by one of the libraries a rank loads.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def rank_threads(nproc: int, env) -> dict[str, str]:
    """The thread variables for each of a node's ``nproc`` ranks: the job's threads (OMP_NUM_THREADS, which
    Snakemake sets to the rule's `threads`; else the cores this process may use) shared out among them. torchrun
    passes a set OMP_NUM_THREADS to every rank unchanged, so under Snakemake each rank would run the whole job's
    threads: on CPU, ranks that wait for each other's all-reduce with their threads spinning on shared cores ran
    steps 3 to 10 times slower."""
    budget = int(env.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    per_rank = str(max(1, budget // nproc))
    return {name: per_rank for name in THREAD_VARIABLES if name == "OMP_NUM_THREADS" or name in env}


def run_torchrun(nproc: int, script: list[str], env=None, max_restarts: int = 0) -> int:
    """Run ``torchrun_command``; returns its exit status. On one node torchrun runs in this process, so a stop
    (SIGINT, SIGTERM) ends it without its SignalException traceback: it hands the signal to its ranks, waits for
    them to stop (rank 0 says where a re-run resumes) and this returns 128 + the signal. A failure ends it: the
    job fails, and Snakemake's ``retries`` start it again. Across nodes see ``run_across_nodes``."""
    os.environ.update(rank_threads(nproc, os.environ if env is None else env))
    nodes = allocated_nodes(env)
    if nodes > 1:
        return exit_like(run_across_nodes(nproc, nodes, script, max_restarts, env))
    command = torchrun_command(nproc, script, env, nodes)
    quiet_sigint()              # until torchrun's own handlers are in place (importing torch takes a while)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main

    try:
        main(command[1:])
    except SignalException as e:
        return 128 + signal.Signals(e.sigval)
    return 0


def run_across_nodes(nproc: int, nodes: int, script: list[str], max_restarts: int, env=None) -> int:
    """Run the step of one torchrun on each of ``nodes`` nodes (``srun``), waiting for it through stops (SLURM signals every process of
    the job; the ranks write a checkpoint and stop). Returns its exit status (negative: the stop signal).

    A failure anywhere (a rank killed or out of memory, which ends its torchrun; a node's torchrun killed) ends
    the step (--kill-on-bad-exit), and this starts it again on the allocation's nodes, up to ``max_restarts``
    times; the ranks resume from the run's last checkpoint. When they are spent the job fails, and Snakemake's
    ``retries`` submit it again (it resumes from the checkpoint too)."""
    env = dict(os.environ if env is None else env)
    for attempt in range(max_restarts + 1):
        env["SVIP_STEP_ATTEMPT"] = str(attempt)
        status = run_through_stops(torchrun_command(nproc, script, env, nodes), env=env)
        if status <= 0:                     # done, or stopped by a signal this process received too
            return status
        if attempt < max_restarts:
            log.warning("the training step across %d nodes failed (status %d: a rank or a node's torchrun ended); "
                        "starting it again (restart %d of %d); the ranks resume from the last checkpoint",
                        nodes, status, attempt + 1, max_restarts)
    log.error("the training step across nodes failed %d time(s); train.max_restarts = %d are spent, so the job "
              "fails (Snakemake's retries may submit it again; it resumes from the last checkpoint)",
              max_restarts + 1, max_restarts)
    return status


def die_with_launcher() -> None:
    """End this process (SIGKILL) when the process that started it ends. torchrun starts its ranks in sessions of
    their own and nothing ends them when torchrun is killed (SIGKILL, a lost node's step): they would train on,
    beside the ranks that replace them. Linux only; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)           # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:                       # the launcher ended before the call above took effect
        os.kill(os.getpid(), signal.SIGKILL)
