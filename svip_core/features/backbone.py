"""The DINOv2 backbone, always loaded through ``transformers.AutoModel.from_pretrained``.

``features.backbone`` is "embedded" (a tiny random DINOv2 built from a ``Dinov2Config`` with a fixed seed and
saved as a local model folder), a hub id such as ``facebook/dinov2-base``, or a local folder. The identity
that enters the extract stage's hash (``stages.backbone_identity``) is the content of the weights and the
preprocessing config, not a path string.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from svip_core.atomic import atomic_path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(RuntimeError):
    pass


def embedded_config(embedded: dict):
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=embedded["hidden_size"], num_hidden_layers=embedded["num_layers"],
                        num_attention_heads=embedded["num_heads"], intermediate_size=4 * embedded["hidden_size"],
                        patch_size=embedded["patch_size"], image_size=224)


def build_embedded(embedded: dict, out_dir) -> Path:
    """Save the tiny seeded DINOv2 as a model folder that ``from_pretrained`` loads like any other."""
    import torch
    from transformers import Dinov2Model

    torch.manual_seed(embedded["seed"])
    model = Dinov2Model(embedded_config(embedded))
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    return out_dir


def load_backbone(source, device="cpu"):
    """Load a DINOv2 from a local folder or a hub id: frozen, eval mode. Fails fast without network."""
    from transformers import AutoModel

    # A hub id with no network must fail in seconds with a useful message, not retry for minutes.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        model = AutoModel.from_pretrained(str(source))
    except Exception as e:  # missing folder, unknown hub id, offline hub, corrupt weights: one clear line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BackboneError(
            f"cannot load backbone {source!r} ({first}). Without network a hub id only works if it is in the "
            f"local Hugging Face cache; otherwise download it elsewhere (e.g. `huggingface-cli download "
            f"facebook/dinov2-base --local-dir /models/dinov2-base`) and set features.backbone: /models/dinov2-base"
        ) from None
    model.requires_grad_(False)
    return model.eval().to(device)


def leading_tokens(config) -> int:
    """How many tokens come before the patch grid in the backbone's hidden states: the CLS token, then the
    register tokens of DINOv2 with registers and DINOv3 (``num_register_tokens``; none in plain DINOv2)."""
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)


def normalisation(source) -> tuple[tuple, tuple]:
    """Mean and std from the folder's preprocessor_config.json when present, else ImageNet's (DINOv2's)."""
    cfg = Path(source) / "preprocessor_config.json"
    if cfg.is_file():
        pre = json.loads(cfg.read_text())
        return tuple(pre.get("image_mean", IMAGENET_MEAN)), tuple(pre.get("image_std", IMAGENET_STD))
    return IMAGENET_MEAN, IMAGENET_STD
