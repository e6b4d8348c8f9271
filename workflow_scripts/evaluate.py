"""Evaluate stage entry point: metrics.json and predictions.parquet for the evaluation split."""
import argparse
import json
from pathlib import Path

from svip_core.evaluate.evaluation import evaluate
from svip_core.logs import setup_logging

p = argparse.ArgumentParser()
p.add_argument("--config", required=True, help="the stage's resolved config as JSON")
p.add_argument("--stores", nargs="+", required=True)
p.add_argument("--train-dir", required=True)
p.add_argument("--out-dir", required=True)
p.add_argument("--log-file")
args = p.parse_args()
setup_logging(args.log_file)
stage = json.loads(args.config)
out = Path(args.out_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "config.json").write_text(json.dumps(stage, indent=1))
cfg = stage["config"]["evaluate"]
evaluate(args.stores, args.train_dir, out, cfg["split"], cfg["ks"])
