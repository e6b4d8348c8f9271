"""Reading what extraction uses of each clip, from .npz files vs an HDF5 file (issue 14's target: HDF5 >= 3x).

    python benchmarks/read_speed.py [--clips 200] [--frames 120] [--size 192 336] [--num-frames 16]
                                    [--out results/benchmarks/read_speed.json]

Writes a few synthetic clips as .npz (numpy.savez_compressed, as the synthetic benchmark and `svip import` write
them; rendering 120 frames takes seconds a clip, so --distinct clips are copied up to --clips), converts them with `svip convert`'s code to the HDF5 layout (frames chunked one per chunk, gzip), then
reads every clip as extraction does (``inspect_clip`` with the sampled frames: ``features.num_frames`` of them
chosen by ``frame_indices``) from each layout. One untimed pass warms the page cache for both, so the figures
compare decoding, not the disk. Bytes read are the bytes the reader asked of the file system (``rchar`` of
/proc/self/io). Prints the figures and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from svip_core.dataset.clip import inspect_clip
from svip_core.dataset.containers import list_clips
from svip_core.dataset.convert import convert_dataset
from svip_core.features.extract import frame_indices
from svip_core.synthetic.generate import write_dataset

TARGET_SPEEDUP = 3.0


def bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def read_all(addresses: list[str], num_frames: int) -> dict:
    """Read every clip's sampled frames and fields; clips/s and bytes read."""
    def sampled(clip):
        return frame_indices(clip.num_frames, num_frames, clip.frame_mask, clip.valid, clip.target_index).clip(0)

    before, start = bytes_read(), time.perf_counter()
    pixels = 0
    for address in addresses:
        pixels += inspect_clip(address, load_frames=sampled).frames.size
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "clips_per_second": round(len(addresses) / seconds, 1),
            "bytes_read": bytes_read() - before, "pixels": pixels}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=200)
    p.add_argument("--frames", type=int, default=120, help="frames per clip (T)")
    p.add_argument("--size", type=int, nargs=2, default=[192, 336], metavar=("H", "W"))
    p.add_argument("--num-frames", type=int, default=16, help="frames extraction samples per clip")
    p.add_argument("--distinct", type=int, default=4, help="clips rendered; the others are copies of them")
    p.add_argument("--out", default="results/benchmarks/read_speed.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        npz, h5 = Path(tmp) / "npz", Path(tmp) / "h5"
        start = time.perf_counter()
        rendered = write_dataset(Path(tmp) / "rendered", {"train": args.distinct}, args.frames, 6, *args.size,
                                 ["meeting", "lecture", "street"], 0)
        (npz / "train").mkdir(parents=True)
        for i in range(args.clips):
            shutil.copy(rendered[i % len(rendered)], npz / "train" / f"clip_{i:05d}.npz")
        generate = time.perf_counter() - start
        start = time.perf_counter()
        convert_dataset(npz, h5, "h5")
        convert = time.perf_counter() - start
        layouts = {"npz": [a for _, a in list_clips(npz)], "h5": [a for _, a in list_clips(h5)]}
        sizes = {"npz": sum(f.stat().st_size for f in npz.rglob("*.npz")), "h5": (h5 / "train.h5").stat().st_size}
        for addresses in layouts.values():
            read_all(addresses, args.num_frames)                    # warm the page cache
        figures = {name: {**read_all(addresses, args.num_frames), "bytes_on_disk": sizes[name]}
                   for name, addresses in layouts.items()}
    assert figures["npz"]["pixels"] == figures["h5"]["pixels"]
    speedup = figures["h5"]["clips_per_second"] / figures["npz"]["clips_per_second"]
    result = {"clips": args.clips, "clip_shape": [args.frames, *args.size, 3], "num_frames": args.num_frames,
              "npz": figures["npz"], "h5": figures["h5"], "speedup": round(speedup, 2),
              "bytes_read_ratio": round(figures["npz"]["bytes_read"] / max(1, figures["h5"]["bytes_read"]), 2),
              "target_speedup": TARGET_SPEEDUP, "met": bool(speedup >= TARGET_SPEEDUP),
              "generate_seconds": round(generate, 1), "convert_seconds": round(convert, 1)}
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
