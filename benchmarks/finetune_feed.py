"""Two ways to feed the tuned last k blocks of the backbone (issue 27), measured at a shape. Writes JSON.

    python benchmarks/finetune_feed.py [--shapes demo reference] [--k 1 2] [--out results/benchmarks/finetune_feed.json]

stored tokens: extract keeps what enters block L-k (fp16) and a train step runs only the k tuned blocks, the layer
    norm and the pooling, forward and backward;
online frames: extract keeps the sampled frames (uint8) and a train step runs the whole backbone, the frozen trunk
    without gradients and the tuned blocks with them.

Per clip it reports the bytes each way stores (raw, and as a Zarr chunk compressed with zstd: tokens barely
shrink; the frames here are random pixels, which do not shrink at all, where real video frames would), and the time of one clip's forward+backward through the backbone part of a step (the ranker's own share
is the same either way; benchmarks/train_step.py measures it). On CUDA it runs under bf16 autocast and reports
peak memory, with and without activation checkpointing of the tuned blocks. Weights are random: a backbone is
built from its config (no download), which is all that timing and storage depend on.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import zarr
from timing import device_name, timed

from svip_core.features.backbone import IMAGENET_MEAN, IMAGENET_STD
from svip_core.features.extract import person_features_and_tokens
from svip_core.features.roi_pooling import crop_boxes
from svip_core.features.split_backbone import TunedHead

# name: (DINOv2 config, mode, frames sampled, people, frame (H, W) in roi mode or crop side in crop mode)
SHAPES = {
    # config.yaml's demo: the embedded backbone, roi mode
    "demo": ({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
              "patch_size": 8}, "roi", 16, 8, (96, 160)),
    # the reference: DINOv2-base, 120 frames sampled to 16, 20 people, 192-pixel crops
    "reference": ({}, "crop", 16, 20, 192),
    # the same clips in roi mode at a frame size of 448x784 (32x56 patches of 14)
    "reference_roi": ({}, "roi", 16, 20, (448, 784)),
}


def build(config: dict):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    return Dinov2Model(Dinov2Config(image_size=224, **config)).eval().requires_grad_(False)


def clip_inputs(mode: str, T: int, N: int, size, device):
    """One clip's frames (T, 3, H, W) uint8 and boxes (T, N, 4); in crop mode the frames are 4x the crop."""
    H, W = size if mode == "roi" else (4 * size, 4 * size)
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (T, 3, H, W), generator=g, dtype=torch.uint8).to(device)
    corner = torch.rand(T, N, 2, generator=g) * 0.6
    boxes = torch.cat([corner, corner + 0.1 + torch.rand(T, N, 2, generator=g) * 0.3], -1).to(device)
    return frames, boxes


@torch.no_grad()
def trunk_only(backbone, pixels: torch.Tensor, boxes: torch.Tensor, mode: str, crop_size, k: int) -> torch.Tensor:
    """The online way's frozen part: patch embedding and blocks 0 .. L-k-1 only (the stored way's extract pass
    runs them all once, for the frozen features too)."""
    hidden = backbone.embeddings(pixels if mode == "roi" else crop_boxes(pixels, boxes, crop_size).flatten(0, 1))
    for block in backbone.encoder.layer[: backbone.config.num_hidden_layers - k]:
        hidden = block(hidden)
    return hidden


def stored_bytes(array: np.ndarray) -> tuple[int, int]:
    """(raw bytes, bytes as one zstd-compressed Zarr chunk)."""
    with tempfile.TemporaryDirectory() as tmp:
        z = zarr.create_array(tmp, shape=array.shape, chunks=array.shape, dtype=array.dtype,
                              compressors=zarr.codecs.ZstdCodec(level=3))
        z[...] = array
        on_disk = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file() and p.name != "zarr.json")
    return array.nbytes, on_disk


def measure(name: str, k: int, device, repeats: int, timing: bool = True) -> dict:
    config, mode, T, N, size = SHAPES[name]
    backbone = build(config).to(device)
    patch = backbone.config.patch_size
    frames, boxes = clip_inputs(mode, T, N, size, device)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    grid = (frames.shape[-2] // patch, frames.shape[-1] // patch)
    head = TunedHead(backbone, k, mode, roi_samples=4, grid=grid).to(device).train()
    crop = size if mode == "crop" else None
    use_bf16 = device.type == "cuda"
    precision = "bf16" if use_bf16 else "fp32"
    _, tokens = person_features_and_tokens(backbone, frames, boxes, mode, 4, crop, mean, std, precision, k)
    frames_uint8 = frames.cpu().numpy()
    tokens_fp16 = tokens.to(torch.float16).cpu().numpy()
    probe = torch.randn(T, N, backbone.config.hidden_size, device=device)

    def step(online: bool):
        with torch.autocast(device.type, torch.bfloat16, enabled=use_bf16):
            x = trunk_only(backbone, (frames.float() / 255 - mean) / std, boxes, mode, crop, k) if online else tokens
            (head(x, boxes) * probe).sum().backward()

    out = {"shape": name, "mode": mode, "k": k, "layers": backbone.config.num_hidden_layers,
           "hidden_size": backbone.config.hidden_size, "tokens_per_input": int(tokens.shape[1]),
           "inputs_per_clip": int(tokens.shape[0])}
    out["stored_tokens_bytes"], out["stored_tokens_zstd_bytes"] = stored_bytes(tokens_fp16)
    out["online_frames_bytes"], out["online_frames_zstd_bytes"] = stored_bytes(frames_uint8)
    for checkpointing in ((False, True) if device.type == "cuda" else (False,)) if timing else ():
        head.checkpointing = checkpointing
        for online in (False, True):
            key = ("online_frames" if online else "stored_tokens") + ("_checkpointed" if checkpointing else "")
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            out[f"{key}_step_seconds"] = timed(lambda: step(online), device, repeats, warmup=1)
            if device.type == "cuda":
                out[f"{key}_peak_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--k", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-timing", action="store_true", help="bytes only (the reference shapes take minutes per step "
                   "on a CPU)")
    p.add_argument("--out", default="results/benchmarks/finetune_feed.json")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name in args.shapes:
        for k in args.k:
            rows.append(measure(name, k, device, args.repeats, timing=not args.no_timing))
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": device_name(device), "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
