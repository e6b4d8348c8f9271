"""The workflow config: loading, defaults, and the checks that stop a bad config before any job starts.

A config problem is one line naming the key, its value and the fix (``KEY = VALUE: problem. Fix: ...``), so a
typo never costs a traceback or a dump of the schema. Three layers, cheapest first:

- the schema (``config.schema.yaml``): unknown keys (with the closest known key), types, ranges, choices;
- values that only make sense together: widths their heads must divide, ablations that differ from the full
  model and from each other, distinct seeds, a data folder (``stages`` says when it holds no clips: it lists
  them anyway);
- assets (``asset_problems``): the backbone must be a model folder, a cached hub id or one the hub lists now
  (offline is detected in about a second, never waited out), and the frames must tile into its patches.
  Checking a hub id fetches its listing and small config files, never its weights (the extract job's download).
"""
from __future__ import annotations

import datetime
import difflib
import functools
import json
import math
import os
import socket
import threading
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = PROJECT_ROOT / "config.schema.yaml"
SYNTHETIC = "synthetic"
EMBEDDED = "embedded"
WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth")
BACKBONE_FILES = (*WEIGHT_FILES, ".json")
# How long the hub may take to accept a connection before we call the machine offline.
HUB_PROBE_SECONDS = 0.8


class ConfigError(ValueError):
    """The config cannot be run: ``problems`` holds one line per problem, each naming key, value and fix."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def load_config(base: str | os.PathLike | None = None, configfiles=(), assets: bool = True) -> dict:
    """The config Snakemake would run: ``base`` (default: the working directory's config.yaml, as the
    Snakefile's ``configfile:`` reads it), then each of ``configfiles`` layered over it with Snakemake's own
    ``update_config`` (as ``snakemake --configfile``), checked with defaults filled in (``validate_config``).
    Without either, the project's config.yaml."""
    from snakemake.utils import update_config

    configfiles = [configfiles] if isinstance(configfiles, (str, os.PathLike)) else list(configfiles)
    if base is None and Path("config.yaml").exists():
        base = Path("config.yaml")
    elif base is None and not configfiles:
        base = PROJECT_ROOT / "config.yaml"
    config: dict = {}
    for path in ([base] if base is not None else []) + configfiles:
        try:
            with open(path) as f:
                layer = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e}). "
                              f"Fix: correct the YAML syntax there") from None
        if not isinstance(layer, dict):
            raise ConfigError(f"{path}: a {type(layer).__name__}, not a mapping of sections. Fix: write it as "
                              f"`section:` lines with `key: value` lines indented below (see config.yaml)")
        update_config(config, layer)
    return validate_config(config, assets)


def validate_config(config: dict, assets: bool = True) -> dict:
    """Check ``config`` and fill in the schema's defaults, in place. Raises ConfigError with every problem found
    (schema first: the value checks need a well-formed config). ``assets``: also check the backbone
    (``asset_problems``), which asks the hub about a hub id that is not cached (its listing and configs, not
    its weights). The Snakefile calls this too, so `svip` and the workflow resolve a config the same way."""
    from snakemake.utils import validate

    problems = schema_problems(config)
    if problems:
        raise ConfigError(problems)
    validate(config, str(SCHEMA_PATH), set_default=True)
    if config["ablations"] == "none":      # the override files' way to say "no ablations" (see the schema)
        config["ablations"] = {}
    problems = value_problems(config)
    if assets and not problems:
        problems = asset_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def schema_keys(schema: dict | None = None, prefix: str = "") -> list[str]:
    """Every leaf key of the config schema, dotted (``ablations`` counts as one key)."""
    if schema is None:
        schema = _schema()
    keys = []
    for name, sub in schema.get("properties", {}).items():
        dotted = prefix + name
        keys += schema_keys(sub, dotted + ".") if sub.get("properties") else [dotted]
    return keys


# ---- the schema --------------------------------------------------------------------------------------------

def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def schema_problems(config) -> list[str]:
    """One line per schema violation, in key order; an unknown key gets the closest known one."""
    if not isinstance(config, dict):
        return [f"config = {_show(config)}: not a mapping. Fix: write the config as `section: {{key: value}}`"]
    keys = _key_problems(config)
    if keys:        # the validator (and anything sorting keys) needs string keys
        return keys
    schema = _schema()
    ablations = config.get("ablations")
    problems, seen = [], set()
    for e in sorted(_validator(schema).iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        path = tuple(e.absolute_path)
        if path in seen or (path == ("ablations",) and isinstance(ablations, dict)):
            continue        # one line per key; a mapping of ablations is checked entry by entry below
        seen.add(path)
        problems += _error_lines(e)
    if isinstance(ablations, dict):
        problems += _ablation_problems(ablations, schema["properties"]["model"])
    return list(dict.fromkeys(problems))


def _validator(schema: dict):
    """The schema's validator, stricter than JSON Schema on numbers: an integer is an int (8.0 would hash apart
    from 8 and break the code that counts with it), a number is finite."""
    from jsonschema import Draft202012Validator, validators

    checker = Draft202012Validator.TYPE_CHECKER.redefine_many({
        "integer": lambda _, v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda _, v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)})
    return validators.extend(Draft202012Validator, type_checker=checker)(schema)


def _key_problems(node, path: str = "") -> list[str]:
    """Keys YAML did not read as strings (off, no, yes, on are booleans to it; 1 is an integer)."""
    problems = []
    for key, value in node.items() if isinstance(node, dict) else ():
        if not isinstance(key, str):
            why = " (unquoted off, no, yes and on are booleans to YAML)" if isinstance(key, bool) else ""
            problems.append(f"{path}{_key(key)}: the key is read as {type(key).__name__} {_show(key)}, not a name{why}. "
                            f"Fix: quote it in the YAML")
        else:
            problems += _key_problems(value, f"{path}{_key(key)}.")
    return problems


# The one train key an ablation may set, and only to 0: the frozen-backbone ablation of a fine-tuned model (the
# stores hold the tokens for the full model's train.finetune_blocks, and the frozen features, nothing else).
ABLATION_TRAIN_KEYS = ("finetune_blocks",)


def _ablation_problems(ablations: dict, model_schema: dict) -> list[str]:
    """An ablation overrides model keys, so each override is checked as that model key would be; it may also
    freeze the backbone (``finetune_blocks: 0``)."""
    known = model_schema["properties"]
    problems = []
    for name in sorted(ablations):
        overrides, where = ablations[name], f"ablations.{_key(name)}"
        if not isinstance(overrides, dict):
            problems.append(f"{where} = {_show(overrides)}: not a mapping of model overrides. Fix: give "
                            f"{{model_key: value, ...}}, such as {{gat_layers: 0}}")
            continue
        if name == "full" or "/" in name or "@" in name:
            problems.append(f"{where}: {'the full model is named full' if name == 'full' else 'a name with / or @'} "
                            f"(run names are variant/seed, and full@n the learning curve's). Fix: rename the ablation")
        for key, value in overrides.items():
            dotted = f"{where}.{_key(key)}"
            if key in ABLATION_TRAIN_KEYS:
                if value != 0 or isinstance(value, bool):
                    problems.append(f"{dotted} = {_show(value)}: an ablation can only freeze the backbone (the stores "
                                    f"hold the tokens of train.finetune_blocks, no others). Fix: set it to 0")
                continue
            if key not in known:
                problems.append(f"{dotted} = {_show(value)}: unknown model key. Fix: "
                                + _suggest(key, known, f"{where}.", "an ablation overrides model keys"))
                continue
            for e in list(_validator(known[key]).iter_errors(value))[:1]:
                problems += _error_lines(e, dotted)
    return problems


def _error_lines(error, key: str | None = None) -> list[str]:
    key = key or _dotted(error.absolute_path)
    schema, value = error.schema, error.instance
    if error.validator == "additionalProperties" and isinstance(value, dict):
        known = schema.get("properties", {})
        prefix = key + "." if key else ""
        return [f"{prefix}{_key(extra)} = {_show(value[extra])}: unknown key. Fix: " + _suggest(extra, known, prefix)
                for extra in sorted(set(value) - set(known))]
    if error.validator == "enum":
        close = difflib.get_close_matches(str(value), [str(v) for v in schema["enum"]], n=1, cutoff=0.5)
        fix = f"did you mean {close[0]}?" if close else f"give {_describe(schema)}"
        return [f"{key} = {_show(value)}: not {_describe(schema)}. Fix: {fix}"]
    what = {"type": f"not {_describe({'type': schema.get('type')})}",
            "minItems": f"needs at least {_items(schema.get('minItems'))}",
            "maxItems": f"takes at most {_items(schema.get('maxItems'))}",
            "minLength": "is empty",
            "oneOf": f"not {_describe(schema)}"}.get(error.validator, error.message.replace(_show(value), "").strip())
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[error.validator]
        what = f"must be {sign} {error.validator_value}"
    fix = f"give {_describe(schema)}{_default(schema)}"
    if error.validator == "type" and schema.get("type") == "string" and value is not None and not isinstance(value, str):
        fix = f"quote it: \"{value}\""
    elif error.validator == "type" and schema.get("type") == "number" and isinstance(value, str) and _is_float(value):
        fix = f"write it with a dot and a signed exponent, such as {_show(float(value))} (YAML reads {value} as text)"
    return [f"{key} = {_show(value)}: {what}. Fix: {fix}"]


def _is_float(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _describe(schema: dict) -> str:
    """What a valid value of ``schema`` is, in words ("an integer >= 1", "one of roi, crop")."""
    if "const" in schema:
        return json.dumps(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    if "oneOf" in schema:
        return " or ".join(_describe(s) for s in schema["oneOf"])
    kind = schema.get("type")
    if kind in ("integer", "number"):
        bounds = [f"{sign} {schema[b]}" for b, sign in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                        ("maximum", "<="), ("exclusiveMaximum", "<")) if b in schema]
        return ("an integer" if kind == "integer" else "a number") + (" " + " and ".join(bounds) if bounds else "")
    if kind == "array":
        lo, hi = schema.get("minItems"), schema.get("maxItems")
        count = f"{lo} " if lo is not None and lo == hi else f"at least {lo} " if lo else ""
        item = _describe(schema.get("items", {}))
        for one, many in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings")):
            item = item.replace(one, many, 1) if item.startswith(one) else item
        return f"a list of {count}{item}" if item else "a list"
    if kind == "string" and schema.get("minLength"):
        return "a non-empty string"
    return {"boolean": "true or false", "string": "a string", "object": "a mapping"}.get(kind, "")


def _items(count: int) -> str:
    return f"{count} item" + ("" if count == 1 else "s")


def _default(schema: dict) -> str:
    return f" (default {_show(schema['default'])})" if "default" in schema and schema["default"] != {} else ""


# What other tools call a key, by meaning where spelling is no help (learning_rate is not close to lr).
SYNONYMS = {
    "lr": ("learning_rate", "learningrate", "base_lr", "lr_rate", "init_lr"),
    "epochs": ("num_epochs", "n_epochs", "max_epochs", "epoch", "num_train_epochs"),
    "batch_size": ("batch", "bs", "batchsize", "train_batch_size", "per_device_train_batch_size", "mini_batch"),
    "weight_decay": ("wd", "l2", "decay"),
    "seeds": ("seed", "random_seed", "random_seeds"),
    "workers": ("num_workers", "n_workers", "dataloader_workers", "loader_workers"),
    "nproc": ("gpus", "num_gpus", "n_gpus", "devices", "world_size", "nproc_per_node", "gpus_per_node", "processes"),
    "nodes": ("num_nodes", "n_nodes", "nnodes"),
    "warmup_steps": ("warmup", "warmup_iters", "num_warmup_steps"),
    "grad_clip": ("clip_grad", "max_grad_norm", "gradient_clip", "clip_norm", "gradient_clip_val"),
    "accumulation_steps": ("grad_accum", "gradient_accumulation_steps", "accumulate_grad_batches", "accum_steps"),
    "precision": ("amp", "mixed_precision", "dtype", "fp16", "bf16", "half"),
    "patience": ("early_stopping", "early_stop", "early_stopping_patience"),
    "d_model": ("hidden_dim", "hidden_size", "dim", "d_hidden", "width", "embed_dim"),
    "dropout": ("dropout_rate", "drop_rate", "p_dropout", "drop"),
    "frame_size": ("image_size", "img_size", "resolution", "input_size", "frame_shape"),
    "backbone": ("model_name", "backbone_name", "pretrained", "encoder", "vision_model"),
    "source": ("path", "dir", "data_dir", "root", "dataset", "data_path", "folder", "data_root"),
    "max_persons": ("max_people", "num_persons", "max_person", "people"),
    "num_frames": ("frames", "clip_len", "clip_length", "num_frame", "sequence_length", "seq_len"),
    "num_shards": ("shards", "n_shards"),
    "ks": ("k", "topk", "top_k", "cmc_ks"),
    "gallery_size": ("gallery", "examples"),
}
_MEANING = {alias: key for key, aliases in SYNONYMS.items() for alias in aliases}


def _suggest(key: str, known, prefix: str, why: str = "") -> str:
    meant = _MEANING.get(str(key).lower().replace("-", "_"))
    if meant in known:
        return f"did you mean {prefix}{meant}?"
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    if close:
        return f"did you mean {prefix}{close[0]}?"
    return (f"{why}; " if why else "") + f"remove it or use one of {', '.join(sorted(known))}"


def _dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{_key(part)}" if out else _key(part))
    return out


def _key(key) -> str:
    """A key as written in a problem line: plain when it is a plain name, else quoted (never a line break)."""
    text = str(key)
    return text if text.replace("_", "").replace("-", "").isalnum() else json.dumps(text)


def _show(value) -> str:
    """A value as YAML would read it back, on one line: floats keep a dot (YAML reads 5e-05 as text)."""
    if isinstance(value, float) and math.isfinite(value):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent if exponent[0] in '+-' else '+' + exponent}"
    elif isinstance(value, (datetime.date, datetime.datetime)):
        text = f"{value} (a date to YAML)"
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


DATASET_LAYOUT = "train/ val/ [test/] [unlabelled/] folders of .npz clips, or train.h5 val.h5 [test.h5] [unlabelled.h5]"


def missing_dataset(source) -> str:
    """What `svip` and the workflow say of a dataset folder that is not there."""
    return f"{source}: folder not found. Fix: give a dataset folder ({DATASET_LAYOUT})"


def no_clips(source) -> str:
    """What `svip` and the workflow say of a dataset folder without clips."""
    return (f"{source}: no clips found. Fix: put clips in {source}/train/*.npz, {source}/val/*.npz ... or "
            f"{source}/train.h5 ... (`svip validate {source}` checks them)")



# ---- values that depend on each other ----------------------------------------------------------------------

def value_problems(config: dict) -> list[str]:
    """Problems the schema cannot see (``config`` has its defaults): each model variant's widths must split
    into its heads, each ablation must be a model of its own, seeds must differ, a data folder must exist."""
    problems = []
    source = config["data"]["source"]
    if source != SYNTHETIC and not os.path.isdir(source):
        # In full: a path shortened in the middle would hide the very part that is wrong.
        problems.append(f"data.source = {missing_dataset(json.dumps(source))} or \"synthetic\"")
    seeds = config["train"]["seeds"]
    if len(set(seeds)) != len(seeds):
        problems.append(f"train.seeds = {_show(seeds)}: a seed is listed twice. Fix: list each seed once")
    embedded = config["features"]["embedded"]
    if config["features"]["backbone"] == EMBEDDED and embedded["hidden_size"] % embedded["num_heads"]:
        problems.append(f"features.embedded.hidden_size = {embedded['hidden_size']}: not a multiple of "
                        f"features.embedded.num_heads ({embedded['num_heads']}). Fix: "
                        f"{_multiples(embedded['hidden_size'], embedded['num_heads'])}")
    for key in ("drop_visual", "drop_visual_clips"):
        if config["train"]["finetune_blocks"] and config["train"]["augment"][key] > 0:
            problems.append(f"train.augment.{key} = {config['train']['augment'][key]}: with "
                            f"train.finetune_blocks = {config['train']['finetune_blocks']} the visual features are made "
                            "in the model from stored tokens, and none would be dropped. Fix: set one of them to 0")
    if config["model"].get("looks_at", 0) and config["train"]["augment"]["mirror"] > 0:
        problems.append(f"train.augment.mirror = {config['train']['augment']['mirror']}: a mirrored clip keeps the "
                        f"unmirrored visual features, so the facing directions (model.looks_at = "
                        f"{config['model']['looks_at']}) would read a face turned the other way. Fix: set one of them to 0")
    ablations = config["ablations"]
    problems += _width_problems(config["model"])
    # A variant is its model and whether it tunes the backbone.
    variants = {"full": {**config["model"], "finetune_blocks": config["train"]["finetune_blocks"]}}
    for name in sorted(ablations):
        model = {**variants["full"], **ablations[name]}
        problems += _width_problems(model, f"ablations.{_key(name)}.", ablations[name], config["model"])
        same = next((other for other, m in variants.items() if m == model), None)
        if same is not None:    # the same model trains under one hash: it would appear under one name only
            fix = ("give it a model value the full model does not have, remove it, or (from an override file) set "
                   "ablations: none" if same == "full" else "keep one of the two")
            what = "the full model" if same == "full" else f"ablations.{_key(same)}"
            problems.append(f"ablations.{_key(name)} = {_show(ablations[name])}: the same model as {what} (both would "
                            f"train under one name). Fix: {fix}")
        variants[name] = model
    return problems


def _bad_splits(model: dict) -> list[tuple[str, str]]:
    """(width, heads) pairs the model uses where the heads do not split the width."""
    temporal = bool(model["temporal_layers"] or model["event_token"] or model["pooling"] == "attention")
    used = [("d_model", "temporal_heads", temporal), ("gat_hidden", "gat_heads", model["gat_layers"] > 0)]
    return [(width, heads) for width, heads, uses in used if uses and model[width] % model[heads]]


def _width_problems(model: dict, where: str = "model.", overrides: dict | None = None,
                    full: dict | None = None) -> list[str]:
    """Each width the model uses must split into its heads. In an ablation (``overrides`` of ``full``) the line
    names the key the ablation sets; a split already wrong in the full model is said once, there."""
    overrides = overrides or {}
    problems = []
    for width, heads in _bad_splits(model):
        if full is not None and not {width, heads} & set(overrides) and (width, heads) in _bad_splits(full):
            continue
        w, h = model[width], model[heads]
        width_key = f"{where}{width}" if width in overrides else f"model.{width}"
        heads_key = f"{where}{heads}" if heads in overrides else f"model.{heads}"
        if heads in overrides and width not in overrides:
            near = sorted((d for d in range(1, w + 1) if w % d == 0), key=lambda d: (abs(d - h), d))[:3]
            problems.append(f"{heads_key} = {h}: does not divide {width_key} ({w}). Fix: use "
                            f"{', '.join(map(str, sorted(near)))}")
        else:
            problems.append(f"{width_key} = {w}: not a multiple of {heads_key} ({h}). Fix: {_multiples(w, h)}")
    return problems


def _multiples(value: int, step: int) -> str:
    below, above = value // step * step, (value // step + 1) * step
    return f"use {below} or {above}" if below else f"use {above}"


# ---- assets ------------------------------------------------------------------------------------------------

def asset_problems(config: dict) -> list[str]:
    """The backbone can be loaded, and the frames (roi mode) or crops (crop mode) tile into its patches."""
    features = config["features"]
    try:
        folder = backbone_folder(features["backbone"])
    except ConfigError as e:
        return e.problems
    if folder is None:
        patch = features["embedded"]["patch_size"]
    else:
        try:
            patch = json.loads((folder / "config.json").read_text())["patch_size"]
            if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
                raise ValueError(f"patch_size is {_show(patch)}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            return [f"features.backbone = {_show(features['backbone'])}: {_show(str(folder / 'config.json'))} has no "
                    f"usable patch_size ({type(e).__name__}: {e}). Fix: give a DINOv2 folder saved with save_pretrained"]
    layers = features["embedded"]["num_layers"] if folder is None else \
        json.loads((folder / "config.json").read_text()).get("num_hidden_layers")
    k = config["train"]["finetune_blocks"]
    if isinstance(layers, int) and k > layers:
        return [f"train.finetune_blocks = {k}: the backbone has {layers} blocks. Fix: set it between 0 and {layers}"]
    if features["mode"] == "roi":
        bad = [side for side in features["frame_size"] if side % patch]
        if bad:
            fixed = [max(patch, round(side / patch) * patch) for side in features["frame_size"]]
            return [f"features.frame_size = {_show(features['frame_size'])}: {', '.join(map(str, bad))} not a multiple "
                    f"of the backbone's patch size {patch}. Fix: use {_show(fixed)}"]
    elif features["crop_size"] % patch:
        return [f"features.crop_size = {features['crop_size']}: not a multiple of the backbone's patch size {patch}. "
                f"Fix: {_multiples(features['crop_size'], patch)}"]
    return []


class BackboneFiles(NamedTuple):
    folder: Path                # the model folder, or a hub id's snapshot folder in the Hugging Face cache
    listed: dict[str, str]      # a hub id's weights not downloaded yet: {path in the repo: sha256 the hub lists}


def backbone_folder(source: str) -> Path | None:
    """The local folder a backbone's configs are read from (None: embedded, which the workflow builds)."""
    files = backbone_files(source)
    return None if files is None else files.folder


def backbone_files(source: str) -> BackboneFiles | None:
    """Where a backbone's files are, for planning (None: embedded): a model folder, or a hub id's snapshot, which
    may hold only the small files until the extract job downloads the weights (``hub_snapshot``)."""
    if source == EMBEDDED:
        return None
    folder = _model_folder(source)
    return BackboneFiles(folder, {}) if folder is not None else hub_snapshot(source)


def backbone_source(source: str) -> str:
    """What a job loads the (non-embedded) backbone from: a model folder's absolute path, or the hub id itself,
    whose weights the job downloads if planning found them not cached (``features.backbone.fetch_backbone``)."""
    folder = _model_folder(source)
    return str(folder) if folder is not None else source


def _model_folder(source: str) -> Path | None:
    """``source`` as a local model folder, None for what can only be a hub id ("namespace/name")."""
    if Path(source).expanduser().is_dir() and source.strip():
        folder = Path(source).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise ConfigError(f"features.backbone = {_show(source)}: no config.json in that folder. Fix: give a "
                              f"model folder saved with save_pretrained")
        return folder
    if not is_hub_id(source):
        raise ConfigError(f"features.backbone = {_show(source)}: folder not found. Fix: give an existing model "
                          f"folder (saved with save_pretrained), a hub id such as facebook/dinov2-base, or embedded")
    return None


def is_hub_id(source: str) -> bool:
    """Whether ``source`` has a hub id's shape ("namespace/name"), not a path's."""
    return not source.startswith(("/", ".", "~")) and source.count("/") == 1


def hub_patterns() -> list[str]:
    """The files of a hub repo that make a backbone, as ``allow_patterns``: what planning identifies is what
    the extract job downloads."""
    return [f"*{suffix}" for suffix in BACKBONE_FILES]


def cached_snapshot(repo_id: str) -> Path | None:
    """A hub id's snapshot in the local Hugging Face cache, if it holds the backbone's files (the client checks
    that against the listing it kept when a download was cut short; a snapshot without any weights, as a
    config-only download leaves, is no backbone either)."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=hub_patterns()))
    except Exception:
        return None
    return folder if any(p.suffix in WEIGHT_FILES for p in folder.rglob("*")) else None


def hub_offline() -> str | None:
    """Why the hub cannot be asked now (None: it can), found within HUB_PROBE_SECONDS instead of through the
    client's retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if not _reachable(constants.ENDPOINT):
        return f"{constants.ENDPOINT} cannot be reached (offline)"
    return None


def hub_snapshot(repo_id: str) -> BackboneFiles:
    """A hub id's backbone files, for planning: the cached snapshot when the weights are there, else the hub's
    listing. Planning downloads no weights (gigabytes, and the extract job's business): it fetches the small
    files (configs, read by the checks and hashed here) and takes each weight's sha256 from the listing, which
    for an LFS file is the sha256 of its content, so the identity is the same before and after the download.
    Offline (HF_HUB_OFFLINE, or the hub not answering within HUB_PROBE_SECONDS) fails at once instead of
    through the client's retries."""
    cached = cached_snapshot(repo_id)
    if cached is not None:
        return BackboneFiles(cached, {})
    offline = hub_offline()
    if offline:
        raise ConfigError(_not_cached(repo_id, f"and {offline}"))
    return _listed_snapshot(repo_id)


def _not_cached(repo_id: str, why: str) -> str:
    return (f"features.backbone = {_show(repo_id)}: no such folder, and as a hub id not in the local Hugging Face "
            f"cache, {why}. Fix: give the model's folder, or download it where there is network (`hf download "
            f"{repo_id} --local-dir /models/{repo_id.split('/')[-1]}`) and set features.backbone to that folder")


@functools.lru_cache(maxsize=None)
def _listed_snapshot(repo_id: str) -> BackboneFiles:
    """Once per process: planning asks for the backbone several times (checks, identity, the job's source)."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    from huggingface_hub.utils import filter_repo_objects

    try:
        info = HfApi().model_info(repo_id, files_metadata=True)
        files = list(filter_repo_objects(info.siblings or [], allow_patterns=hub_patterns(), key=lambda s: s.rfilename))
        # The hub gives no sha256 for a file outside LFS (configs: kilobytes), and config.json is read at once.
        for s in files:
            if s.lfs is None or s.rfilename == "config.json":
                hf_hub_download(repo_id, s.rfilename, revision=info.sha)
    except (RepositoryNotFoundError, GatedRepoError):
        raise ConfigError(f"features.backbone = {_show(repo_id)}: no such folder, and the hub has no model {repo_id} "
                          f"(or it is private or gated and no token is set). Fix: correct the id (such as "
                          f"facebook/dinov2-base), log in with `hf auth login`, or give a model folder") from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(_not_cached(repo_id, f"and the hub could not list it ({first})")) from None
    return BackboneFiles(_snapshot_folder(repo_id, info.sha), {s.rfilename: s.lfs.sha256 for s in files if s.lfs})


def _snapshot_folder(repo_id: str, commit: str) -> Path:
    """Where the client puts a commit's files (the path its downloads return)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    cache = Path(constants.HF_HUB_CACHE).expanduser().resolve()
    return cache / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots" / commit


def _reachable(url: str, seconds: float = HUB_PROBE_SECONDS) -> bool:
    """Whether ``url``'s host (or the proxy the environment sets for it, as the hub client would use) accepts a
    TCP connection within ``seconds``, name lookup included (which has no timeout of its own, hence the
    thread)."""
    parts = urlsplit(url)
    proxy = getproxies().get(parts.scheme)
    if proxy and not proxy_bypass(parts.hostname):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ok = threading.Event()

    def connect():
        try:
            socket.create_connection((parts.hostname, port), timeout=seconds).close()
            ok.set()
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(seconds)
    return ok.is_set()
