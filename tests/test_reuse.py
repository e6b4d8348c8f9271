"""Reuse is a contract: a stage's identity covers its data, code, config and assets, and nothing else.

Every config key is edited in turn against a finished workflow and the dry run must schedule exactly the stages
that read it; data, code and backbone edits re-run what they touch; key order and run settings re-run nothing.
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
from safetensors.torch import load_file

from conftest import TINY, copy_workflow, planned_jobs, ran_jobs, snakemake, write_config
from svip_core.config import load_config, schema_keys, validate_config
from svip_core.io.synth import write_dataset
from svip_core.stages import RUN_SETTINGS, STAGE_KEYS, STAGES, _get, keys_read, stage_dir
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


def edited_value(key: str, value, spec: dict, workdir: Path, run_dir: Path):
    """A different valid value for ``key`` (the first choice that keeps the config valid)."""
    special = {"data.source": lambda: str(write_dataset(workdir / "other_data", {"train": 6, "val": 3, "test": 3},
                                                       6, 4, 48, 80, ["meeting"], seed=11)[0].parents[1]),
               "features.backbone": lambda: str(run_dir / "results" / "local_backbone"),
               "features.frame_size": lambda: [value[0] + 8, value[1]],
               "synthetic.categories": lambda: value[:1] + ["lecture"],
               "evaluate.ks": lambda: [1, 2],
               "train.seeds": lambda: [0, 1],
               "train.workers": lambda: 0 if value == "auto" else "auto",
               "ablations": lambda: {"no_gat": {"gat_layers": 0}}}
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
        return round(min(value * 2 if value else 0.5, spec.get("maximum", 1e9)), 6) if value != spec.get("maximum") else value / 2
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
def reuse_run(finished_workflow):
    """The finished tiny workflow, plus a local copy of its embedded backbone (a backbone given as a folder)."""
    features = next((finished_workflow / "results" / "features").glob("*/backbone"))
    local = finished_workflow / "results" / "local_backbone"
    if not local.exists():
        shutil.copytree(features, local)
    return finished_workflow


def test_editing_any_config_key_schedules_exactly_the_stages_that_read_it(reuse_run, tmp_path):
    wd = reuse_run
    base = validate_config(copy.deepcopy(TINY))
    cases = []
    for i, key in enumerate(schema_keys()):
        edited = copy.deepcopy(base)
        set_key(edited, key, edited_value(key, _get(base, key) if key != "ablations" else {}, schema_spec(key), tmp_path, wd))
        readers = {s for s in STAGES if key in keys_read(validate_config(copy.deepcopy(edited)), s)
                   or key in keys_read(base, s)}
        cases.append((key, write_config(tmp_path / f"edit{i}.yaml", edited), readers))

    def dry_run(case):
        key, path, readers = case
        result = snakemake(wd, "-n", "--nolock", "--configfile", str(path))
        assert result.returncode == 0, (key, result.stderr[-2000:])
        return key, readers, stages_of(planned_jobs(result))

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(dry_run, cases))
    wrong = []
    for key, readers, planned in outcomes:
        expected = set().union(*(DOWNSTREAM[s] for s in readers)) if readers else set()
        # After a prepare edit the shard keys are unknown until prepare has run: extract may not be listed yet.
        ok = planned == expected or ("prepare" in readers and planned == expected - {"extract"})
        if not ok:
            wrong.append(f"{key}: read by {sorted(readers) or 'no stage'}, dry run schedules {sorted(planned)}")
    assert not wrong, "\n".join(wrong)
    # The run settings and the keys a mode ignores are among the edits, and schedule nothing.
    assert {k for k, r, p in outcomes if not p} >= {"features.workers", "features.batch_clips", "train.workers",
                                                    "features.crop_size"}


def test_key_order_changes_nothing_and_svip_hash_names_the_workflows_folders(reuse_run, tmp_path):
    wd = reuse_run

    def reversed_keys(obj):
        return {k: reversed_keys(obj[k]) for k in reversed(list(obj))} if isinstance(obj, dict) else obj

    shuffled = dict(reversed_keys(copy.deepcopy(TINY)), ablations={})
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


def test_code_edits_reextract_and_comment_edits_do_not(reuse_run, tmp_path):
    """A real edit of a feature module re-runs extract onward; a comment or docstring edit re-runs nothing."""
    wd = tmp_path / "wf"
    shutil.copytree(reuse_run, wd, symlinks=True)
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


def test_a_changed_preprocessor_config_reextracts(reuse_run, tmp_path):
    wd = tmp_path / "wf"
    shutil.copytree(reuse_run, wd, symlinks=True)
    config = copy.deepcopy(TINY)
    config["features"]["backbone"] = str(wd / "results" / "local_backbone")
    write_config(wd / "config.yaml", config)
    assert until_extract(wd) == {"extract": 2}                         # another backbone source: its own features
    assert until_extract(wd, "-n") == {}

    pre = wd / "results" / "local_backbone" / "preprocessor_config.json"
    pre.write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
    assert until_extract(wd, "-n") == {"extract": 2}
    shutil.move(wd / "results" / "local_backbone", wd / "moved_backbone")   # same weights, another place
    config["features"]["backbone"] = str(wd / "moved_backbone")
    write_config(wd / "config.yaml", config)
    (wd / "moved_backbone" / "preprocessor_config.json").unlink()
    assert until_extract(wd, "-n") == {}


def until_extract(wd: Path, *flags: str) -> dict[str, int]:
    """Run (or with -n, plan) prepare and the feature stores of the working directory's config only; job counts."""
    config = load_config(wd / "config.yaml")
    prepare, features = stage_dir(config, "prepare"), stage_dir(config, "extract")
    counts: dict[str, int] = {}
    for targets in ([str(prepare / "manifest.parquet")], None):
        if targets is None:
            if not (wd / prepare / "shards").is_dir():          # a dry run of a new dataset: prepare comes first
                break
            targets = [f"{features}/{p.stem}.zarr" for p in (wd / prepare / "shards").glob("*.json")]
        result = snakemake(wd, *flags, *targets)
        assert result.returncode == 0, result.stderr[-3000:]
        for rule, n in (planned_jobs(result) if "-n" in flags else ran_jobs(result)).items():
            counts[rule] = counts.get(rule, 0) + n
    counts.pop("all", None)
    return counts


def folder_dataset(root: Path, clips: dict, seed: int) -> Path:
    write_dataset(root, clips, 6, 4, 48, 80, ["meeting", "street"], seed=seed)
    return root


def test_a_data_edit_reruns_what_it_touches_and_going_back_runs_nothing(tmp_path):
    """Adding and changing clips re-runs prepare, exactly the shards whose clips changed, and training; the
    new model is trained on the new data (not resumed from the old one); the old data finds the old results."""
    data = folder_dataset(tmp_path / "data", {"train": 12, "val": 4, "test": 4}, seed=21)
    config = copy.deepcopy(TINY)
    config["data"].update(source=str(data), num_shards=8)
    config["train"]["nproc"] = 1
    wd = copy_workflow(tmp_path / "wf", config)
    first = snakemake(wd)
    assert first.returncode == 0, first.stderr[-3000:]
    old = {s: wd / stage_dir(load_config(wd / "config.yaml"), s) for s in STAGES}
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

    second = snakemake(wd)
    assert second.returncode == 0, second.stderr[-3000:]
    new = {s: wd / stage_dir(load_config(wd / "config.yaml"), s) for s in STAGES}
    new_keys = {p.stem for p in (new["prepare"] / "shards").glob("*.json")}
    ran = ran_jobs(second)
    assert ran.get("extract") == len(new_keys - old_keys) and 0 < len(new_keys - old_keys) < len(new_keys)
    assert {k: v for k, v in ran.items() if k != "extract"} == {"prepare": 1, "train": 1, "evaluate": 1, "report": 1}
    assert all(new[s] != old[s] for s in ("prepare", "train", "evaluate", "report"))
    new_weights = load_file(new["train"] / "model.safetensors")
    assert any(not (old_weights[k] == new_weights[k]).all() for k in old_weights)
    new_curves = pd.read_csv(new["train"] / "metrics.csv")
    assert not new_curves.drop(columns=list(TIME_COLUMNS)).equals(old_curves.drop(columns=list(TIME_COLUMNS)))

    for path in data.glob("train/added_*.npz"):
        path.unlink()
    changed.write_bytes(original)
    back = snakemake(wd, "-n")
    assert "Nothing to be done" in back.stdout + back.stderr, back.stdout[-2000:]


def test_datasets_sharing_clips_share_their_feature_stores(tmp_path):
    a = folder_dataset(tmp_path / "a", {"train": 12, "val": 4, "test": 4}, seed=31)
    b = tmp_path / "b"
    shutil.copytree(a, b)                                        # the same clips elsewhere ...
    extra = write_dataset(tmp_path / "extra", {"val": 1}, 6, 4, 48, 80, ["meeting"], seed=32)[0]
    arrays = dict(np.load(extra))
    arrays["video_id"] = np.array("only_in_b")
    np.savez(b / "val" / "only_in_b.npz", **arrays)               # ... plus one clip of its own
    config = copy.deepcopy(TINY)
    config["data"].update(source=str(a), num_shards=2)
    config["train"]["nproc"] = 1
    wd = copy_workflow(tmp_path / "wf", config)
    assert until_extract(wd).get("extract") > 1

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
    config["features"]["num_frames"] = 5
    assert switch(a).get("extract") == 2
    config["features"]["num_frames"] = TINY["features"]["num_frames"]
    shutil.copytree(a, tmp_path / "a_copy")
    assert switch(tmp_path / "a_copy") == {"prepare": 1}          # a moved dataset: only its manifest is new
    assert folder(a, "train") == folder(tmp_path / "a_copy", "train")        # a model follows content, not place
    assert folder(a, "prepare") != folder(tmp_path / "a_copy", "prepare")
    assert folder(a, "train") != b_train
