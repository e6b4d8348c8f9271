"""Train stage entry point, run under torchrun (one process per GPU, or gloo processes on CPU)."""
import argparse
import json
import os
from pathlib import Path

from svip_core.hashing import digest
from svip_core.logs import setup_logging
from svip_core.train.loop import train

p = argparse.ArgumentParser()
p.add_argument("--config", required=True, help="the stage's identity as JSON (stages.stage_inputs, plus the run name)")
p.add_argument("--settings", default="{}", help='run settings as JSON, not part of the identity: {"train": {"workers": 2}}')
p.add_argument("--stores", nargs="+", required=True)
p.add_argument("--out-dir", required=True)
p.add_argument("--debug", action="store_true", help="log time per phase (CUDA-synchronised)")
p.add_argument("--log-file")
args = p.parse_args()
rank = int(os.environ.get("RANK", 0))
setup_logging(args.log_file if rank == 0 else Path(args.out_dir) / f"train_rank{rank}.log")
stage = json.loads(args.config)
out = Path(args.out_dir)
out.mkdir(parents=True, exist_ok=True)
if rank == 0:
    (out / "config.json").write_text(json.dumps(stage, indent=1))
# A checkpoint is resumed only by the run that wrote it: the identity without the run's display name.
identity = digest({k: v for k, v in stage.items() if k != "run"})
settings = json.loads(args.settings)
train(args.stores, out, stage["config"]["model"], {**stage["config"]["train"], **settings.get("train", {})},
      debug=args.debug, identity=identity, settings=settings)
