"""Build the embedded tiny DINOv2 as a local model folder (then loaded like any other)."""
import argparse
import json

from svip_core.features.backbone import build_embedded
from svip_core.logs import setup_logging

p = argparse.ArgumentParser()
p.add_argument("--embedded", required=True, help="features.embedded as JSON")
p.add_argument("--out-dir", required=True)
p.add_argument("--log-file")
args = p.parse_args()
setup_logging(args.log_file)
build_embedded(json.loads(args.embedded), args.out_dir)
