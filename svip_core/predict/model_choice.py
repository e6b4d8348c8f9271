"""Which trained model ``svip predict`` uses, the line that names it, and the backbone its features need."""
from __future__ import annotations

import json
from pathlib import Path

from svip_core.evaluate.metrics import format_interval


def newest_checkpoint(results="results") -> Path:
    """The newest trained full model under results/train/ (ablations only when there is nothing else)."""
    models = sorted(Path(results).glob("train/*/model.safetensors"), key=lambda p: p.stat().st_mtime)
    if not models:
        raise FileNotFoundError(f"no trained model under {results}/train/. Fix: run the workflow (`make demo`) "
                                "or pass --checkpoint DIR")

    def is_full(model: Path) -> bool:
        config = model.parent / "config.json"
        return config.exists() and json.loads(config.read_text()).get("run", "full/").startswith("full/")

    full = [m for m in models if is_full(m)]
    return (full or models)[-1].parent


def describe_model(checkpoint) -> str:
    """One line naming the model that ranks: its folder, its run (variant/seed) and, when the workflow evaluated
    it (a results/evaluate/*/ folder whose upstream is this train hash), its top-1 with the 95% interval."""
    checkpoint = Path(checkpoint)
    config = checkpoint / "config.json"
    run = json.loads(config.read_text()).get("run") if config.is_file() else None
    parts = [f"run {run}"] if run else []
    for evaluated in sorted(checkpoint.parent.parent.glob("evaluate/*/config.json")):
        if json.loads(evaluated.read_text()).get("upstream", {}).get("train") != checkpoint.name:
            continue
        metrics = evaluated.parent / "metrics.json"
        if metrics.is_file():
            m = json.loads(metrics.read_text())
            parts.append(f"{m['split']} top-1 {format_interval(m['model']['overall']['top1'])} on {m['clips']} clips")
            break
    return f"model: {checkpoint}" + (f" ({', '.join(parts)})" if parts else "")


def model_caveat(checkpoint) -> str:
    """A line saying when the model cannot rank real people meaningfully: its features come from the embedded
    random backbone, or its training data were only synthetic scenes (the demo's model is both); '' when
    neither is known to be so."""
    checkpoint = Path(checkpoint)
    from svip_core.hashing import digest
    from svip_core.stages import without_unlabelled

    meta = json.loads((checkpoint / "model.json").read_text())
    random_backbone = meta["features"].get("identity", {}).get("backbone", {}).get("kind") == "embedded"
    config = checkpoint / "config.json"
    dataset = json.loads(config.read_text()).get("upstream", {}).get("dataset") if config.is_file() else None
    scenes = None
    for prepared in checkpoint.parent.parent.glob("prepare/*/config.json"):
        prepare = json.loads(prepared.read_text())
        identity = prepare.get("dataset")
        # A run that does not self-train names its dataset without the unlabelled clips (stages.dataset_identity).
        if identity and identity.get("clips") == "synthetic" and dataset in (digest(identity),
                                                                             digest(without_unlabelled(identity))):
            scenes = prepare["config"]["synthetic"]["scene"]
    if random_backbone and scenes:
        what = f"the demo's kind of model: trained on synthetic {scenes} scenes, with a random backbone"
    elif random_backbone:
        what = "its features come from the embedded backbone, which is random"
    elif scenes:
        what = f"trained on synthetic {scenes} scenes only"
    else:
        return ""
    return (f"note: {what}; its ranking of real people means little (train on labelled footage with a real DINOv2, "
            f"features.backbone)")


def checked_backbone(feats: dict, override=None) -> str:
    """The folder of the backbone the model's features were made with: the recorded one, or ``override`` (the
    same weights moved elsewhere). Its weights and configs must match the identity recorded at extraction."""
    source = str(override or feats["backbone"])
    recorded = feats.get("identity", {}).get("backbone", {})
    if recorded.get("kind") != "weights":      # the embedded backbone lives in the results it was built for
        return source
    from svip_core.stages import backbone_identity

    if not Path(source).is_dir() or backbone_identity({"backbone": source}) != recorded:
        raise RuntimeError(f"the backbone this model's features were made with is not at {source} (moved or "
                           f"changed). Fix: pass --backbone FOLDER holding those same weights")
    return source
