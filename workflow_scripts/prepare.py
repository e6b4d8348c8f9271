"""Prepare stage entry point: (generate the synthetic dataset,) validate clips, write manifest and shards."""
import argparse
import json
from pathlib import Path

from svip_core.io.manifest import prepare_dataset
from svip_core.io.synth import write_dataset
from svip_core.logs import setup_logging

p = argparse.ArgumentParser()
p.add_argument("--config", required=True, help="the stage's resolved config as JSON")
p.add_argument("--out-dir", required=True)
p.add_argument("--log-file")
args = p.parse_args()
setup_logging(args.log_file)
stage = json.loads(args.config)
cfg, out = stage["config"], Path(args.out_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "config.json").write_text(json.dumps(stage, indent=1))
source = cfg["data.source"]
if source == "synthetic":
    s = cfg["synthetic"]
    source = out / "clips"
    write_dataset(source, s["clips"], s["frames"], s["persons"], s["height"], s["width"], s["categories"], s["seed"])
prepare_dataset(source, out, cfg["data.num_shards"], cfg["data.max_array_bytes"], cfg["data.on_duplicate_id"])
