"""Train stage entry point, run under torchrun (one process per GPU, or gloo processes on CPU).

SIGINT or SIGTERM stops it quietly: rank 0 prints where a re-run resumes and every rank exits with 128 + the signal
(svip_core.interrupt; the handler is in place before torch is imported)."""
import argparse
import json
import os
from pathlib import Path

from svip_core.interrupt import run_stoppable
from svip_core.launch import die_with_launcher

p = argparse.ArgumentParser()
p.add_argument("--config", required=True, help="the stage's identity as JSON (stages.stage_inputs, plus the run name)")
p.add_argument("--settings", default="{}", help='run settings as JSON, not part of the identity: {"train": {"workers": 2}}')
p.add_argument("--stores", nargs="+", required=True)
p.add_argument("--out-dir", required=True)
p.add_argument("--debug", action="store_true", help="log time per phase (CUDA-synchronised)")
p.add_argument("--log-file")
args = p.parse_args()
rank = int(os.environ.get("RANK", 0))
stage = json.loads(args.config)
out = Path(args.out_dir)
die_with_launcher()                 # a rank outlives neither its torchrun nor the step it was started in


def main():
    from svip_core.hashing import digest
    from svip_core.logs import keep_across_attempts, setup_logging
    from svip_core.train.checkpoint import resumable
    from svip_core.train.loop import train

    setup_logging(args.log_file if rank == 0 else out / f"train_rank{rank}.log")
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        keep_across_attempts(args.log_file, out / "logs" / "train_attempts.log",
                             resumable(out / "checkpoints", identity(digest))[0])
        (out / "config.json").write_text(json.dumps(stage, indent=1))
    settings = json.loads(args.settings)
    train(args.stores, out, stage["config"]["model"], {**stage["config"]["train"], **settings.get("train", {})},
          debug=args.debug, identity=identity(digest), settings=settings)


def identity(digest) -> str:
    """A checkpoint is resumed only by the run that wrote it: the identity without the run's display name."""
    return digest({k: v for k, v in stage.items() if k != "run"})


def stopped(signal) -> str | None:
    """Rank 0's line: the epoch of this run's last checkpoint, the one a re-run resumes after."""
    if rank != 0:
        return None
    from svip_core.hashing import digest
    from svip_core.train.checkpoint import position, read_state, resumable

    run = f"train {stage['run']}" if stage.get("run") else "train"
    folder = out / "checkpoints"
    if resumable(folder, identity(digest))[0]:
        return f"{run} stopped {position(read_state(folder))}; run again to resume"
    return f"{run} stopped before its first epoch ended; run again to start it"


run_stoppable(main, stopped)
