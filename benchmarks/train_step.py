"""Train-step cost of the ranker: time, FLOPs and how close to the device's matmul rate. Writes JSON.

    python benchmarks/train_step.py [--shapes reference small] [--out results/benchmarks/train_step.json]

For each shape it times forward+backward+optimizer step (AMP bf16 on CUDA, fp32 on CPU), counts the FLOPs of one
step with torch.utils.flop_counter, measures the device's dense matmul rate, and reports achieved/peak. In the
same run it times the GATv2 part both as SVIP does it (one batched graph) and as the reference did (a Python
loop over every frame), on the same weights.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from timing import device_name, timed
from torch.utils.flop_counter import FlopCounterMode
from torch_geometric.utils import dense_to_sparse

from svip_core.config import SCHEMA_PATH
from svip_core.model.graph import FrameGAT
from svip_core.model.loss import ranking_loss
from svip_core.model.ranker import build_ranker

SHAPES = {"reference": (8, 120, 20), "small": (8, 16, 6)}
VISUAL_DIM, GEOMETRY_DIM = 768, 12


def matmul_rate(device) -> float:
    """Dense matmul FLOP/s in the dtype training uses."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, device, 10 if device.type == "cuda" else 3)


def batch(B, T, N, device):
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(B, T, N, generator=g) > 0.2
    valid[:, :, 0] = True
    return (torch.randn(B, T, N, VISUAL_DIM, generator=g).to(device), torch.randn(B, T, N, GEOMETRY_DIM, generator=g).to(device),
            valid.to(device), torch.zeros(B, dtype=torch.long, device=device))


def reference_gat_loop(gat, x, valid):
    """The reference's way: one small graph per frame, in a Python loop (seed-facts section 3)."""
    B, T, N, _ = x.shape
    h_all = gat.in_proj(x)
    out = torch.zeros_like(h_all)
    for b in range(B):
        for t in range(T):
            m = valid[b, t]
            h = h_all[b, t]
            if int(m.sum()) <= 1:
                out[b, t] = h
                continue
            edge_index, _ = dense_to_sparse((m[:, None] & m[None, :]).float())
            for conv, norm, scale in zip(gat.convs, gat.norms, gat.scales):
                h = (h + scale * norm(torch.nn.functional.elu(conv(h, edge_index)))) * m[:, None]
            out[b, t] = h
    return out


def bench_shape(name, model_cfg, device, repeats):
    B, T, N = SHAPES[name]
    model = build_ranker(model_cfg, VISUAL_DIM, GEOMETRY_DIM).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    visual, geometry, valid, target = batch(B, T, N, device)
    amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with torch.autocast(**amp):
            logits = model(visual, geometry, valid)["logits"].float()
        ranking_loss(logits, target, valid.any(1), 0.3, 0.0, 0.2)["total"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    seconds = timed(step, device, repeats)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = None

    # The GAT alone, batched (present people only) vs the reference's per-frame loop, on the same weights; the
    # reference had no relation features, so neither side computes them here.
    gat = FrameGAT(model_cfg["fused_dim"], model_cfg["gat_hidden"], model_cfg["gat_layers"], model_cfg["gat_heads"],
                   0.0, relation_features=False, attention_flow=False).to(device).eval()
    fused = torch.randn(B, T, N, model_cfg["fused_dim"], device=device)
    with torch.no_grad(), torch.autocast(**amp):
        batched_s = timed(lambda: gat(fused, geometry, valid), device, repeats)
        loop_s = timed(lambda: reference_gat_loop(gat, fused, valid), device, 1, warmup=1)
    return {"shape": {"B": B, "T": T, "N": N}, "params": sum(p.numel() for p in model.parameters()),
            "step_seconds": round(seconds, 5), "step_flops": flops, "achieved_tflops": round(flops / seconds / 1e12, 3),
            "peak_gpu_mb": round(peak, 1) if peak else None,
            "gat_batched_seconds": round(batched_s, 5), "gat_per_frame_loop_seconds": round(loop_s, 5),
            "gat_speedup": round(loop_s / batched_s, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["reference", "small"], choices=sorted(SHAPES))
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default="results/benchmarks/train_step.json")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    # The reference's dimensions are the schema's defaults (read directly: GPU boxes may lack snakemake).
    schema = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["model"]["properties"]
    model_cfg = {key: spec["default"] for key, spec in schema.items()}
    rate = matmul_rate(device)
    result = {"device": device_name(device),
              "torch": torch.__version__, "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
              "matmul_tflops": round(rate / 1e12, 3), "reference_seconds_per_step": 43.0, "shapes": {}}
    for name in args.shapes:
        repeats = args.repeats or (20 if device.type == "cuda" else 2)
        r = bench_shape(name, model_cfg, device, repeats)
        r["fraction_of_matmul_rate"] = round(r["step_flops"] / r["step_seconds"] / rate, 3)
        if name == "reference":
            r["speedup_vs_reference_43s"] = round(43.0 / r["step_seconds"], 1)
        result["shapes"][name] = r
        print(name, json.dumps(r))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
