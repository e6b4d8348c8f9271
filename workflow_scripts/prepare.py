"""Prepare stage entry point: (generate the synthetic dataset,) validate clips, write manifest and shards."""
import argparse
import json
import sys
from pathlib import Path

from svip_core.dataset.content import data_content
from svip_core.dataset.manifest import DatasetError, prepare_dataset
from svip_core.hashing import ContentHashes
from svip_core.logs import setup_logging
from svip_core.synthetic.generate import write_dataset

p = argparse.ArgumentParser()
p.add_argument("--config", required=True, help="the stage's resolved config as JSON")
p.add_argument("--out-dir", required=True)
p.add_argument("--shared-shards", help="folder of shard member lists shared by every prepare run")
p.add_argument("--log-file")
args = p.parse_args()
setup_logging(args.log_file)
stage = json.loads(args.config)
cfg, out = stage["config"], Path(args.out_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "config.json").write_text(json.dumps(stage, indent=1))
cache = ContentHashes()
if "location" in stage:
    source = stage["location"]["source"]
    # The folder's name is the content planned; a clip edited since then would be prepared under a stale name.
    found = data_content(source, cache, cfg["data"]["max_array_bytes"])
    if found["files"] != stage["location"]["files"]:
        sys.exit(f"{source}: the clips changed after the workflow was planned (the results folder is named for "
                 f"the clips as they were). Fix: run snakemake again")
else:
    s = cfg["synthetic"]
    source = out / "clips"
    write_dataset(source, s["clips"], s["frames"], s["persons"], s["height"], s["width"], s["categories"], s["seed"],
                  s["scene"])
d = cfg["data"]
try:
    prepare_dataset(source, out, d["num_shards"], d["max_array_bytes"], d["on_duplicate_id"], cache, args.shared_shards)
except DatasetError as e:      # the data, not the code, is at fault: its problems a line each, no traceback
    sys.exit(str(e))
