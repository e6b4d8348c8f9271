"""The workflow config: loading, defaults, and the checks that stop a bad config before any job starts.

A config problem is one line naming the key, its value and the fix (``KEY = VALUE: problem. Fix: ...``), so a
typo never costs a traceback or a dump of the schema. Three layers, cheapest first:

- the schema (``config.schema.yaml``): unknown keys (with the closest known key), types, ranges, choices;
- values that only make sense together: widths a number of heads must divide, distinct seeds, the data folder;
- assets (``check_assets``): the backbone must be a model folder, a cached hub id or one the hub can serve now
  (offline is detected in about a second, never waited out), and the frames must tile into its patches.
"""
from __future__ import annotations

import difflib
import json
import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from svip_core.containers import scan_containers

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = PROJECT_ROOT / "config.schema.yaml"
SYNTHETIC = "synthetic"
EMBEDDED = "embedded"
BACKBONE_FILES = (".safetensors", ".bin", ".pt", ".pth", ".json")
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
                update_config(config, yaml.safe_load(f) or {})
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e}). "
                              f"Fix: correct the YAML syntax there") from None
    return validate_config(config, assets)


def validate_config(config: dict, assets: bool = True) -> dict:
    """Check ``config`` and fill in the schema's defaults, in place. Raises ConfigError with every problem found
    (schema first: the value checks need a well-formed config). ``assets``: also check the backbone
    (``check_assets``), which may download a hub id that is reachable but not cached. The Snakefile calls this
    too, so `svip` and the workflow resolve a config the same way."""
    from snakemake.utils import validate

    problems = schema_problems(config)
    if problems:
        raise ConfigError(problems)
    validate(config, str(SCHEMA_PATH), set_default=True)
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
    from jsonschema import Draft202012Validator

    if not isinstance(config, dict):
        return [f"config = {_show(config)}: not a mapping. Fix: write the config as `section: {{key: value}}`"]
    schema = _schema()
    errors = sorted(Draft202012Validator(schema).iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    problems = [line for e in errors for line in _error_lines(e)]
    ablations = config.get("ablations")
    if isinstance(ablations, dict) and all(isinstance(v, dict) for v in ablations.values()):
        problems += _ablation_problems(ablations, schema["properties"]["model"])
    return list(dict.fromkeys(problems))


def _ablation_problems(ablations: dict, model_schema: dict) -> list[str]:
    """An ablation overrides model keys, so each override is checked as that model key would be."""
    from jsonschema import Draft202012Validator

    known = model_schema["properties"]
    problems = []
    for name in sorted(ablations):
        for key, value in ablations[name].items():
            dotted = f"ablations.{name}.{key}"
            if key not in known:
                problems.append(f"{dotted} = {_show(value)}: unknown model key. Fix: "
                                + _suggest(key, known, f"ablations.{name}.", "an ablation overrides model keys"))
                continue
            for e in Draft202012Validator(known[key]).iter_errors(value):
                problems += _error_lines(e, dotted)
    return problems


def _error_lines(error, key: str | None = None) -> list[str]:
    key = key or _dotted(error.absolute_path)
    schema, value = error.schema, error.instance
    if error.validator == "additionalProperties" and isinstance(value, dict):
        known = schema.get("properties", {})
        prefix = key + "." if key else ""
        return [f"{prefix}{extra} = {_show(value[extra])}: unknown key. Fix: " + _suggest(extra, known, prefix)
                for extra in sorted(set(value) - set(known))]
    if error.validator == "enum":
        close = difflib.get_close_matches(str(value), [str(v) for v in schema["enum"]], n=1, cutoff=0.5)
        fix = f"did you mean {close[0]}?" if close else f"give {_describe(schema)}"
        return [f"{key} = {_show(value)}: not {_describe(schema)}. Fix: {fix}"]
    what = {"type": f"not {_describe({'type': schema.get('type')})}",
            "minItems": f"needs at least {schema.get('minItems')} items",
            "maxItems": f"takes at most {schema.get('maxItems')} items",
            "oneOf": f"not {_describe(schema)}"}.get(error.validator, error.message.replace(_show(value), "").strip())
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[error.validator]
        what = f"must be {sign} {error.validator_value}"
    return [f"{key} = {_show(value)}: {what}. Fix: give {_describe(schema)}{_default(schema)}"]


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
    return {"boolean": "true or false", "string": "a string", "object": "a mapping"}.get(kind, "")


def _default(schema: dict) -> str:
    return f" (default {_show(schema['default'])})" if "default" in schema and schema["default"] != {} else ""


def _suggest(key: str, known, prefix: str, why: str = "") -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f"did you mean {prefix}{close[0]}?"
    return (f"{why}; " if why else "") + f"remove it or use one of {', '.join(sorted(known))}"


def _dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _show(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- values that depend on each other ----------------------------------------------------------------------

def value_problems(config: dict) -> list[str]:
    """Problems the schema cannot see (``config`` has its defaults): each model variant's widths must split
    into its heads, seeds must differ, a data folder must exist and hold clips."""
    problems = []
    source = config["data"]["source"]
    if source != SYNTHETIC and not os.path.isdir(source):
        problems.append(f"data.source = {_show(source)}: folder not found. Fix: give a dataset folder "
                        f"(train/ val/ [test/] of .npz clips, or train.h5 ...) or \"synthetic\"")
    elif source != SYNTHETIC and not scan_containers(source):
        problems.append(f"data.source = {_show(source)}: no clips found. Fix: put clips in {source}/train/*.npz, "
                        f"{source}/val/*.npz ... or {source}/train.h5 ... (`svip validate {source}` checks them)")
    seeds = config["train"]["seeds"]
    if len(set(seeds)) != len(seeds):
        problems.append(f"train.seeds = {_show(seeds)}: a seed is listed twice. Fix: list each seed once")
    embedded = config["features"]["embedded"]
    if config["features"]["backbone"] == EMBEDDED and embedded["hidden_size"] % embedded["num_heads"]:
        problems.append(f"features.embedded.hidden_size = {embedded['hidden_size']}: not a multiple of "
                        f"features.embedded.num_heads ({embedded['num_heads']}). Fix: "
                        f"{_multiples(embedded['hidden_size'], embedded['num_heads'])}")
    ablations = config["ablations"] if isinstance(config["ablations"], dict) else {}
    full = _model_problems(config["model"], "model.")
    problems += full
    for name in sorted(ablations):
        problems += [p for p in _model_problems({**config["model"], **ablations[name]}, f"ablations.{name}: model.")
                     if p.split(": ", 1)[1] not in {q.split(": ", 1)[1] for q in full}]
    return problems


def _model_problems(model: dict, where: str) -> list[str]:
    problems = []
    if (model["temporal_layers"] or model["event_token"] or model["pooling"] == "attention") \
            and model["d_model"] % model["temporal_heads"]:
        problems.append(f"{where}d_model = {model['d_model']}: not a multiple of model.temporal_heads "
                        f"({model['temporal_heads']}). Fix: {_multiples(model['d_model'], model['temporal_heads'])}")
    if model["gat_layers"] and model["gat_hidden"] % model["gat_heads"]:
        problems.append(f"{where}gat_hidden = {model['gat_hidden']}: not a multiple of model.gat_heads "
                        f"({model['gat_heads']}). Fix: {_multiples(model['gat_hidden'], model['gat_heads'])}")
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
        except (OSError, ValueError, KeyError, TypeError) as e:
            return [f"features.backbone = {_show(features['backbone'])}: {folder}/config.json has no readable "
                    f"patch_size ({type(e).__name__}: {e}). Fix: give a DINOv2 folder saved with save_pretrained"]
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


def backbone_folder(source: str) -> Path | None:
    """The local folder a backbone is loaded from: the folder itself, or a hub id's snapshot (None: embedded,
    which the workflow builds)."""
    if source == EMBEDDED:
        return None
    if Path(source).expanduser().is_dir():
        folder = Path(source).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise ConfigError(f"features.backbone = {_show(source)}: no config.json in that folder. Fix: give a "
                              f"model folder saved with save_pretrained")
        return folder
    if source.startswith(("/", ".", "~")) or source.count("/") != 1:     # hub ids are "namespace/name"
        raise ConfigError(f"features.backbone = {_show(source)}: folder not found. Fix: give an existing model "
                          f"folder (saved with save_pretrained), a hub id such as facebook/dinov2-base, or embedded")
    return Path(_hub_folder(source))


def _hub_folder(repo_id: str) -> str:
    """A hub id's local snapshot: from the Hugging Face cache, else downloaded now (weights and configs only),
    so the identity is always the weights' content, never "not downloaded yet". Offline (HF_HUB_OFFLINE, or
    the hub not answering within HUB_PROBE_SECONDS) fails at once instead of through the client's retries."""
    from huggingface_hub import constants, snapshot_download

    patterns = [f"*{s}" for s in BACKBONE_FILES]
    try:
        return snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns)
    except Exception:
        pass
    local = (f"Fix: download it where there is network (`huggingface-cli download {repo_id} --local-dir "
             f"/models/{repo_id.split('/')[-1]}`) and set features.backbone to that folder")
    endpoint = constants.ENDPOINT
    if constants.HF_HUB_OFFLINE or not _reachable(endpoint):
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{endpoint} cannot be reached (offline)"
        raise ConfigError(f"features.backbone = {_show(repo_id)}: not in the local Hugging Face cache and {why}. "
                          + local)
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"features.backbone = {_show(repo_id)}: not in the local Hugging Face cache and could "
                          f"not be downloaded ({first}). " + local) from None


def _reachable(url: str, seconds: float = HUB_PROBE_SECONDS) -> bool:
    """Whether ``url``'s host accepts a TCP connection within ``seconds``, name lookup included (which has no
    timeout of its own, hence the thread)."""
    parts = urlsplit(url)
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
