"""The DINOv2 backbone, always loaded through ``transformers.AutoModel.from_pretrained``.

``features.backbone`` is "embedded" (a tiny random DINOv2 built from a ``Dinov2Config`` with a fixed seed and
saved as a local model folder), a hub id such as ``facebook/dinov2-base``, or a local folder. The identity
that enters the extract stage's hash is a hash of the weights, not of a path string.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from svip_core.stages import digest

EMBEDDED = "embedded"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


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
    tmp = out_dir.with_name(out_dir.name + ".partial")
    model.save_pretrained(tmp, safe_serialization=True)
    tmp.replace(out_dir)
    return out_dir


@functools.lru_cache(maxsize=16)
def _folder_weights_hash(folder: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix in WEIGHT_SUFFIXES or path.name == "config.json":
            h.update(path.name.encode())
            with open(path, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


def folder_weights_hash(folder) -> str:
    """Hash of a model folder's weight files and config (memoised on their sizes and mtimes)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _folder_weights_hash(str(folder), stamp)


def _hub_snapshot(repo_id: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not in the local cache: the extract job will say how to fix it
        return None


def backbone_identity(features: dict) -> str:
    """What the features depend on: the embedded recipe, or the content of the weights."""
    source = features["backbone"]
    if source == EMBEDDED:
        return "embedded:" + digest(features["embedded"])
    folder = source if Path(source).is_dir() else _hub_snapshot(source)
    if folder is None:
        return "hub-unresolved:" + source
    return "weights:" + folder_weights_hash(folder)


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


def normalisation(source) -> tuple[tuple, tuple]:
    """Mean and std from the folder's preprocessor_config.json when present, else ImageNet's (DINOv2's)."""
    cfg = Path(source) / "preprocessor_config.json"
    if cfg.is_file():
        pre = json.loads(cfg.read_text())
        return tuple(pre.get("image_mean", IMAGENET_MEAN)), tuple(pre.get("image_std", IMAGENET_STD))
    return IMAGENET_MEAN, IMAGENET_STD
