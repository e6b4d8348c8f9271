"""How long reading and validating a dataset takes (the prepare stage's work, without writing shards).

    python benchmarks/validate_speed.py [--clips 1000] [--out results/benchmarks/validate_speed.json]

Writes default-size synthetic clips, then times ``validate_files`` (headers, every field but the pixels,
content hash) over them. Prints the figures and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from svip_core.config import validate_config
from svip_core.dataset.containers import split_address
from svip_core.dataset.manifest import list_clips, validate_files
from svip_core.synthetic.generate import write_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=1000)
    p.add_argument("--out", default="results/benchmarks/validate_speed.json")
    args = p.parse_args()
    s = validate_config({})["synthetic"]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_dataset(tmp, {"train": args.clips}, s["frames"], s["persons"], s["height"], s["width"],
                      s["categories"], s["seed"])
        generate = time.perf_counter() - start
        files = list_clips(tmp)
        size = sum(os.path.getsize(split_address(path)[0]) for _, path in files)
        start = time.perf_counter()
        manifest = validate_files(files, 2_000_000_000)
        seconds = time.perf_counter() - start
    result = {"clips": len(files), "bytes": size, "validate_seconds": round(seconds, 3),
              "clips_per_second": round(len(files) / seconds, 1), "generate_seconds": round(generate, 2),
              "accepted": int((manifest.verdict == "accepted").sum()),
              "clip_shape": [s["frames"], s["height"], s["width"], 3]}
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
