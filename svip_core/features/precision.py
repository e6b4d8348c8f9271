"""Numeric modes: the arithmetic a network runs in (``features.precision`` for the backbone, ``train.precision``
for the ranker, which evaluation and prediction then use too).

A mode is part of its stage's identity, and the mode, not the device, decides how the numbers are computed: a
store or model made on a GPU node and one made on a CPU node under the same hash used the same arithmetic, and
differ only by the kernels' rounding. Every mode runs on both:
- ``fp32``: float32 everywhere (the default; TF32 off, also for cuDNN's convolutions, which allow it by default);
- ``tf32``: float32 with TensorFloat-32 matrix products and convolutions on GPUs that have them (Ampere and newer);
  plain float32 on the CPU;
- ``bf16``: bfloat16 autocast (GPUs from Ampere on; CPUs, slowly where they lack bfloat16 instructions);
- ``fp16``: float16 autocast, for GPUs without bfloat16 (V100, T4); training scales the loss (``GradScaler``) so
  that small gradients do not vanish in float16.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device):
    """The context a forward pass runs in under ``precision`` on ``device``."""
    if precision in _AUTOCAST:
        return torch.autocast(device.type, dtype=_AUTOCAST[precision])
    return nullcontext()


def set_matmul_precision(precision: str) -> None:
    """TensorFloat-32 on (``tf32``) or off (every other mode) for this process's float32 matrix products and
    convolutions."""
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for ``fp16`` (a pass-through otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
