"""Extract stage entry point: one shard's clips -> one Zarr feature store."""
import argparse
import json
import logging
from pathlib import Path

from svip_core.features.extract import extract_shard
from svip_core.io.manifest import read_shard
from svip_core.logs import setup_logging

p = argparse.ArgumentParser()
p.add_argument("--config", required=True, help="the stage's resolved config as JSON")
p.add_argument("--shard", required=True, help="shard member list (JSON)")
p.add_argument("--backbone", required=True, help="model folder or hub id")
p.add_argument("--out", required=True)
p.add_argument("--stage-hash", required=True)
p.add_argument("--max-array-bytes", type=int, default=2_000_000_000)
p.add_argument("--log-file")
args = p.parse_args()
setup_logging(args.log_file)
stage = json.loads(args.config)
cfg = stage["config"]
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
config_json = Path(args.out).parent / "config.json"
if not config_json.exists():
    config_json.write_text(json.dumps({**stage, "backbone_source": args.backbone}, indent=1))
# extract_shard records the feature config, backbone and slot count itself; the stage adds its identity.
attrs = {"backbone_identity": stage["backbone_identity"], "stage_hash": args.stage_hash, "shard_key": Path(args.shard).stem}
stats = extract_shard(read_shard(args.shard), args.out, cfg["features"], cfg["data.max_persons"], args.backbone,
                      attrs, args.max_array_bytes)
logging.getLogger("extract").info("%d clips in %.1f s", stats["clips"], stats["seconds"])
