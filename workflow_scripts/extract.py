"""Extract stage entry point: one shard's clips -> one Zarr feature store."""
import argparse
import json
import logging
from pathlib import Path

from svip_core.dataset.shards import read_shard
from svip_core.features.extract import extract_shard
from svip_core.hashing import ContentHashes
from svip_core.logs import setup_logging

p = argparse.ArgumentParser()
p.add_argument("--config", required=True, help="the stage's identity as JSON (stages.stage_inputs)")
p.add_argument("--settings", required=True,
               help='run settings as JSON, not part of the identity: {"backbone": folder or hub id, "features": '
                    '{"batch_clips": ..., "workers": ...}}')
p.add_argument("--shard", required=True, help="shard member list (JSON)")
p.add_argument("--out", required=True)
p.add_argument("--stage-hash", required=True)
p.add_argument("--log-file")
args = p.parse_args()
setup_logging(args.log_file)
stage, settings = json.loads(args.config), json.loads(args.settings)
cfg = stage["config"]
Path(args.out).parent.mkdir(parents=True, exist_ok=True)
config_json = Path(args.out).parent / "config.json"
if not config_json.exists():
    config_json.write_text(json.dumps(stage, indent=1))
# extract_shard records the feature config, backbone and slot count itself; the stage adds its identity and the
# run settings it ran with (provenance: they do not change the features).
attrs = {"identity": stage, "stage_hash": args.stage_hash, "shard_key": Path(args.shard).stem, "run_settings": settings}
# The identity holds only the keys the chosen mode reads (no crop_size in roi mode, no roi_samples in crop mode).
features = {**cfg["features"], **settings.get("features", {})}
stats = extract_shard(read_shard(args.shard), args.out, features, cfg["data"]["max_persons"], settings["backbone"], attrs,
                      settings.get("max_array_bytes", 2_000_000_000), cache=ContentHashes(),
                      tuned_blocks=cfg.get("train", {}).get("finetune_blocks", 0))
logging.getLogger("extract").info("%d clips in %.1f s", stats["clips"], stats["seconds"])
