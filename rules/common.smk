# Shared helpers: config validation, stage identities and paths, and the input functions of the rules.
import json
import os
import shlex
import sys
from pathlib import Path

# Rules run `python workflow_scripts/...`; make the library importable in any environment (incl. --sdm conda).
sys.path.insert(0, workflow.basedir)
# Without a conda or container deployment, jobs run the interpreter that runs Snakemake (its bin folder first on
# PATH), so `.venv/bin/snakemake` works without activating the venv. A PYTHONPATH the user set stays behind ours
# (braces doubled twice: f-string, then Snakemake's formatting). Hugging Face's own progress bars redraw with
# carriage returns, so jobs (whose stderr is their log file) turn them off; ours write plain lines (logs.progress).
# SIGTERM to the job's process group (kill -TERM -PGID, SLURM) would end its shell at once, before the job has
# stopped: the trap makes the shell wait for the job, then exit 143 (svip_core/interrupt.py).
_DEPLOYED = bool(workflow.deployment_settings and workflow.deployment_settings.deployment_method)
_PATH = "" if _DEPLOYED else f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; "
shell.prefix(f"trap 'exit 143' TERM; {_PATH}"
             f"export PYTHONPATH={shlex.quote(workflow.basedir)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
             "export HF_HUB_DISABLE_PROGRESS_BARS=1; ")

from svip_core.config import EMBEDDED, ConfigError, backbone_source, validate_config  # noqa: E402
from svip_core.dataset.shards import is_unlabelled_shard  # noqa: E402
from svip_core.stages import STAGE_DIRS, run_settings, runs, stage_hash, stage_inputs, trains_on_shard  # noqa: E402
from svip_core.interrupt import report_stopped_jobs  # noqa: E402

# Ctrl-C (or SIGTERM) during a run: a line per stopped job instead of an error report (svip_core/interrupt.py).
report_stopped_jobs()


def stop(problems):
    """A config or data problem found while planning: one line each (key, value, fix), no traceback, and no
    job started."""
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)


# The same checks and defaults as `svip`, so both name the same folders. Every identity is computed once per
# parse: the data's content and the backbone's weights are read (through the content-hash cache; a hub id's weights
# not downloaded yet are listed, not fetched) here, and the params below only repeat what the hashes already cover.
MEMO = {}
try:
    validate_config(config)
    IDENTITY = {stage: stage_inputs(config, stage, MEMO) for stage in ("prepare", "extract", "report")}
except ConfigError as e:
    stop(e.problems)
except OSError as e:
    stop([str(e)])
HASHES = {stage: stage_hash(config, stage, MEMO) for stage in ("prepare", "extract", "report")}
DIRS = {stage: f"results/{STAGE_DIRS[stage]}/{h}" for stage, h in HASHES.items()}
PREPARE, FEATURES, REPORT = DIRS["prepare"], DIRS["extract"], DIRS["report"]
# Shard member lists by content key, shared by every prepare run: a store is found whichever dataset lists it.
SHARDS = "results/shards"
# Every trained model (full and ablations, per seed) has its own train and evaluate identity.
RUNS = runs(config)
RUN_IDENTITY = {name: {s: stage_inputs(run, s, MEMO) for s in ("train", "evaluate")} for name, run in RUNS.items()}
RUN_HASHES = {name: {s: stage_hash(run, s, MEMO) for s in ("train", "evaluate")} for name, run in RUNS.items()}
TRAIN_NAME = {h["train"]: name for name, h in RUN_HASHES.items()}
EVAL_NAME = {h["evaluate"]: name for name, h in RUN_HASHES.items()}


wildcard_constraints:
    train_hash="|".join(TRAIN_NAME),
    eval_hash="|".join(EVAL_NAME),
ENV = "../envs/svip.yaml"
USE_EMBEDDED = config["features"]["backbone"] == EMBEDDED
# A hub id goes to the job as the id: its weights may not be downloaded yet, and planning leaves that to the job.
BACKBONE = f"{FEATURES}/backbone" if USE_EMBEDDED else backbone_source(config["features"]["backbone"])
REPORT_OUTPUTS = [f"{REPORT}/{name}" for name in ("training_curves.png", "top1_vs_baselines.png", "metrics_table.html",
                                                  "top1_by_people.png", "rejected_clips.html", "ablations.png",
                                                  "ablations.html", "gallery.png", "top1_by_category.png",
                                                  "variant_curves.png", "headline.json")]


def learning_curve_outputs() -> dict:
    """The report's learning-curve figure and table, when the config asks for a learning curve."""
    if not config["learning_curve"]:
        return {}
    caption = "../captions/learning_curve.rst"
    return {"curve": report(f"{REPORT}/learning_curve.png", caption=caption, category="Evaluation"),
            "curve_table": report(f"{REPORT}/learning_curve.html", caption=caption, category="Evaluation")}


def workflow_description() -> str:
    """The report's landing page: captions/workflow.rst, opened by the run's headline once the report stage has
    written it (`snakemake --report` parses the workflow after the run, so the numbers are there)."""
    headline = Path(REPORT) / "headline.json"
    if not headline.is_file():
        return "captions/workflow.rst"
    text = json.loads(headline.read_text())["text"]
    out = Path(REPORT) / "workflow.rst"
    description = Path(workflow.basedir, "captions", "workflow.rst").read_text()
    out.write_text(f"**{text}.**\n\n{description}")
    return str(out.resolve())


def rejected_note() -> str:
    """The line a finished run ends with when prepare rejected clips (a run that exits 0 can still have left
    clips out), naming where their reasons are; '' when none was."""
    manifest = Path(PREPARE) / "manifest.parquet"
    if not manifest.is_file():
        return ""
    import pandas as pd

    from svip_core.dataset.manifest import rejected_summary

    summary = rejected_summary(pd.read_parquet(manifest))
    if not summary:
        return ""
    return (f"svip: {summary}: the reasons are in {PREPARE}/logs/prepare.log and the report's rejected_clips.html "
            f"(`svip validate {config['data']['source']}` lists them)")


def canonical(obj):
    """Params as sorted JSON: Snakemake compares param strings, and key order must never look like a change."""
    return json.dumps(obj, sort_keys=True)


# Run settings (workers, batch sizes, where the backbone lies) change how fast a result is made, not what it
# is, so they must not trigger a re-run: see run_settings_param.
RUN_SETTINGS = {
    # max_array_bytes: prepare already refused what is too large; extract reads the same files with the same limit.
    "extract": canonical({**run_settings(config, "extract"), "backbone": BACKBONE,
                          "max_array_bytes": config["data"]["max_array_bytes"]}),
    "train": canonical(run_settings(config, "train")),
}


def run_settings_param(stage):
    """Param function for a stage's run settings. Snakemake's params trigger leaves out params computed from a
    job's output (it treats them as derived), and these must never trigger a re-run: the identity in the
    output's path already covers everything that does."""
    return lambda wildcards, output: RUN_SETTINGS[stage]


def across_nodes_resources(nodes):
    """Train's resources for a run across ``nodes`` nodes: the SLURM plugin's MPI form, sbatch --nodes=M --ntasks=M
    (a task, so a torchrun, per node; tasks_per_gpu=0 keeps it from also asking --ntasks-per-gpu), whose job step
    runs the command as it is, in the allocation's environment: inside the `srun -n1` step that wraps other jobs
    a nested srun reached only the first node. Nothing on one node (no `mpi` key at all: the job step's plugin
    reads its presence, the submitting one its value)."""
    return {"mpi": "srun", "tasks": nodes, "tasks_per_gpu": 0} if nodes > 1 else {}


def run_setting_param(key):
    """Param function for one run setting (``section.key``), that never triggers a re-run (run_settings_param)."""
    section, name = key.split(".")
    return lambda wildcards, output: config[section][name]


def stage_config(stage):
    """The resolved identity of one stage (its keys, upstream identities, data, code, assets) as JSON."""
    return canonical(IDENTITY[stage])


def train_config(wildcards):
    """The train stage's identity, plus the run's name (not hashed: it only labels the folder)."""
    name = TRAIN_NAME[wildcards.train_hash]
    return canonical({**RUN_IDENTITY[name]["train"], "run": name})


def evaluate_config(wildcards):
    return canonical(RUN_IDENTITY[EVAL_NAME[wildcards.eval_hash]]["evaluate"])


def trained_model(wildcards):
    folder = f"results/train/{RUN_HASHES[EVAL_NAME[wildcards.eval_hash]]['train']}"
    return {"model": f"{folder}/model.safetensors", "meta": f"{folder}/model.json"}


def run_results(name):
    """Where one run's training curves and metrics live."""
    return {"curves": f"results/train/{RUN_HASHES[name]['train']}/metrics.csv",
            "metrics": f"results/evaluate/{RUN_HASHES[name]['evaluate']}/metrics.json",
            "predictions": f"results/evaluate/{RUN_HASHES[name]['evaluate']}/predictions.parquet"}


def all_run_results():
    return [path for name in RUNS for path in run_results(name).values()]


def runs_json(wildcards):
    return canonical({name: run_results(name) for name in RUNS})


def shard_keys():
    """Shard keys come from the data: known once the prepare checkpoint has run."""
    shards = checkpoints.prepare.get().output.shards
    return sorted(p.stem for p in Path(shards).glob("*.json"))


def shard_list(wildcards):
    """The member list an extract job reads, in the folder shared by every dataset, first pointed at this
    config's dataset (another dataset holding the same clips may have written it last). ancient(): the key is
    the content, so a newer list never makes a store stale."""
    from svip_core.dataset.shards import read_shard, write_shared_shard

    prepared = Path(checkpoints.prepare.get().output.shards) / f"{wildcards.shard}.json"
    if prepared.exists():
        write_shared_shard(Path(SHARDS) / prepared.name, read_shard(prepared))
    return ancient(f"{SHARDS}/{wildcards.shard}.json")


def feature_stores(wildcards):
    return [f"{FEATURES}/{key}.zarr" for key in shard_keys()]


def labelled_stores(wildcards):
    """The stores of the labelled clips: what evaluation reads, and training without self-training."""
    return [f"{FEATURES}/{key}.zarr" for key in shard_keys() if not is_unlabelled_shard(key)]


def train_stores(wildcards):
    """The stores training reads: the unlabelled clips' only when it self-trains (a config-wide key, no
    ablation's), so that adding them to a dataset re-extracts and retrains nothing else."""
    return [f"{FEATURES}/{key}.zarr" for key in shard_keys() if trains_on_shard(config, key)]


def backbone_input(wildcards):
    return [BACKBONE] if USE_EMBEDDED else []


def output_dir(name):
    """Param function: the folder of one of the rule's outputs (the stage's hash folder)."""
    return lambda wildcards, output: os.path.dirname(output[name])


def input_dir(name):
    return lambda wildcards, input: os.path.dirname(input[name])
