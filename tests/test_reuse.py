"""Reuse is a contract: a stage's identity covers its data, code, config and assets, and nothing else.

Every config key is edited in turn and must change exactly the hashes of the stages that read it and of those
downstream (in-process); dry runs of a key per stage against the shared finished workflow show that Snakemake
plans by those hashes; data, code and backbone edits re-run what they touch; key order and run settings re-run
nothing.
"""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY, clone_workflow, planned_jobs, ran_jobs, snakemake, until_extract, write_config
from safetensors.torch import load_file

from svip_core.config import load_config, schema_keys, validate_config
from svip_core.stages import RUN_SETTINGS, STAGE_KEYS, STAGES, _get, keys_read, runs, stage_dir, stage_hash
from svip_core.synthetic.generate import write_dataset
from svip_core.train.loop import TIME_COLUMNS

BIN = Path(sys.executable).parent
# Which stages run again when a stage's identity changes (rules named by the stage they belong to).
DOWNSTREAM = {"prepare": {"prepare", "extract", "train", "evaluate", "report"},
              "extract": {"extract", "train", "evaluate", "report"}, "train": {"train", "evaluate", "report"},
              "evaluate": {"evaluate", "report"}, "report": {"report"}}
RULE_STAGE = {"embedded_backbone": "extract"}


def declared_keys() -> dict[str, set[str]]:
    """{config key: stages declaring it (run settings: "run setting")}."""
    out: dict[str, set[str]] = {}
    for stage, keys in STAGE_KEYS.items():
        for k in keys:
            out.setdefault(k, set()).add(stage)
    for keys in RUN_SETTINGS.values():
        for k in keys:
            out.setdefault(k, set()).add("run setting")
    return out


def test_every_schema_key_is_declared_as_read_by_stages_or_a_run_setting():
    declared = declared_keys()
    undeclared = sorted(set(schema_keys()) - set(declared))
    assert not undeclared, (f"config keys {undeclared} are read by no stage: add them to STAGE_KEYS (the stages whose "
                            f"results they change) or RUN_SETTINGS (speed only) in svip_core/stages.py")
    assert not sorted(set(declared) - set(schema_keys())), "declared keys that the schema does not have"
    assert all(len(stages) == 1 or "run setting" not in stages for stages in declared.values())


# Widths and their heads must keep dividing each other, and the patch size must keep tiling the frames.
DOUBLED = {"features.embedded.hidden_size", "features.embedded.num_heads", "features.embedded.patch_size",
           "model.d_model", "model.temporal_heads", "model.gat_hidden", "model.gat_heads"}


def edited_value(key: str, value, spec: dict, workdir: Path, backbone: Path):
    """A different valid value for ``key`` (the first choice that keeps the config valid)."""
    special = {"data.source": lambda: str(write_dataset(workdir / "other_data", {"train": 6, "val": 3, "test": 3},
                                                       6, 4, 48, 80, ["meeting"], seed=11)[0].parents[1]),
               "features.backbone": lambda: str(backbone),
               "features.frame_size": lambda: [value[0] + 8, value[1]],
               "synthetic.categories": lambda: value[:1] + ["lecture"],
               "evaluate.ks": lambda: [1, 2],
               "train.seeds": lambda: [0, 1],
               "train.workers": lambda: 0 if value == "auto" else "auto",
               "ablations": lambda: {"no_gat": {"gat_layers": 0}},
               "learning_curve": lambda: [6]}
    if key in special:
        return special[key]()
    if key in DOUBLED:
        return value * 2
    if "enum" in spec:
        return next(v for v in spec["enum"] if v != value)
    if spec.get("type") == "boolean":
        return not value
    if spec.get("type") == "integer":
        return value + 1
    if spec.get("type") == "number":
        doubled = value * 2 if value else 0.5
        if value == spec.get("maximum") or doubled >= spec.get("exclusiveMaximum", 1e9):
            return value / 2
        return round(min(doubled, spec.get("maximum", 1e9)), 6)
    raise AssertionError(f"no edit for {key} ({spec})")


def schema_spec(key: str) -> dict:
    node = yaml.safe_load((Path(__file__).parent.parent / "config.schema.yaml").read_text())
    for part in key.split("."):
        node = node["properties"][part]
    return node


def set_key(config: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def stages_of(plan: dict[str, int]) -> set[str]:
    return {RULE_STAGE.get(rule, rule) for rule in plan if rule != "all"}


@pytest.fixture(scope="module")
def local_backbone(finished_workflow, tmp_path_factory) -> Path:
    """A copy of the shared workflow's embedded backbone: a backbone given as a model folder."""
    local = tmp_path_factory.mktemp("backbone") / "local_backbone"
    shutil.copytree(next((finished_workflow / "results" / "features").glob("*/backbone")), local)
    return local


# What a changed identity makes new, by stage hash: a prepare edit leaves the extract hash alone (its stores are
# addressed by shard content keys, which prepare decides), the dry runs below show Snakemake then extracts.
NEW_HASHES = {**DOWNSTREAM, "prepare": DOWNSTREAM["prepare"] - {"extract"}}
# Keys of clips only self-training reads: with it off (TINY), prepare lists them and the report counts them.
UNLABELLED_KEYS = {"synthetic.clips.unlabelled": {"prepare", "report"}}


def all_hashes(config: dict) -> dict[str, set[str]]:
    """{stage: every hash the workflow of ``config`` writes under}: train and evaluate once per run."""
    memo: dict = {}
    out = {s: {stage_hash(config, s, memo)} for s in ("prepare", "extract", "report")}
    for stage in ("train", "evaluate"):
        out[stage] = {stage_hash(run, stage, memo) for run in runs(config).values()}
    return out


def edited_configs(base: dict, backbone: Path, tmp_path: Path) -> list[tuple[str, dict, set[str]]]:
    """(key, ``base`` with that key edited, the stages that read the key) for every schema key."""
    base = validate_config(copy.deepcopy(base))
    cases = []
    for key in schema_keys():
        edited = copy.deepcopy(base)
        set_key(edited, key, edited_value(key, _get(base, key) if key != "ablations" else {}, schema_spec(key),
                                          tmp_path, backbone))
        edited = validate_config(edited)
        readers = {s for s in STAGES if key in keys_read(edited, s) or key in keys_read(base, s)}
        cases.append((key, edited, readers))
    return cases


def test_editing_any_config_key_changes_exactly_the_hashes_of_the_stages_that_read_it(local_backbone, tmp_path,
                                                                                      monkeypatch):
    """Every key of the schema, in-process: the stages whose identity changes are those that read the key and
    the stages downstream of them, and no others (the dry runs below show that Snakemake plans by them)."""
    monkeypatch.chdir(tmp_path)             # the content-hash cache lives under the working directory's results/
    before = all_hashes(validate_config(copy.deepcopy(TINY)))
    wrong = []
    for key, edited, readers in edited_configs(TINY, local_backbone, tmp_path):
        after = all_hashes(edited)
        new = {s for s in STAGES if after[s] - before[s]}
        expected = set().union(*(NEW_HASHES[s] for s in readers)) if readers else set()
        expected = UNLABELLED_KEYS.get(key, expected)
        if new != expected:
            wrong.append(f"{key}: read by {sorted(readers) or 'no stage'}, new hashes for {sorted(new)}")
    assert not wrong, "\n".join(wrong)


# The dry runs, one per group of edits: a key read by each stage; a new seed (new runs beside the existing ones);
# and together, the edits that must schedule nothing: run settings, a key the mode ignores, one a folder dataset
# ignores (any of them scheduling a job would show in the plan).
DRY_RUNS = (("data.num_shards",), ("features.num_frames",), ("model.d_model",), ("train.seeds",), ("evaluate.ks",),
            ("report.gallery_size",),
            ("features.workers", "features.batch_clips", "train.workers", "features.crop_size", "synthetic.seed"))


def test_snakemake_plans_exactly_the_stages_whose_identity_an_edit_changes(finished_workflow, local_backbone,
                                                                           tmp_path):
    wd = finished_workflow
    base = yaml.safe_load((wd / "config.yaml").read_text())
    edits = {key: (edited, readers) for key, edited, readers in edited_configs(base, local_backbone, tmp_path)}
    cases = []
    for i, keys in enumerate(DRY_RUNS):
        config = validate_config(copy.deepcopy(base))
        for key in keys:
            set_key(config, key, _get(edits[key][0], key))
        cases.append((keys, write_config(tmp_path / f"dry_run{i}.yaml", config),
                      set().union(*(edits[key][1] for key in keys))))

    def dry_run(case):
        keys, path, readers = case
        result = snakemake(wd, "-n", "--nolock", "--configfile", str(path))
        assert result.returncode == 0, (keys, result.stderr[-2000:])
        return keys, readers, stages_of(planned_jobs(result))

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(dry_run, cases))
    wrong = []
    for keys, readers, planned in outcomes:
        expected = set().union(*(DOWNSTREAM[s] for s in readers)) if readers else set()
        # After a prepare edit the shard keys are unknown until prepare has run: extract may not be listed yet.
        ok = planned == expected or ("prepare" in readers and planned == expected - {"extract"})
        if not ok:
            wrong.append(f"{keys}: read by {sorted(readers) or 'no stage'}, dry run schedules {sorted(planned)}")
    assert not wrong, "\n".join(wrong)
    assert outcomes[-1][1] == set() and outcomes[-1][2] == set()      # the group that must schedule nothing


def test_key_order_changes_nothing_and_svip_hash_names_the_workflows_folders(finished_workflow, tmp_path):
    wd = finished_workflow

    def reversed_keys(obj):
        return {k: reversed_keys(obj[k]) for k in reversed(list(obj))} if isinstance(obj, dict) else obj

    shuffled = dict(reversed_keys(yaml.safe_load((wd / "config.yaml").read_text())), ablations={})
    (tmp_path / "shuffled.yaml").write_text(yaml.safe_dump(shuffled, sort_keys=False))
    same = snakemake(wd, "-n", "--configfile", str(tmp_path / "shuffled.yaml"))
    assert "Nothing to be done" in same.stdout + same.stderr, same.stdout[-2000:]

    # A three-line override file, layered over config.yaml as Snakemake layers it.
    override = tmp_path / "override.yaml"
    override.write_text("train:\n  lr: 0.003\nevaluate: {ks: [1, 2]}\n")
    plan = snakemake(wd, "-n", "--configfile", str(override))
    assert plan.returncode == 0, plan.stderr[-2000:]
    text = plan.stdout + plan.stderr
    for stage in ("prepare", "extract", "train", "evaluate", "report"):
        folder = subprocess.run([str(BIN / "svip"), "--configfile", str(override), "hash", stage, "--path"], cwd=wd,
                                capture_output=True, text=True, check=True).stdout.strip()
        if stage in ("train", "evaluate", "report"):
            assert f"{folder}/" in text, (stage, folder)           # the folder the workflow is about to write
        else:
            assert (wd / folder).is_dir(), (stage, folder)          # unchanged: the folder it already wrote
    assert stage_dir(load_config(wd / "config.yaml", [override]), "train").name in text


def test_code_edits_reextract_and_comment_edits_do_not(finished_workflow, tmp_path):
    """A real edit of a feature module re-runs extract onward; a comment or docstring edit re-runs nothing."""
    wd = tmp_path / "wf"
    clone_workflow(finished_workflow, wd)
    shutil.copytree(Path(__file__).parent.parent / "svip_core", wd / "svip_core",
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert "Nothing to be done" in snakemake(wd, "-n").stdout          # the same code, wherever it lies

    geometry = wd / "svip_core" / "features" / "geometry.py"
    source = geometry.read_text()
    geometry.write_text(source.replace('"""Raw box geometry', '"""Raw (reworded) box geometry') + "# a comment\n")
    assert "Nothing to be done" in snakemake(wd, "-n").stdout

    geometry.write_text(source.replace("return geom * valid[..., None]", "return 2 * geom * valid[..., None]"))
    assert stages_of(planned_jobs(snakemake(wd, "-n"))) == DOWNSTREAM["extract"]
    geometry.write_text(source)

    model = wd / "svip_core" / "model" / "ranker.py"
    model.write_text(model.read_text() + "\nSMALLEST_MARGIN = 1e-6\n")       # any statement is code
    assert stages_of(planned_jobs(snakemake(wd, "-n"))) == DOWNSTREAM["train"]


def test_a_changed_preprocessor_config_reextracts_and_a_moved_backbone_does_not(local_backbone, tmp_path,
                                                                                 monkeypatch):
    """A backbone folder is identified by its weights and preprocessing config, not by where it lies (in-process:
    the dry runs above show Snakemake plans extract by this hash)."""
    monkeypatch.chdir(tmp_path)             # the content-hash cache lives under the working directory's results/
    local = tmp_path / "local_backbone"
    shutil.copytree(local_backbone, local)
    config = validate_config(dict(copy.deepcopy(TINY), features={**TINY["features"], "backbone": str(local)}))
    first = stage_hash(config, "extract")
    pre = local / "preprocessor_config.json"
    pre.write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    edited = stage_hash(config, "extract")
    shutil.move(local, tmp_path / "moved_backbone")                    # same weights, another place
    (tmp_path / "moved_backbone" / "preprocessor_config.json").unlink()
    config["features"]["backbone"] = str(tmp_path / "moved_backbone")
    assert edited != first and stage_hash(config, "extract") == first


@pytest.mark.slow
def test_a_data_edit_reruns_what_it_touches_and_going_back_finds_the_old_results(finished_workflow, tmp_path):
    """Adding and changing clips re-runs prepare, exactly the shards whose clips changed, and training; the
    new model is trained on the new data (not resumed from the old one); the old data finds the old results."""
    wd = clone_workflow(finished_workflow, tmp_path / "wf", with_data=True)
    data = wd / "data"
    old = {s: wd / stage_dir(load_config(wd / "config.yaml"), s) for s in STAGES}
    # The copied data: only its manifest is new, its stores are found (test_hdf5 runs the whole workflow after such
    # a move: the report naming the data is new too).
    assert until_extract(wd) == {"prepare": 1}
    old_keys = {p.stem for p in (old["prepare"] / "shards").glob("*.json")}
    old_weights = load_file(old["train"] / "model.safetensors")
    old_curves = pd.read_csv(old["train"] / "metrics.csv")

    # Add two clips and change one (same id, other boxes).
    extra = write_dataset(tmp_path / "extra", {"train": 2}, 6, 4, 48, 80, ["meeting"], seed=22)
    for i, path in enumerate(extra):
        arrays = dict(np.load(path))
        arrays["video_id"] = np.array(f"added_{i}")
        np.savez(data / "train" / f"added_{i}.npz", **arrays)
    changed = sorted((data / "train").glob("synth_*.npz"))[0]
    original = changed.read_bytes()
    arrays = dict(np.load(changed))
    arrays["bboxes"] = arrays["bboxes"] * 0.9
    np.savez(changed, **arrays)

    new = {s: wd / stage_dir(load_config(wd / "config.yaml"), s) for s in STAGES}
    second = snakemake(wd, str(new["train"].relative_to(wd) / "model.safetensors"))   # up to the model
    assert second.returncode == 0, second.stderr[-3000:]
    new_keys = {p.stem for p in (new["prepare"] / "shards").glob("*.json")}
    ran = ran_jobs(second)
    assert ran.get("extract") == len(new_keys - old_keys) and 0 < len(new_keys - old_keys) < len(new_keys)
    assert {k: v for k, v in ran.items() if k != "extract"} == {"prepare": 1, "train": 1}
    assert all(new[s] != old[s] for s in ("prepare", "train", "evaluate", "report"))
    new_weights = load_file(new["train"] / "model.safetensors")
    assert any(not (old_weights[k] == new_weights[k]).all() for k in old_weights)
    new_curves = pd.read_csv(new["train"] / "metrics.csv")
    assert not new_curves.drop(columns=list(TIME_COLUMNS)).equals(old_curves.drop(columns=list(TIME_COLUMNS)))

    for path in data.glob("train/added_*.npz"):
        path.unlink()
    changed.write_bytes(original)
    back = snakemake(wd, "-n")
    planned = planned_jobs(back)
    planned.pop("all", None)
    # The old data finds its manifest, stores, model and evaluation: only its report, never made in this copy, is due.
    assert planned == {"report": 1}, back.stdout[-2000:]


@pytest.mark.slow
def test_unlabelled_clips_retrain_only_a_run_that_self_trains(finished_workflow, tmp_path):
    """Unlabelled clips lie in shards of their own: added to the dataset, they re-run prepare (which lists them)
    and nothing a run without self-training reads; a self-training run takes their stores and retrains."""
    wd = clone_workflow(finished_workflow, tmp_path / "wf", with_data=True)
    config = yaml.safe_load((wd / "config.yaml").read_text())
    before = {s: stage_dir(load_config(wd / "config.yaml"), s) for s in STAGES}
    (wd / "data" / "unlabelled").mkdir()
    for i, path in enumerate(write_dataset(tmp_path / "extra", {"train": 4}, 6, 4, 48, 80, ["meeting"], seed=23)):
        arrays = {k: v for k, v in np.load(path).items() if k != "target_index"}
        arrays["video_id"] = np.array(f"unlabelled_{i}")
        np.savez(wd / "data" / "unlabelled" / f"unlabelled_{i}.npz", **arrays)
    after = {s: stage_dir(load_config(wd / "config.yaml"), s) for s in STAGES}
    assert {s for s in STAGES if before[s] != after[s]} == {"prepare", "report"}

    run = snakemake(wd, str(after["prepare"] / "manifest.parquet"), str(after["evaluate"] / "metrics.json"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert ran_jobs(run) == {"prepare": 1}                        # the model and its evaluation are found
    keys = [p.stem for p in (wd / after["prepare"] / "shards").glob("*.json")]
    unlabelled = [k for k in keys if k.startswith("unlabelled-")]
    stores = {p.stem for p in (wd / after["extract"]).glob("*.zarr")}      # those the finished workflow made
    assert unlabelled and set(keys) - set(unlabelled) == stores    # the labelled shards are the same
    assert not any((wd / after["extract"] / f"{k}.zarr").exists() for k in unlabelled)

    config["train"]["self_training"] = {"weight": 1.0}
    write_config(wd / "config.yaml", config)
    plan = snakemake(wd, "-n", str(stage_dir(load_config(wd / "config.yaml"), "evaluate") / "metrics.json"))
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert planned_jobs(plan) == {"extract": len(unlabelled), "train": 1, "evaluate": 1}, plan.stdout[-2000:]


@pytest.mark.slow
def test_datasets_sharing_clips_share_their_feature_stores(finished_workflow, tmp_path):
    wd = clone_workflow(finished_workflow, tmp_path / "wf", with_data=True)
    a = wd / "data"
    config = yaml.safe_load((wd / "config.yaml").read_text())
    assert until_extract(wd) == {"prepare": 1}                  # A is the copied data: its stores exist
    b = tmp_path / "b"
    shutil.copytree(a, b)                                        # the same clips elsewhere ...
    extra = write_dataset(tmp_path / "extra", {"val": 1}, 6, 4, 48, 80, ["meeting"], seed=32)[0]
    arrays = dict(np.load(extra))
    arrays["video_id"] = np.array("only_in_b")
    np.savez(b / "val" / "only_in_b.npz", **arrays)               # ... plus one clip of its own

    def switch(source):
        config["data"]["source"] = str(source)
        write_config(wd / "config.yaml", config)
        return until_extract(wd)

    def folder(source, stage):
        return stage_dir(validate_config(dict(copy.deepcopy(config), data={**config["data"], "source": str(source)})),
                         stage)

    assert switch(b) == {"prepare": 1, "extract": 1}              # only the shard holding the new clip
    assert switch(a) == {}                                        # A's prepare folder and stores are still there
    b_train = folder(b, "train")
    # The shared member lists follow the dataset in use: with B gone, new features of A read A's files.
    shutil.rmtree(b)
    resolved = load_config(wd / "config.yaml")
    shard = next((wd / stage_dir(resolved, "prepare") / "shards").glob("*.json"))
    store = stage_dir(resolved, "extract") / f"{shard.stem}.zarr"
    shutil.rmtree(wd / store)                                     # made again: from A's files, B's are gone
    again = snakemake(wd, str(store))
    assert again.returncode == 0 and ran_jobs(again) == {"extract": 1}, again.stderr[-3000:]
    shutil.copytree(a, tmp_path / "a_copy")
    assert switch(tmp_path / "a_copy") == {"prepare": 1}          # a moved dataset: only its manifest is new
    assert folder(a, "train") == folder(tmp_path / "a_copy", "train")        # a model follows content, not place
    assert folder(a, "prepare") != folder(tmp_path / "a_copy", "prepare")
    assert folder(a, "train") != b_train
