"""The DINOv2 backbone, always loaded through ``transformers.AutoModel.from_pretrained``.

``features.backbone`` is "embedded" (a tiny random DINOv2 built from a ``Dinov2Config`` with a fixed seed and
saved as a local model folder), a hub id such as ``facebook/dinov2-base``, or a local folder. The identity
that enters the extract stage's hash (``stages.backbone_identity``) is the content of the weights and the
preprocessing config, not a path string. Planning never downloads a hub id's weights: the extract job does,
through ``fetch_backbone``.
"""
from __future__ import annotations

import json
from pathlib import Path

from svip_core.atomic import atomic_path
from svip_core.config import cached_snapshot, hub_offline, hub_patterns, is_hub_id

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


def fetch_backbone(source) -> Path:
    """The folder a backbone loads from: a local folder as it is, or a hub id's snapshot of the backbone files
    (``config.hub_patterns``), downloaded now when the cache lacks them: planning only lists a hub id, so the
    weights arrive with the first job that needs them."""
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser()
    if not is_hub_id(str(source)):
        raise BackboneError(_cannot_load(source, "no such folder"))
    cached = cached_snapshot(str(source))
    if cached is not None:
        return cached
    # A hub id with no network must fail in seconds with a useful message, not retry for minutes.
    offline = hub_offline()
    if offline:
        raise BackboneError(_cannot_load(source, offline))
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(source), allow_patterns=hub_patterns()))
    except Exception as e:  # unknown hub id, a download cut off: one clear line
        raise BackboneError(_cannot_load(source, _first_line(e))) from None


def load_backbone(source, device="cpu"):
    """Load a DINOv2 from a local folder or a hub id (``fetch_backbone``): frozen, eval mode. Fails fast without
    network."""
    from transformers import AutoModel
    from transformers.utils import logging as transformers_logging

    folder = fetch_backbone(source)
    # Its per-tensor "Loading weights" bar would cut into `svip predict`'s table and the jobs' plain log lines,
    # for a load of seconds.
    transformers_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(str(folder))
    except Exception as e:  # not a model folder, corrupt weights: one clear line
        raise BackboneError(_cannot_load(source, _first_line(e))) from None
    model.requires_grad_(False)
    return model.eval().to(device)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _cannot_load(source, why: str) -> str:
    return (f"cannot load backbone {str(source)!r} ({why}). Without network a hub id only works if it is in the "
            f"local Hugging Face cache; otherwise download it elsewhere (e.g. `hf download facebook/dinov2-base "
            f"--local-dir /models/dinov2-base`) and set features.backbone: /models/dinov2-base")


def leading_tokens(config) -> int:
    """How many tokens come before the patch grid in the backbone's hidden states: the CLS token, then the
    register tokens of DINOv2 with registers and DINOv3 (``num_register_tokens``; none in plain DINOv2)."""
    return 1 + int(getattr(config, "num_register_tokens", 0) or 0)


def normalisation(source) -> tuple[tuple, tuple]:
    """Mean and std from the backbone's preprocessor_config.json when present, else ImageNet's (DINOv2's)."""
    cfg = fetch_backbone(source) / "preprocessor_config.json"
    if cfg.is_file():
        pre = json.loads(cfg.read_text())
        return tuple(pre.get("image_mean", IMAGENET_MEAN)), tuple(pre.get("image_std", IMAGENET_STD))
    return IMAGENET_MEAN, IMAGENET_STD
