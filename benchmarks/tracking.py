"""Detection + tracking against human-made ground truth: MOTChallenge 2015's PETS09-S2L1 (OpenCV's vtest.avi),
TUD-Campus and TUD-Stadtmitte, scored by py-motmetrics (a match needs IoU >= 0.5).

    python benchmarks/tracking.py [--sequences PETS09-S2L1 ...] [--setups ...] [--out results/benchmarks/tracking.json]

Setups: ``hog_iou`` is the former default of ``svip predict`` (OpenCV HOG on every 4th frame, greedy IoU
linking); ``ssdlite_deepsort_kN`` is today's (the SSDLite pedestrian detector on whole frame + 2x2 tiles, on
every N-th frame, DeepSORT with MobileNetV2 appearance). Frames/s counts detection and tracking, not video
decoding (reported apart). Writes MOTA, IDF1, ID switches, precision, recall and frames/s per sequence to JSON.
Run it on an otherwise idle machine: the figures are timings.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from svip_core.evaluate.mot import mot_metrics
from svip_core.video.detection import HogDetector, SsdLiteDetector
from svip_core.video.frames import read_frames
from svip_core.video.tracking import PeopleTracker, link_by_overlap
from svip_core.video.tracks import read_mot

# The sequences and their ground truth are test data: the tests' helper finds (and fetches) them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mot15 import SEQUENCES, sequence  # noqa: E402

SETUPS = ("hog_iou", "ssdlite_deepsort_k1", "ssdlite_deepsort_k2", "ssdlite_deepsort_k3", "ssdlite_deepsort_k5")


def run_setup(setup: str, frames: list) -> tuple:
    """Tracks of ``frames`` by ``setup`` and the seconds detection + tracking took."""
    start = time.perf_counter()
    if setup == "hog_iou":
        detector = HogDetector()
        detections = {t: detector(f)[0] for t, f in enumerate(frames) if t % 4 == 0}
        tracks = link_by_overlap(detections, len(frames))
    else:
        tracker = PeopleTracker(SsdLiteDetector(), detect_every=int(setup.rsplit("_k", 1)[1]))
        start = time.perf_counter()                   # model loading is a one-off, not a per-frame cost
        for frame in frames:
            tracker.step(frame)
        tracks = tracker.tracks()
    return tracks, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequences", nargs="+", default=list(SEQUENCES), choices=SEQUENCES)
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
    p.add_argument("--cache", default="tests/data", help="where vtest.avi is kept once fetched")
    p.add_argument("--out", default="results/benchmarks/tracking.json")
    args = p.parse_args()
    results = {"machine": {"cpus": __import__("os").cpu_count(), "platform": platform.platform()}, "min_iou": 0.5,
               "sequences": {}}
    for name in args.sequences:
        seq = sequence(name, args.cache)
        start = time.perf_counter()
        frames = list(read_frames(seq["video"]))
        decode = time.perf_counter() - start
        truth = read_mot(seq["ground_truth"], len(frames))
        rows = {}
        for setup in args.setups:
            tracks, seconds = run_setup(setup, frames)
            metrics = mot_metrics(tracks, truth)
            rows[setup] = {**{k: round(v, 4) for k, v in metrics.items()}, "tracks": int(len(tracks.ids)),
                           "seconds": round(seconds, 2), "frames_per_second": round(len(frames) / seconds, 2)}
            print(f"{name:15s} {setup:21s} MOTA {metrics['mota']:6.3f}  IDF1 {metrics['idf1']:.3f}  "
                  f"ID sw {metrics['id_switches']:4.0f}  P {metrics['precision']:.2f}  R {metrics['recall']:.2f}  "
                  f"{len(frames) / seconds:5.1f} frames/s", flush=True)
        results["sequences"][name] = {"frames": len(frames), "size": [seq["width"], seq["height"]],
                                      "decode_frames_per_second": round(len(frames) / decode, 1), "setups": rows}
    for setup in args.setups:
        mota = [r["setups"][setup]["mota"] for r in results["sequences"].values()]
        print(f"{setup:21s} mean MOTA {np.mean(mota):.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"JSON written to {args.out}")


if __name__ == "__main__":
    main()
