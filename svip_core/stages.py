"""Config loading and stage hashes: the one place that decides where each stage's results live.

Every stage writes under ``results/<dir>/<hash>/``. A stage's hash covers exactly the config keys it reads
(``STAGE_KEYS``) plus the hashes of the stages it consumes (``STAGE_UPSTREAM``), so an edit re-runs only the
stages downstream of it, and an old config's results stay on disk, found again when the config goes back.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = PROJECT_ROOT / "config.schema.yaml"

STAGES = ("prepare", "extract", "train", "evaluate", "report")
# The extract stage's results are feature stores, so its folder is named for what it holds.
STAGE_DIRS = {"prepare": "prepare", "extract": "features", "train": "train", "evaluate": "evaluate",
              "report": "report"}
STAGE_KEYS = {
    "prepare": ("data.source", "data.num_shards", "data.max_array_bytes", "data.on_duplicate_id", "synthetic"),
    "extract": ("features", "data.max_persons"),
    "train": ("model", "train"),
    "evaluate": ("evaluate",),
    "report": ("report",),
}
# The extract stage does not consume the prepare hash: a shard's store is addressed by the feature hash and
# the shard's own content key, so re-preparing unchanged videos leaves their stores valid.
STAGE_UPSTREAM = {"prepare": (), "extract": (), "train": ("prepare", "extract"), "evaluate": ("train",),
                  "report": ("evaluate", "prepare")}
HASH_LEN = 12


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> dict:
    """Read a YAML config, merge overrides, validate it against the schema and fill in defaults."""
    if path is None:  # the working directory's config, as Snakemake would read it, else the project's
        path = Path("config.yaml") if Path("config.yaml").exists() else PROJECT_ROOT / "config.yaml"
    path = Path(path)
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    if overrides:
        config = _merge(config, overrides)
    return validate_config(config)


def validate_config(config: dict) -> dict:
    """Validate ``config`` in place with Snakemake's validator (which also sets schema defaults)."""
    from snakemake.utils import validate

    validate(config, str(SCHEMA_PATH), set_default=True)
    return config


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def _get(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def digest(obj) -> str:
    """Stable short hash of a JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:HASH_LEN]


def runs(config: dict) -> dict[str, dict]:
    """Every model the workflow trains: the full model and each named ablation, once per seed in train.seeds.
    Returns {"<variant>/seed<s>": run config}, the full model's first seed first. A run config has the
    ablation's model overrides applied and ``train.seed`` in place of ``train.seeds``, so adding seeds or
    ablations leaves the hashes of existing runs unchanged."""
    out = {}
    for variant, overrides in {"full": {}, **config.get("ablations", {})}.items():
        unknown = set(overrides) - set(config["model"])
        if unknown:
            raise ValueError(f"ablations.{variant}: unknown model keys {sorted(unknown)}; use keys of the model section")
        for seed in config["train"]["seeds"]:
            run = copy.deepcopy(config)
            run["model"].update(overrides)
            del run["train"]["seeds"]
            run["train"]["seed"] = seed
            out[f"{variant}/seed{seed}"] = run
    return out


def _is_run(config: dict) -> bool:
    return "seeds" not in config["train"]


def stage_inputs(config: dict, stage: str, _memo: dict | None = None) -> dict:
    """Everything a stage's hash covers: its config keys, its upstream hashes, and external identities.
    Train and evaluate of a whole config mean those of its first run (the full model, first seed)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    if stage in ("train", "evaluate") and not _is_run(config):
        config = next(iter(runs(config).values()))
        _memo = None
    keys = STAGE_KEYS[stage]
    if stage == "prepare" and config["data"]["source"] != "synthetic":
        keys = tuple(k for k in keys if k != "synthetic")
    resolved = {"stage": stage, "config": {k: _get(config, k) for k in keys},
                "upstream": {u: stage_hash(config, u, _memo) for u in STAGE_UPSTREAM[stage]}}
    if stage == "report":
        resolved["upstream"]["evaluate"] = [stage_hash(run, "evaluate") for run in runs(config).values()]
    if stage == "prepare":
        if config["data"]["source"] == "synthetic":
            from svip_core.io.synth import GENERATOR_VERSION

            resolved["generator_version"] = GENERATOR_VERSION
        else:
            # The folder is named by its absolute path; its content is tracked per clip by the shard keys.
            resolved["config"]["data.source"] = str(Path(config["data"]["source"]).resolve())
    if stage == "extract":
        from svip_core.features.backbone import backbone_identity

        # The weights, not the path string, identify the backbone (the extract job records the path).
        resolved["backbone_identity"] = backbone_identity(config["features"])
        resolved["config"]["features"] = {**config["features"], "backbone": resolved["backbone_identity"]}
    return resolved


def stage_hash(config: dict, stage: str, _memo: dict | None = None) -> str:
    memo = {} if _memo is None else _memo
    if stage not in memo:
        memo[stage] = digest(stage_inputs(config, stage, memo))
    return memo[stage]


def stage_dir(config: dict, stage: str, results: str | os.PathLike = "results") -> Path:
    return Path(results) / STAGE_DIRS[stage] / stage_hash(config, stage)


def all_stage_hashes(config: dict) -> dict[str, str]:
    memo: dict = {}
    return {s: stage_hash(config, s, memo) for s in STAGES}
