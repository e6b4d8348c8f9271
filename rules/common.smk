# Shared helpers: config validation, stage hashes and paths, and the input functions of the rules.
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

# Rules run `python workflow_scripts/...`; make the library importable in any environment (incl. --sdm conda).
sys.path.insert(0, workflow.basedir)
shell.prefix(f"export PYTHONPATH={shlex.quote(workflow.basedir)}; ")

from svip_core.stages import STAGE_DIRS, all_stage_hashes, digest, runs, stage_hash, stage_inputs  # noqa: E402


validate(config, schema="../config.schema.yaml")

HASHES = all_stage_hashes(config)
DIRS = {stage: f"results/{STAGE_DIRS[stage]}/{h}" for stage, h in HASHES.items()}
PREPARE, FEATURES, REPORT = DIRS["prepare"], DIRS["extract"], DIRS["report"]
# Every trained model (full and ablations, per seed) has its own train and evaluate hash.
RUNS = runs(config)
RUN_HASHES = {name: {"train": stage_hash(run, "train"), "evaluate": stage_hash(run, "evaluate")}
              for name, run in RUNS.items()}
TRAIN_RUNS = {h["train"]: RUNS[name] for name, h in RUN_HASHES.items()}
EVAL_RUNS = {h["evaluate"]: RUNS[name] for name, h in RUN_HASHES.items()}
EVAL_TRAIN = {h["evaluate"]: h["train"] for h in RUN_HASHES.values()}
PRIMARY = next(iter(RUN_HASHES.values()))


wildcard_constraints:
    train_hash="|".join(TRAIN_RUNS),
    eval_hash="|".join(EVAL_RUNS),
ENV = "../envs/svip.yaml"
USE_EMBEDDED = config["features"]["backbone"] == "embedded"
BACKBONE = f"{FEATURES}/backbone" if USE_EMBEDDED else config["features"]["backbone"]
REPORT_OUTPUTS = [f"{REPORT}/{name}" for name in ("training_curves.png", "top1_vs_baselines.png", "metrics_table.html",
                                                  "top1_by_people.png", "rejected_clips.html", "ablations.png",
                                                  "ablations.html", "gallery.png", "top1_by_category.png")]


def stage_config(stage):
    """The resolved config of one stage (its keys, upstream hashes, external identities) as JSON."""
    return json.dumps(stage_inputs(config, stage), sort_keys=True)


def train_config(wildcards):
    """The train stage's resolved config, plus the run's name (not hashed: it only labels the folder)."""
    name = next(n for n, h in RUN_HASHES.items() if h["train"] == wildcards.train_hash)
    return json.dumps({**stage_inputs(TRAIN_RUNS[wildcards.train_hash], "train"), "run": name}, sort_keys=True)


def evaluate_config(wildcards):
    return json.dumps(stage_inputs(EVAL_RUNS[wildcards.eval_hash], "evaluate"), sort_keys=True)


def trained_model(wildcards):
    folder = f"results/train/{EVAL_TRAIN[wildcards.eval_hash]}"
    return {"model": f"{folder}/model.safetensors", "meta": f"{folder}/model.json"}


def run_results(name):
    """Where one run's training curves and metrics live."""
    return {"curves": f"results/train/{RUN_HASHES[name]['train']}/metrics.csv",
            "metrics": f"results/evaluate/{RUN_HASHES[name]['evaluate']}/metrics.json",
            "predictions": f"results/evaluate/{RUN_HASHES[name]['evaluate']}/predictions.parquet"}


def all_run_results():
    return [path for name in RUNS for path in run_results(name).values()]


def runs_json(wildcards):
    return json.dumps({name: run_results(name) for name in RUNS})


def data_fingerprint():
    """Names, sizes and mtimes of the user's clip files, as a prepare param: adding, removing or changing a
    clip re-runs prepare, and one stat per file is all it costs at parse time (10,000 input files would
    cost Snakemake far more)."""
    source = config["data"]["source"]
    if source == "synthetic":
        return "synthetic"
    entries = []
    for split in ("train", "val", "test"):
        folder = Path(source, split)
        if folder.is_dir():
            with os.scandir(folder) as it:
                entries += [(split, e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in it if e.name.endswith(".npz")]
    return digest(sorted(entries))


def shard_keys():
    """Shard keys come from the data: known once the prepare checkpoint has run."""
    shards = checkpoints.prepare.get().output.shards
    return sorted(p.stem for p in Path(shards).glob("*.json"))


def feature_stores(wildcards):
    return [f"{FEATURES}/{key}.zarr" for key in shard_keys()]


def backbone_input(wildcards):
    return [BACKBONE] if USE_EMBEDDED else []


def output_dir(name):
    """Param function: the folder of one of the rule's outputs (the stage's hash folder)."""
    return lambda wildcards, output: os.path.dirname(output[name])


def input_dir(name):
    return lambda wildcards, input: os.path.dirname(input[name])
