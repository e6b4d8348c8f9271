"""Hostile inputs: every bad clip is refused with its exact reason, and the good clips beside it still run."""
from __future__ import annotations

import json

import hostile_corpus
import numpy as np
import pandas as pd
import pytest
from conftest import snakemake, svip, write_config

from svip_core.config import load_config
from svip_core.dataset.clip import ClipError, inspect_clip
from svip_core.dataset.manifest import DatasetError, prepare_dataset
from svip_core.report import figures
from svip_core.stages import stage_dir


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus") / "data"
    expected, good = hostile_corpus.build(folder)
    return folder, expected, good


def test_every_hostile_clip_gets_its_reason(corpus):
    _, expected, good = corpus
    for path, (field, words) in expected.items():
        with pytest.raises(ClipError) as err:
            inspect_clip(path)
        assert err.value.field == field, (path, str(err.value))
        assert words in err.value.problem, (path, str(err.value))
        assert str(err.value).startswith(path) and "Fix:" in str(err.value)
    for path in good:
        assert inspect_clip(path).video_id


def test_prepare_keeps_the_good_and_lists_every_bad_file(corpus, tmp_path):
    folder, expected, good = corpus
    manifest = prepare_dataset(folder, tmp_path, num_shards=4, max_array_bytes=10**9, on_duplicate_id="error")
    assert sorted(manifest[manifest.verdict == "accepted"].path) == sorted(good)
    rejected = manifest[manifest.verdict == "rejected"].set_index("path")
    assert sorted(rejected.index) == sorted(expected)
    for path, (field, words) in expected.items():
        assert rejected.loc[path, "reason"].startswith(field + ":") and words in rejected.loc[path, "reason"]
    assert set(manifest.columns) >= {"path", "video_id", "split", "T", "N", "persons_present", "verdict",
                                     "reason", "content_hash"}


def test_svip_validate_names_bad_files_and_exits_1_without_traceback(corpus):
    folder, expected, good = corpus
    result = svip("validate", folder)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    for path in expected:
        assert any(line.startswith("rejected") and path in line for line in result.stdout.splitlines()), path
    assert not any(line.startswith("accepted") for line in result.stdout.splitlines())   # only with --verbose
    assert result.stdout.splitlines()[-1] == f"{len(expected) + len(good)} clips: {len(good)} accepted, " \
                                             f"{len(expected)} rejected"
    verbose = svip("validate", "--verbose", folder)
    assert sum(line.startswith("accepted") for line in verbose.stdout.splitlines()) == len(good)
    as_json = svip("validate", "--json", folder)
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and report["rejected"] == len(expected)
    assert sorted(r["path"] for r in report["rejections"]) == sorted(expected)
    good_file = svip("validate", folder / "train" / "good one.npz")
    assert good_file.returncode == 0


def test_duplicate_ids_under_the_drop_policy_keep_the_first_copy(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    a = hostile_corpus.good(1, "same")
    np.savez(tmp_path / "train" / "a.npz", **a)
    np.savez(tmp_path / "train" / "b.npz", **a)          # duplicate within train
    np.savez(tmp_path / "val" / "c.npz", **a)            # leak into val
    np.savez(tmp_path / "val" / "d.npz", **hostile_corpus.good(2, "other"))
    manifest = prepare_dataset(tmp_path, tmp_path / "out", 2, 10**9, "drop").set_index("path")
    # One train copy is kept: the one with the smaller content hash, whatever the names.
    copies = manifest.loc[[str(tmp_path / "train" / n) for n in ("a.npz", "b.npz")]].sort_values("content_hash")
    assert list(copies.verdict) == ["accepted", "rejected"] and copies.reason.iloc[1].startswith("video_id: duplicate of")
    assert manifest.loc[str(tmp_path / "val" / "c.npz"), "reason"].startswith("video_id: leak of")


@pytest.mark.slow
def test_the_workflow_trains_on_the_good_clips_and_reports_the_bad(corpus, workflow_dir, tiny_config, tmp_path,
                                                                     finished_workflow):
    """The verdicts travel through a real run up to the model (one epoch, on 2 ranks: `svip torchrun` under
    Snakemake); the run, though it succeeds, ends by saying how many clips it left out and where the reasons
    are, the headline says it too, and the report stage's table of them names every bad file. The run is also
    the reduced-precision one: the backbone under bf16, the ranker under fp16 with loss scaling, as on GPUs."""
    folder, expected, good = corpus
    tiny_config["data"].update(source=str(folder), num_shards=1)
    tiny_config["features"]["precision"] = "bf16"
    tiny_config["train"].update(nproc=2, epochs=1, precision="fp16")
    write_config(workflow_dir / "config.yaml", tiny_config)
    config = load_config(workflow_dir / "config.yaml")
    model = stage_dir(config, "train") / "model.safetensors"
    result = snakemake(workflow_dir, str(model))
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = workflow_dir / stage_dir(config, "prepare") / "manifest.parquet"
    assert (pd.read_parquet(manifest).verdict == "accepted").sum() == len(good)
    meta = json.loads((workflow_dir / model).with_name("model.json").read_text())
    assert meta["world_size"] == 2 and meta["precision"] == "fp16" and meta["features"]["features"]["precision"] == "bf16"
    assert pd.read_csv((workflow_dir / model).with_name("metrics.csv"))[["train_loss", "val_loss"]].notna().all().all()
    # The job's 2 threads (Snakemake's OMP_NUM_THREADS) shared by its 2 ranks: each spinning 2 threads on 2 cores
    # made a step several times slower.
    assert "1 thread(s) per process" in (workflow_dir / model).parent.joinpath("logs", "train.log").read_text()
    total, prepare = len(expected) + len(good), stage_dir(config, "prepare")
    assert result.stdout.splitlines()[-1] == (
        f"svip: {len(expected)} of {total} clips rejected: the reasons are in {prepare}/logs/prepare.log and the "
        f"report's rejected_clips.html (`svip validate {folder}` lists them)")
    metrics = str(next(finished_workflow.glob("results/evaluate/*/metrics.json")))
    headline = figures.headline(metrics, {"full/seed0": metrics}, manifest, "results/report/h/rejected_clips.html")
    assert headline["text"].endswith(f"; {len(expected)} of {total} clips rejected, see "
                                     f"results/report/h/rejected_clips.html")
    figures.rejected_table(manifest, tmp_path / "rejected_clips.html")
    html = (tmp_path / "rejected_clips.html").read_text()
    for path in expected:
        assert path in html.replace("&amp;", "&")


def test_the_same_clip_under_another_id_is_a_leak(tmp_path):
    """Ids alone miss a copy saved under a new video_id (and another compression): content catches it."""
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    a = hostile_corpus.good(1, "original")
    np.savez(tmp_path / "train" / "a.npz", **a)
    np.savez_compressed(tmp_path / "val" / "renamed.npz", **{**a, "video_id": np.array("renamed")})
    np.savez(tmp_path / "val" / "d.npz", **hostile_corpus.good(2, "other"))
    with pytest.raises(DatasetError, match="leak") as err:
        prepare_dataset(tmp_path, tmp_path / "out", 2, 10**9, "error")
    assert "a.npz" in str(err.value) and "renamed.npz" in str(err.value)
    manifest = prepare_dataset(tmp_path, tmp_path / "out", 2, 10**9, "drop").set_index("path")
    assert manifest.loc[str(tmp_path / "train" / "a.npz"), "verdict"] == "accepted"
    assert manifest.loc[str(tmp_path / "val" / "renamed.npz"), "reason"].startswith("payload_hash: leak of")
    assert manifest.loc[str(tmp_path / "val" / "d.npz"), "verdict"] == "accepted"

    # A test clip copied to unlabelled/ without its label is the same clip: a leak into self-training.
    (tmp_path / "unlabelled").mkdir()
    unlabelled = {k: v for k, v in hostile_corpus.good(2, "other").items() if k != "target_index"}
    np.savez(tmp_path / "unlabelled" / "d copy.npz", **{**unlabelled, "video_id": np.array("copy")})
    manifest = prepare_dataset(tmp_path, tmp_path / "out", 2, 10**9, "drop").set_index("path")
    assert manifest.loc[str(tmp_path / "val" / "d.npz"), "verdict"] == "accepted"
    assert manifest.loc[str(tmp_path / "unlabelled" / "d copy.npz"), "reason"].startswith("payload_hash: leak of")


def test_a_box_outside_the_frame_is_named_by_frame_slot_and_box_with_the_count(tmp_path):
    clip = hostile_corpus.good(5, "astray")
    slot = int(clip["target_index"])
    clip["person_mask"][[2, 4], slot] = True
    clip["frame_mask"][[2, 4]] = True
    clip["bboxes"][[2, 4], slot] = [500, 5, 600, 20]
    (tmp_path / "train").mkdir()
    np.savez(tmp_path / "train" / "astray.npz", **clip)
    result = svip("validate", tmp_path / "train" / "astray.npz")
    assert result.returncode == 1 and result.stdout.splitlines()[0] == (
        f"rejected  {tmp_path / 'train' / 'astray.npz'}  bboxes: a valid person's box lies outside the 80x48 frame "
        f"(first at frame 2, slot {slot}: [500, 5, 600, 20]; 2 such boxes in all). Fix: boxes must be pixels of the "
        f"clip's own frame size")
