"""Extract-stage throughput and memory. Writes JSON and prints the ratios.

    python benchmarks/extract_throughput.py [--arch base|embedded] [--clips 8] [--out results/benchmarks/extract.json]

Measures, on the same synthetic clips (N=20 people):
  (a) bare backbone forward throughput (frames/s) at the batch size the pipeline uses, inputs already on device;
  (b) the whole extract pipeline (decode, resize, backbone, ROI pooling, geometry, Zarr writes), frames/s in
      steady state (the second half of the batches: model loading and worker start-up excluded; the total too);
  (c) `roi` vs `crop` feature modes on the same frames (persons/s);
  (d) peak RSS and peak GPU memory of one extract job at two shard sizes (each in its own process).
`--arch base` builds a randomly initialised DINOv2 with dinov2-base's shape (timing equals the real model's);
`--backbone PATH` uses a model folder instead.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import device_name, timed

from svip_core.dataset.containers import clip_digests
from svip_core.features.backbone import load_backbone, normalisation
from svip_core.features.extract import extract_shard, person_features
from svip_core.features.precision import PRECISIONS, autocast
from svip_core.synthetic.generate import write_dataset

ARCH = {"embedded": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
                     "patch_size": 8},
        "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                 "patch_size": 14}}


def build_backbone(arch: str, folder: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(image_size=224, **ARCH[arch])).save_pretrained(folder)
    return folder


def make_members(folder: Path, clips: int, args) -> list[dict]:
    """``clips`` clip files: up to 16 distinct ones, the rest copies (generating is slower than extracting)."""
    paths = write_dataset(folder, {"train": min(clips, 16)}, args.frames, 20, args.height, args.width, ["bench"], seed=1)
    for i in range(len(paths), clips):
        paths.append(folder / f"copy_{i:05d}.npz")
        shutil.copy(paths[i % 16], paths[-1])
    return [{"video_id": p.stem, "split": "train", "path": str(p), "content_hash": clip_digests(p)[0]} for p in paths]


def features_cfg(args, mode="roi") -> dict:
    return {"mode": mode, "frame_size": args.frame_size, "crop_size": args.crop_size, "roi_samples": 4,
            "num_frames": args.frames, "batch_clips": args.batch_clips, "workers": args.workers,
            "precision": args.precision}


def child_peak(args, backbone: Path, clips: int) -> dict:
    """Run one extract job in a fresh process and report its peak memory."""
    out = subprocess.run([sys.executable, __file__, "--child", str(clips), "--backbone", str(backbone),
                          "--frames", str(args.frames), "--height", str(args.height), "--width", str(args.width),
                          "--frame-size", *map(str, args.frame_size), "--batch-clips", str(args.batch_clips),
                          "--workers", str(args.workers), "--precision", args.precision], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_child(args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        members = make_members(Path(tmp) / "clips", args.child, args)
        start = time.perf_counter()
        extract_shard(members, Path(tmp) / "s.zarr", features_cfg(args), 20, args.backbone, {})
        seconds = time.perf_counter() - start
    print(json.dumps({"clips": args.child, "seconds": round(seconds, 3),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCH), default="base")
    p.add_argument("--backbone", default=None, help="a model folder instead of --arch")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--width", type=int, default=336)
    p.add_argument("--frame-size", type=int, nargs=2, default=[224, 392])
    p.add_argument("--crop-size", type=int, default=196)
    p.add_argument("--batch-clips", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", choices=PRECISIONS, default="bf16" if torch.cuda.is_available() else "fp32",
                   help="features.precision (default: bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--shard-sizes", type=int, nargs=2, default=[16, 64])
    p.add_argument("--out", default="results/benchmarks/extract_throughput.json")
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return run_child(args)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmp = Path(tempfile.mkdtemp())
    backbone_dir = Path(args.backbone) if args.backbone else build_backbone(args.arch, tmp / "backbone")
    members = make_members(tmp / "clips", args.clips, args)
    backbone = load_backbone(backbone_dir, device)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in normalisation(backbone_dir))
    batch_frames = args.batch_clips * args.frames
    H, W = args.frame_size
    frames = torch.randint(0, 256, (batch_frames, 3, H, W), dtype=torch.uint8, device=device)
    boxes = torch.rand(batch_frames, 20, 2, device=device).sort(-1).values
    boxes = torch.stack([boxes[..., 0], boxes[..., 0] * 0.5, boxes[..., 1], 0.5 + boxes[..., 1] * 0.5], -1)
    pixels = ((frames.float() / 255 - mean) / std)

    def bare():
        with torch.no_grad(), autocast(args.precision, device):
            backbone(pixel_values=pixels)

    bare_s = timed(bare, device, args.repeats, warmup=1)
    roi_s = timed(lambda: person_features(backbone, frames, boxes, "roi", 4, args.crop_size, mean, std, args.precision), device,
                  args.repeats, warmup=1)
    crop_s = timed(lambda: person_features(backbone, frames[: max(1, batch_frames // 8)], boxes[: max(1, batch_frames // 8)],
                                           "crop", 4, args.crop_size, mean, std, args.precision), device, 1, warmup=1) * 8   # 1/8 of the frames
    extract_shard(members[:1], tmp / "warm.zarr", features_cfg(args), 20, backbone_dir, {})    # warm-up
    stats = extract_shard(members, tmp / "bench.zarr", features_cfg(args), 20, backbone_dir, {})
    frames_total = args.clips * args.frames
    result = {
        "device": device_name(device), "torch": torch.__version__, "precision": args.precision, "arch": args.backbone or args.arch,
        "frame_size": args.frame_size, "crop_size": args.crop_size, "persons": 20, "batch_frames": batch_frames,
        "bare_backbone_frames_per_s": round(batch_frames / bare_s, 2),
        "roi_frames_per_s": round(batch_frames / roi_s, 2),
        "crop_frames_per_s": round(batch_frames / crop_s, 2),
        "roi_over_crop": round(crop_s / roi_s, 2),
        "pipeline_clips": args.clips, "pipeline_workers": args.workers,
        "pipeline_total_frames_per_s": round(frames_total / stats["seconds"], 2),
        "pipeline_frames_per_s": round(stats["steady_frames_per_s"], 2),
        "pipeline_over_bare": round(stats["steady_frames_per_s"] / (batch_frames / bare_s), 3),
        "peak_memory_by_shard_size": [child_peak(args, backbone_dir, n) for n in args.shard_sizes],
    }
    print(json.dumps(result, indent=1))
    print(f"roi is {result['roi_over_crop']}x faster than crop at N=20; pipeline runs at "
          f"{result['pipeline_over_bare']:.0%} of bare backbone throughput on {result['device']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
