"""Stage identities: the one place that decides where each stage's results live.

Every stage writes under ``results/<dir>/<hash>/``, the hash of the stage's identity (``stage_inputs``):

- the config keys it reads (``STAGE_KEYS``; some only in some configurations, see ``_reads``), and no others:
  run settings (``RUN_SETTINGS``: workers, batch sizes) change speed, not results, and are recorded with
  the results instead;
- the identities of the stages it consumes;
- the content of the user's data (prepare, and through it everything downstream), via a cache of file
  hashes keyed by path, size, mtime, inode and ctime, so planning reads only new or changed clips;
- the code it runs: a digest of the modules it imports, without docstrings and comments (``hashing``);
- external assets: the backbone's weights and preprocessing config, or the embedded backbone's recipe.

So an edit re-runs exactly the stages whose output it can change, and an old config's results stay on disk,
found again when the config goes back.
"""
from __future__ import annotations

import copy
import importlib.metadata
import os
from pathlib import Path

from svip_core.config import ABLATION_TRAIN_KEYS, BACKBONE_FILES, EMBEDDED, PROJECT_ROOT, SYNTHETIC, ConfigError, backbone_files, no_clips
from svip_core.dataset.content import data_content
from svip_core.dataset.shards import is_unlabelled_shard
from svip_core.hashing import ContentHashes, code_digest, digest, file_hashes, imported_modules

FROZEN_BACKBONE = "frozen_backbone"
LEARNING_CURVE = "full@"     # the variant name of the full model at a learning-curve size: full@<n>
STAGES = ("prepare", "extract", "train", "evaluate", "report")
# The extract stage's results are feature stores, so its folder is named for what it holds.
STAGE_DIRS = {"prepare": "prepare", "extract": "features", "train": "train", "evaluate": "evaluate",
              "report": "report"}

# Every leaf key of config.schema.yaml is declared here: read by stages (part of their identity) or a run
# setting. tests/test_reuse.py fails for a key declared nowhere.
_SYNTH = ("synthetic.clips.train", "synthetic.clips.val", "synthetic.clips.test", "synthetic.clips.unlabelled",
          "synthetic.frames", "synthetic.persons", "synthetic.height", "synthetic.width", "synthetic.categories",
          "synthetic.seed", "synthetic.scene")
_EMBEDDED = ("features.embedded.hidden_size", "features.embedded.num_layers", "features.embedded.num_heads",
             "features.embedded.patch_size", "features.embedded.seed")
_MODEL = ("model.fused_dim", "model.geometry_dim", "model.gat_hidden", "model.gat_layers", "model.gat_heads",
          "model.relation_features", "model.attention_flow",
          "model.d_model", "model.temporal_layers", "model.temporal_heads", "model.temporal_ffn",
          "model.time_encoding", "model.event_token", "model.dual_head", "model.pooling", "model.track_summary",
          "model.pair_summary", "model.looks_at", "model.neighbours", "model.relational_memory",
          "model.dropout")
_TRAIN = ("train.seeds", "train.nproc", "train.nodes", "train.epochs", "train.batch_size", "train.accumulation_steps",
          "train.lr", "train.weight_decay", "train.warmup_steps", "train.min_lr_ratio", "train.grad_clip",
          "train.patience", "train.min_epochs", "train.preference_weight", "train.pairwise_weight", "train.pairwise_margin", "train.facing_weight",
          "train.deterministic", "train.precision", "train.finetune_blocks", "train.backbone_lr_scale", "train.clips", "train.ema", "train.min_steps",
          "train.augment.shift", "train.augment.scale", "train.augment.jitter", "train.augment.mirror", "train.augment.drop_people",
          "train.augment.frame_window", "train.augment.drop_visual", "train.augment.drop_visual_clips",
          "train.self_training.weight", "train.self_training.threshold")
STAGE_KEYS = {
    # data.source is read as a location and as content (see prepare's identity), never as a string.
    "prepare": ("data.source", "data.num_shards", "data.max_array_bytes", "data.on_duplicate_id", *_SYNTH),
    "extract": ("features.backbone", *_EMBEDDED, "features.mode", "features.frame_size", "features.crop_size",
                "features.roi_samples", "features.roi_pooling", "features.num_frames", "features.precision", "data.max_persons",
                "train.finetune_blocks"),   # the stores then hold the tokens of the tuned blocks (token_blocks)
    # A run (model variant x seed) reads one seed of train.seeds and its variant's overrides from ablations.
    "train": (*_MODEL, *_TRAIN, "ablations", "learning_curve"),
    "evaluate": ("evaluate.split", "evaluate.ks"),
    "report": ("report.gallery_size",),
}
# How fast and with what resources, never what: recorded in each result's provenance, not hashed.
RUN_SETTINGS = {"extract": ("features.batch_clips", "features.workers"),
                "train": ("train.workers", "train.checkpoint_blocks", "train.checkpoint_every",
                          "train.max_restarts")}
STAGE_UPSTREAM = {"prepare": (), "extract": (), "train": ("dataset", "extract"), "evaluate": ("train",),
                  "report": ("evaluate", "prepare")}
# The code each stage runs: these modules and every svip_core module they import. Modules that only name,
# log or launch results are left out, so editing them re-runs nothing.
STAGE_CODE = {"prepare": ("svip_core.dataset.manifest",), "extract": ("svip_core.features.extract",),
              "train": ("svip_core.train.loop",), "evaluate": ("svip_core.evaluate.evaluation",),
              "report": ("svip_core.report.figures",)}
# The libraries whose arithmetic a stage's output holds: an upgrade that can change those numbers re-runs the
# stage. Libraries that only store, read or draw results (zarr, h5py, pandas, matplotlib) are left out, and so
# is numpy where it only moves arrays (prepare of a folder dataset; the synthetic generator's clips do depend on
# it: dataset_identity).
STAGE_LIBRARIES = {"prepare": (), "extract": ("torch", "transformers"), "train": ("torch", "torch_geometric"),
                   "evaluate": ("torch", "torch_geometric", "numpy"), "report": ()}
NOT_CODE = frozenset({"svip_core", "svip_core.hashing", "svip_core.config", "svip_core.stages", "svip_core.logs", "svip_core.cli",
                      "svip_core.devices", "svip_core.launch", "svip_core.interrupt"})


# ---- config ------------------------------------------------------------------------------------------------

def _get(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _nest(flat: dict) -> dict:
    out: dict = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def token_blocks(config: dict) -> int:
    """The k whose tokens the feature stores hold: the full model's train.finetune_blocks, also in a run of the
    frozen-backbone ablation (which reads the same stores' frozen features)."""
    return config["train"].get("token_blocks", config["train"]["finetune_blocks"])


def self_trains(config: dict) -> bool:
    """Whether training reads the unlabelled split (train.self_training on): its clips' stores are then among
    train's inputs and their content part of its identity; otherwise adding unlabelled clips retrains nothing."""
    return config["train"]["self_training"]["weight"] > 0


def trains_on_shard(config: dict, key: str) -> bool:
    """Whether training reads a shard's store: an unlabelled shard's only when it self-trains."""
    return self_trains(config) or not is_unlabelled_shard(key)


def _reads(config: dict, key: str, stage: str | None = None) -> bool:
    """Whether a declared key matters in this configuration (a key the chosen mode ignores is not read)."""
    if key == "train.finetune_blocks" and stage == "extract":
        return token_blocks(config) > 0         # frozen stores are the same as before the key existed
    if key == "train.clips":
        return config["train"]["clips"] > 0     # all of them: the same training as before the key existed
    if key.startswith("train.self_training."):
        # Off, or no unlabelled clips: no self-training. Those are the training clips after the first train.clips,
        # and a dataset's unlabelled split (which a synthetic benchmark has only with synthetic.clips.unlabelled).
        return self_trains(config) and (config["train"]["clips"] > 0 or config["data"]["source"] != SYNTHETIC
                                        or config["synthetic"]["clips"]["unlabelled"] > 0)
    if key == "synthetic.clips.unlabelled":   # none: the same dataset as before the key existed
        return config["data"]["source"] == SYNTHETIC and config["synthetic"]["clips"]["unlabelled"] > 0
    if key == "train.backbone_lr_scale":
        return config["train"]["finetune_blocks"] > 0
    if key.startswith("synthetic."):
        return config["data"]["source"] == SYNTHETIC
    if key.startswith("features.embedded."):
        return config["features"]["backbone"] == EMBEDDED
    if key == "features.crop_size":
        return config["features"]["mode"] == "crop"
    if key == "features.roi_samples":
        return config["features"]["mode"] == "roi"
    if key == "features.roi_pooling":         # the mean: the same stores as before the key existed
        return config["features"]["mode"] == "roi" and config["features"]["roi_pooling"] != "mean"
    if key in ("model.gat_hidden", "model.gat_heads", "model.relation_features", "model.attention_flow"):
        return config["model"]["gat_layers"] > 0
    if key == "model.pair_summary":
        return config["model"]["gat_layers"] > 0 and config["model"]["relation_features"]
    if key == "model.neighbours":             # 0, everyone: the same model as before the key existed
        return config["model"]["gat_layers"] > 0 and config["model"]["neighbours"] > 0
    if key == "model.relational_memory":      # off: the same model as before the key existed
        return config["model"]["gat_layers"] > 0 and config["model"]["relational_memory"]
    if key == "train.facing_weight":          # 0, or no facing directions: the same training as without it
        return config["train"]["facing_weight"] > 0 and _reads(config, "model.looks_at")
    if key == "model.looks_at":               # none: the same model as before the key existed
        return config["model"]["gat_layers"] > 0 and config["model"]["relation_features"] and config["model"]["looks_at"] > 0
    return True


def keys_read(config: dict, stage: str) -> list[str]:
    return [k for k in STAGE_KEYS[stage] if _reads(config, k, stage)]


def run_settings(config: dict, stage: str) -> dict:
    """The stage's run settings (not hashed), nested like the config."""
    return _nest({k: _get(config, k) for k in RUN_SETTINGS.get(stage, ())})


def runs(config: dict) -> dict[str, dict]:
    """Every model the workflow trains: the full model and each named ablation (in name order; with
    ``frozen_backbone`` when the full model fine-tunes the backbone and no ablation freezes it), once per seed.
    With ``learning_curve`` sizes, also the full model trained on the first n training clips, as variant
    "full@n". Returns {"<variant>/seed<s>": run config}, the full model's first seed first. A run config has the
    ablation's model overrides applied and ``train.seed`` in place of ``train.seeds``, so adding seeds or
    ablations leaves the hashes of existing runs unchanged."""
    out = {}
    ablations = dict(config.get("ablations", {}))
    # A model that fine-tunes the backbone is always trained beside the same model with it frozen.
    if config["train"]["finetune_blocks"] and {"finetune_blocks": 0} not in ablations.values():
        ablations.setdefault(FROZEN_BACKBONE, {"finetune_blocks": 0})
    for variant, overrides in {"full": {}, **{name: ablations[name] for name in sorted(ablations)}}.items():
        for seed in config["train"]["seeds"]:
            run = copy.deepcopy(config)
            run["train"]["token_blocks"] = token_blocks(config)
            run["model"].update({k: v for k, v in overrides.items() if k not in ABLATION_TRAIN_KEYS})
            run["train"].update({k: v for k, v in overrides.items() if k in ABLATION_TRAIN_KEYS})
            del run["train"]["seeds"]
            run["train"]["seed"] = seed
            run["ablations"] = {}
            run["learning_curve"] = []
            out[f"{variant}/seed{seed}"] = run
    # The learning curve: the full model on the first n training clips, beside it at the full size.
    for size in sorted(config.get("learning_curve", [])):
        for seed in config["train"]["seeds"]:
            run = copy.deepcopy(out[f"full/seed{seed}"])
            run["train"]["clips"] = size
            out[f"{LEARNING_CURVE}{size}/seed{seed}"] = run
    return out


def _is_run(config: dict) -> bool:
    return "seeds" not in config["train"]


def _stage_config(config: dict, stage: str) -> dict:
    flat = {}
    for key in keys_read(config, stage):
        if key == "train.seeds":
            flat["train.seed"] = config["train"]["seed"]
        elif key == "train.finetune_blocks" and stage == "extract":
            flat[key] = token_blocks(config)
        elif key not in ("ablations", "learning_curve") and not (stage == "prepare" and key == "data.source"):
            flat[key] = _get(config, key)   # a run's ablation is already applied to its model keys
    return _nest(flat)


# ---- external identities -----------------------------------------------------------------------------------

def stage_code(stage: str, config: dict | None = None) -> dict:
    roots = STAGE_CODE[stage]
    if stage == "prepare" and config is not None and config["data"]["source"] == SYNTHETIC:
        from svip_core.synthetic.generate import SCENE_MODULES

        # The scene family's module is imported by name, so it is named here: each family versions its clips.
        roots = roots + ("svip_core.synthetic.generate", SCENE_MODULES[config["synthetic"]["scene"]])
    script = Path("workflow_scripts") / f"{stage}.py"
    script = script if script.is_file() else PROJECT_ROOT / "workflow_scripts" / f"{stage}.py"
    if not script.is_file():
        return code_digest(roots, NOT_CODE)
    # What the script itself imports runs too (prepare's scanning of the dataset, extract's reading of shards);
    # the synthetic generator only where it makes the dataset.
    synthetic = stage == "prepare" and config is not None and config["data"]["source"] == SYNTHETIC
    roots += tuple(m for m in imported_modules(script) if synthetic or not m.startswith("svip_core.synthetic"))
    return code_digest(roots, NOT_CODE, (script,))


def _data_content(config: dict, memo: dict) -> dict:
    if "data" not in memo:
        source = config["data"]["source"]
        memo["data"] = data_content(source, max_array_bytes=config["data"]["max_array_bytes"])
        if not memo["data"]["count"]:
            raise ConfigError(f"data.source = {no_clips(source)}")
    return memo["data"]


def library_versions(names) -> dict[str, str]:
    """{library: release} without a build suffix (2.13.0 for 2.13.0+cpu or +cu128): which kernels a device runs
    is the precision mode's business (``features.precision``, ``train.precision``), not the identity's."""
    return {name: importlib.metadata.version(name).split("+")[0] for name in names}


def dataset_identity(config: dict, memo: dict | None = None, unlabelled: bool = True) -> dict:
    """What the clips are, wherever they lie: prepare's config, the clips' content and the prepare code.
    Train depends on this, so moving or renaming a dataset re-runs prepare only. ``unlabelled`` False: without
    the unlabelled split's clips (the same identity as before they were added)."""
    memo = {} if memo is None else memo
    key = "dataset" if unlabelled else "labelled dataset"
    if key not in memo:
        source = config["data"]["source"]
        content = ("synthetic" if source == SYNTHETIC
                   else _data_content(config, memo)["clips" if unlabelled else "labelled"])
        identity = {"config": _stage_config(config, "prepare"), "clips": content, "code": stage_code("prepare", config)}
        if source == SYNTHETIC:             # numpy's random streams may change between its releases
            identity["libraries"] = library_versions(("numpy",))
        memo[key] = identity if unlabelled else without_unlabelled(identity)
    return memo[key]


def without_unlabelled(identity: dict) -> dict:
    """A synthetic dataset's identity without its unlabelled clips' count (a folder dataset's leaves them out of
    its content digest instead: data_content's "labelled")."""
    identity = copy.deepcopy(identity)
    identity["config"].get("synthetic", {}).get("clips", {}).pop("unlabelled", None)
    return identity


def backbone_identity(features: dict, cache: ContentHashes | None = None) -> dict:
    """What the features depend on besides the code: the embedded recipe and the libraries that build it, or
    the content of every weight and config file of the model folder (preprocessor_config.json included). A hub
    id's weights not downloaded yet count by the sha256 the hub lists for them, the hash of the same content,
    so planning before the extract job's download and after it gives one identity."""
    source = features["backbone"]
    if source == EMBEDDED:
        return {"kind": "embedded", "recipe": features["embedded"]}   # built by the stage's libraries
    folder, listed = backbone_files(source)
    files = sorted(p for p in folder.rglob("*") if p.suffix in BACKBONE_FILES and p.is_file())
    hashes = file_hashes(files, cache or ContentHashes())
    local = {str(p.relative_to(folder)): hashes[str(p)] for p in files}
    return {"kind": "weights", "files": dict(sorted({**listed, **local}.items()))}


# ---- identities and hashes ---------------------------------------------------------------------------------

def stage_inputs(config: dict, stage: str, memo: dict | None = None) -> dict:
    """Everything a stage's hash covers (see the module docstring). Train and evaluate of a whole config mean
    those of its first run (the full model, first seed). ``memo`` shares the costly parts between calls on
    configs with the same data and features (one per Snakefile parse)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    memo = {} if memo is None else memo
    if stage in ("train", "evaluate") and not _is_run(config):
        config = next(iter(runs(config).values()))
    if ("libraries", stage) not in memo:
        memo["libraries", stage] = library_versions(STAGE_LIBRARIES[stage])
    resolved = {"stage": stage, "config": _stage_config(config, stage), "code": stage_code(stage, config),
                "libraries": memo["libraries", stage], "upstream": {}}
    for up in STAGE_UPSTREAM[stage]:
        resolved["upstream"][up] = (digest(dataset_identity(config, memo, unlabelled=self_trains(config)))
                                    if up == "dataset" else stage_hash(config, up, memo))
    if stage == "report":
        resolved["upstream"]["evaluate"] = [stage_hash(run, "evaluate", memo) for run in runs(config).values()]
    if stage == "prepare":
        source = config["data"]["source"]
        resolved["dataset"] = dataset_identity(config, memo)
        if source != SYNTHETIC:     # the manifest names the files, so where they are is part of prepare's output
            # abspath, not resolve: the content-hash cache is keyed by it (containers.scan_containers, clip_hashes)
            resolved["location"] = {"source": os.path.abspath(source), "files": _data_content(config, memo)["files"]}
    if stage == "extract" or (stage == "train" and config["train"]["finetune_blocks"]):
        # Tuned blocks start from the backbone's weights: a fine-tuning run depends on them directly.
        if "backbone" not in memo:
            memo["backbone"] = backbone_identity(config["features"])
        resolved["backbone"] = memo["backbone"]
    if stage == "extract":
        resolved["config"]["features"]["backbone"] = digest(memo["backbone"])
    return resolved


def stage_hash(config: dict, stage: str, memo: dict | None = None) -> str:
    memo = {} if memo is None else memo
    # Shared stages (prepare, extract) are memoised; a run's train and evaluate depend on the run.
    if stage in ("prepare", "extract"):
        key = ("hash", stage)
        if key not in memo:
            memo[key] = digest(stage_inputs(config, stage, memo))
        return memo[key]
    return digest(stage_inputs(config, stage, memo))


def stage_dir(config: dict, stage: str, results: str | os.PathLike = "results") -> Path:
    return Path(results) / STAGE_DIRS[stage] / stage_hash(config, stage)


def all_stage_hashes(config: dict, memo: dict | None = None) -> dict[str, str]:
    memo = {} if memo is None else memo
    return {s: stage_hash(config, s, memo) for s in STAGES}
