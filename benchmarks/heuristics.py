"""Top-1 of the box heuristics and of the best single-track cue on the synthetic benchmark (the config's
`synthetic` section), on its test split.

    python benchmarks/heuristics.py [--configfile benchmarks/relational_benchmark.yaml] [--out results/benchmarks/heuristics.json]

Generates the clips' boxes (the same clips as `svip synth`, without drawing their pixels), validates them by the
clip contract in memory, computes geometry exactly as the extract stage does, and scores
every heuristic with the evaluate stage's tie-aware metrics. ``single_track_probe`` is a small network trained
on the train split that scores each person from a summary of its own track alone (every geometry field's
mean, spread and range, when it appears and leaves): whatever a per-person cue in the boxes can give.
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from svip_core.config import load_config
from svip_core.dataset.clip import clip_from_arrays
from svip_core.evaluate.baselines import clip_geometry, heuristic_scores, single_track_probe, top1
from svip_core.synthetic.generate import generate_clips


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", default=None)
    p.add_argument("--out", default="results/benchmarks/heuristics.json")
    args = p.parse_args()
    s = load_config(args.configfile)["synthetic"]
    start = time.perf_counter()
    clips: dict[str, list] = {split: [] for split in s["clips"]}
    for split, arrays in generate_clips(s["clips"], s["frames"], s["persons"], s["height"], s["width"],
                                        s["categories"], s["seed"], s["scene"], pixels=False):
        clips[split].append(clip_from_arrays(f"{split}/{arrays['video_id']}", arrays))
    generated = time.perf_counter() - start
    split = "test" if s["clips"]["test"] else "val"
    test, train = clip_geometry(clips[split]), clip_geometry(clips["train"])
    scores = heuristic_scores(test[0], test[1])
    scores["single_track_probe"] = single_track_probe(train, test[:2])
    result = {"clips": sum(map(len, clips.values())), "scene": s["scene"], "split": split, "generate_seconds": round(generated, 2),
              "top1": {name: top1(v, test[2], test[1]) for name, v in scores.items()}}
    for name, value in result["top1"].items():
        print(f"{name:24s} top-1 {value:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{result['clips']} clips; JSON written to {args.out}")


if __name__ == "__main__":
    main()
