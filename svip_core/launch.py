"""The torchrun command for the train stage: one process group on this machine, or one across the nodes of a
SLURM allocation (one torchrun per node, joined by a c10d rendezvous on the allocation's first node)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess

from svip_core.interrupt import exit_like, quiet_sigint, run_through_stops


def torchrun_command(nproc: int, script: list[str], env=None) -> list[str]:
    """``nproc`` processes per node running ``script``. Under SLURM with several nodes (SLURM_JOB_NUM_NODES),
    ``srun`` starts one torchrun per node and they meet at this node (the batch step runs on the first one)."""
    env = os.environ if env is None else env
    nodes = allocated_nodes(env)
    if nodes <= 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={nproc}", *script]
    job = env["SLURM_JOB_ID"]
    head = env.get("SLURMD_NODENAME") or socket.gethostname()
    port = 29500 + int(job) % 1000          # distinct per job, so two jobs on one node do not collide
    # --overlap: this runs inside the job step Snakemake's SLURM executor opened, and may share its resources.
    return ["srun", "--overlap", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
            "torchrun", f"--nnodes={nodes}", f"--nproc_per_node={nproc}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={head}:{port}", f"--rdzv-id=svip-{job}", *script]


def allocated_nodes(env=None) -> int:
    """Nodes of the SLURM allocation this runs in (1 outside SLURM), as the controller has it: inside the job step
    that Snakemake's executor runs a job in, SLURM's node variables describe the step (1 node), not the job."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env:
        return 1
    try:
        found = subprocess.run(["squeue", "-h", "-j", env["SLURM_JOB_ID"], "-o", "%D"], capture_output=True,
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


def run_torchrun(nproc: int, script: list[str], env=None) -> int:
    """Run ``torchrun_command``; returns its exit status. On one node torchrun runs in this process, so a stop
    (SIGINT, SIGTERM) ends it without its SignalException traceback: it hands the signal to its ranks, waits for
    them to stop (rank 0 says where a re-run resumes) and this returns 128 + the signal. Across nodes ``srun`` runs
    the torchruns and passes signals on to them; this waits for it (interrupt.run_through_stops)."""
    command = torchrun_command(nproc, script, env)
    os.environ.update(rank_threads(nproc, os.environ if env is None else env))
    if command[0] != "torchrun":
        return exit_like(run_through_stops(command))
    quiet_sigint()              # until torchrun's own handlers are in place (importing torch takes a while)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main

    try:
        main(command[1:])
    except SignalException as e:
        return 128 + signal.Signals(e.sigval)
    return 0
