"""`svip predict`'s peak memory against the video's length: TUD-Campus (71 frames) and the same video looped
40 times (2,840 frames), with its ground-truth tracks (looped alike), each in a fresh process.

    python benchmarks/predict_memory.py [--checkpoint results/train/<hash>] [--loops 40]

The growth per added frame is compared with one frame at the model's frame size (what keeping the resized
frames cost before prediction streamed them). Writes results/benchmarks/predict_memory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mot15 import MOT15  # noqa: E402

from svip_core.predict.model_choice import newest_checkpoint  # noqa: E402
from svip_core.video.frames import VideoWriter, read_frames, video_info  # noqa: E402


def looped(folder: Path, loops: int) -> tuple[Path, Path]:
    """TUD-Campus played ``loops`` times, and its ground truth shifted onto every loop. The ids are kept: tracks
are dense (frames x people), so new people in every loop would measure that, not the frames' memory."""
    source = MOT15 / "TUD-Campus" / "TUD-Campus.mp4"
    info, frames = video_info(source), list(read_frames(source))
    video = folder / f"campus_x{loops}.mp4"
    writer = VideoWriter(video, info["fps"], info["width"], info["height"])
    for _ in range(loops):
        for frame in frames:
            writer.write(frame)
    writer.close()
    truth = pd.read_csv(MOT15 / "TUD-Campus" / "gt" / "gt.txt", header=None)
    copies = []
    for i in range(loops):
        copy = truth.copy()
        copy[0] += i * len(frames)        # the same people walk by again: their tracks go on (ids kept)
        copies.append(copy)
    tracks = folder / f"campus_x{loops}.txt"
    pd.concat(copies).to_csv(tracks, header=False, index=False)
    return video, tracks


def peak_rss_mb(command: list[str]) -> tuple[float, float]:
    """Peak resident memory (MB) and seconds of one command in a fresh process."""
    start = time.perf_counter()
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(job.pid, 0)
    if status:
        raise RuntimeError(f"{' '.join(command)} failed: {job.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--loops", type=int, default=40)
    p.add_argument("--out", default="results/benchmarks/predict_memory.json")
    args = p.parse_args()
    checkpoint = Path(args.checkpoint) if args.checkpoint else newest_checkpoint()
    h, w = json.loads((checkpoint / "model.json").read_text())["features"]["features"]["frame_size"]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for loops in (1, args.loops):
            video, tracks = looped(Path(tmp), loops)
            frames = video_info(video)["frames"]
            command = [sys.executable, "-m", "svip_core.cli", "predict", str(video), "--tracks", str(tracks),
                       "--checkpoint", str(checkpoint), "--out", str(Path(tmp) / f"out{loops}")]
            rss, seconds = peak_rss_mb(command)
            runs[loops] = {"frames": frames, "peak_rss_mb": round(rss, 1), "seconds": round(seconds, 1)}
            print(f"{frames:6d} frames: peak RSS {rss:8.1f} MB, {seconds:.1f} s")
    added = runs[args.loops]["frames"] - runs[1]["frames"]
    growth_kb = (runs[args.loops]["peak_rss_mb"] - runs[1]["peak_rss_mb"]) * 1024 / added
    frame_kb = 3 * h * w / 1024
    result = {"checkpoint": str(checkpoint), "frame_size": [h, w], "runs": runs,
              "growth_kb_per_added_frame": round(growth_kb, 2), "resized_frame_kb": round(frame_kb, 2),
              "growth_in_resized_frames": round(growth_kb / frame_kb, 3)}
    print(f"growth: {growth_kb:.2f} KB per added frame = {growth_kb / frame_kb:.3f} of one {h}x{w} frame")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
