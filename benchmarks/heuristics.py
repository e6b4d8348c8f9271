"""Top-1 of the box heuristics on the synthetic benchmark (the config's `synthetic` section).

    python benchmarks/heuristics.py [--configfile config.yaml] [--out results/benchmarks/heuristics.json]

Generates the clips in a temporary folder, computes geometry exactly as the extract stage does, and scores
every heuristic with the evaluate stage's tie-aware metrics. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from svip_core.evaluate.baselines import heuristic_top1_on_clips
from svip_core.io.synth import write_dataset
from svip_core.stages import load_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", default=None)
    p.add_argument("--out", default="results/benchmarks/heuristics.json")
    args = p.parse_args()
    s = load_config(args.configfile)["synthetic"]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = write_dataset(tmp, s["clips"], s["frames"], s["persons"], s["height"], s["width"], s["categories"],
                              s["seed"], s["scene"])
        generated = time.perf_counter() - start
        top1 = heuristic_top1_on_clips(paths)
    result = {"clips": len(paths), "generate_seconds": round(generated, 2), "top1": top1}
    for name, top1 in result["top1"].items():
        print(f"{name:16s} top-1 {top1:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{len(paths)} clips; JSON written to {args.out}")


if __name__ == "__main__":
    main()
