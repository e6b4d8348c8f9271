"""The real workflow, end to end, on a tiny config: Snakemake, torchrun (2 gloo processes), Zarr, HF DINOv2."""
from __future__ import annotations

import json
import os
import subprocess

import pandas as pd
import pytest
import yaml
import zarr
from conftest import BIN, clone_workflow, ran_jobs, snakemake, write_config

from svip_core.config import load_config
from svip_core.stages import STAGE_DIRS, all_stage_hashes, runs, stage_dir


@pytest.fixture(scope="module")
def finished_run(finished_workflow):
    """The whole workflow run once (conftest); the tests below read what it left."""
    wd = finished_workflow
    hashes = all_stage_hashes(load_config(wd / "config.yaml"))
    dirs = {s: wd / "results" / STAGE_DIRS[s] / h for s, h in hashes.items()}
    return wd, dirs


def test_every_stage_writes_its_hash_folder_with_config(finished_run):
    _, dirs = finished_run
    for stage, folder in dirs.items():
        assert (folder / "config.json").is_file(), stage
        recorded = json.loads((folder / "config.json").read_text())
        assert recorded["stage"] == stage


def test_job_logs_hold_plain_progress_lines_not_redrawn_bars(finished_run):
    """Off a terminal, progress is a log line now and then; a carriage return would make a log file one long line."""
    wd, dirs = finished_run
    logs = sorted((wd / "results").rglob("logs/*.log"))
    assert logs
    for log in logs:
        assert "\r" not in log.read_text(), log
    train_log = (dirs["train"] / "logs" / "train.log").read_text()
    assert "progress: epoch 1/" in train_log
    extract_logs = [p.read_text() for p in (dirs["extract"] / "logs").glob("*.log") if p.name != "backbone.log"]
    assert extract_logs and all("progress: extract" in text for text in extract_logs)


def test_manifest_and_feature_stores_agree(finished_run):
    _, dirs = finished_run
    manifest = pd.read_parquet(dirs["prepare"] / "manifest.parquet")
    assert (manifest.verdict == "accepted").all() and len(manifest) == 20
    stores = sorted(dirs["extract"].glob("*.zarr"))
    assert len(stores) == manifest.shard.nunique()
    total = 0
    for store in stores:
        g = zarr.open_group(store, mode="r")
        V = g["visual"].shape[0]
        total += V
        assert g["visual"].shape == (V, 6, 4, 16) and g["geometry"].shape[:3] == (V, 6, 4)
        assert g.attrs["complete"] and g.attrs["shard_key"] == store.stem
        assert set(g["video_id"][:]) <= set(manifest.video_id)
        assert g["person_mask"][:].any(axis=1)[range(V), g["target_index"][:]].all()
    assert total == len(manifest)


def test_train_and_evaluate_outputs(finished_run):
    _, dirs = finished_run
    curves = pd.read_csv(dirs["train"] / "metrics.csv")
    assert list(curves.epoch) == [1, 2] and curves.train_loss.notna().all()
    assert json.loads((dirs["train"] / "model.json").read_text())["world_size"] == 1
    metrics = json.loads((dirs["evaluate"] / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["clips"] == 4
    top1 = metrics["model"]["overall"]["top1"]
    assert 0 <= top1["ci95"][0] <= top1["mean"] <= top1["ci95"][1] <= 1
    for k in (1, 2, 3, 4, 5):
        assert (f"cmc@{k}" if k > 1 else "top1") in metrics["model"]["overall"]
    assert set(metrics["baselines"]) == {"random", "largest_box", "most_central", "longest_visible",
                                         "most_motion", "least_motion", "second_least_motion",
                                         "closest_to_all_at_end"}
    assert set(metrics["model"]["by_people_count"]) <= {"1", "2", "3", "4"} and metrics["model"]["by_category"]
    # With at most 4 people, CMC@4 is certain.
    assert metrics["model"]["overall"]["cmc@4"]["mean"] == pytest.approx(1.0)


def test_report_html_and_nothing_left_to_do(finished_run):
    wd, dirs = finished_run
    html = dirs["report"] / "report.html"
    result = snakemake(wd, "--report", str(html))
    assert result.returncode == 0, result.stderr[-3000:]
    text = html.read_text()
    assert "top1_vs_baselines.png" in text and "rejected_clips.html" in text
    again = snakemake(wd, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_old_results_are_reused_when_the_config_goes_back(finished_run, tmp_path):
    wd = clone_workflow(finished_run[0], tmp_path / "wf")
    dirs = {s: wd / d.relative_to(finished_run[0]) for s, d in finished_run[1].items()}
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    cfg["train"]["epochs"] = 1
    edited = write_config(wd / "one_epoch.yaml", cfg)
    new_train = dirs["train"].parent / all_stage_hashes(load_config(edited))["train"]
    assert new_train != dirs["train"]
    # The edit reaches the model (evaluate and report only follow it).
    result = snakemake(wd, str(new_train.relative_to(wd) / "model.safetensors"), "--configfile", str(edited))
    assert result.returncode == 0, result.stderr[-3000:]
    assert ran_jobs(result) == {"train": 1} and (new_train / "model.safetensors").exists()
    assert (dirs["train"] / "model.safetensors").exists()       # the old config's results stay on disk
    back = snakemake(wd, "-n")                                  # and count as done for the original config
    assert "Nothing to be done" in back.stdout + back.stderr


def html_table(path) -> pd.DataFrame:
    """A table the report wrote with pandas' to_html (well-formed XML), as strings."""
    import xml.etree.ElementTree as ET

    table = ET.parse(path).getroot()
    header = [th.text for th in table.iter("th")]
    rows = [[td.text for td in tr.iter("td")] for tr in table.find("tbody").iter("tr")]
    return pd.DataFrame(rows, columns=header)


def test_a_learning_curve_adds_the_full_model_at_each_size_and_the_report_draws_it(finished_run, tmp_path):
    """`learning_curve: [n]` trains and evaluates the full model on the first n training clips only (the
    existing runs are reused) and the report tables test top-1 per training-set size; no ablation row for it."""
    wd = clone_workflow(finished_run[0], tmp_path / "wf")
    layer = write_config(wd / "curve.yaml", {"learning_curve": [5]})
    result = snakemake(wd, "--configfile", str(layer))
    assert result.returncode == 0, result.stderr[-3000:]
    assert ran_jobs(result) == {"train": 1, "evaluate": 1, "report": 1}
    config = load_config(wd / "config.yaml", [layer])
    report = stage_dir(config, "report", wd / "results")
    table = html_table(report / "learning_curve.html")
    full_size = json.loads((finished_run[1]["train"] / "model.json").read_text())["train_clips"]
    assert table.train_clips.tolist() == ["5", str(full_size)] and full_size > 5 and table.seeds.tolist() == ["1", "1"]
    assert table.top1_mean.astype(float).between(0, 1).all()
    assert html_table(report / "ablations.html").variant.tolist() == ["full"]
    curve_run = stage_dir(runs(config)["full@5/seed0"], "train", wd / "results")
    assert json.loads((curve_run / "model.json").read_text())["train_clips"] == 5


def chromium() -> str:
    """Debian's Chromium; installed here when missing and we are root (as in CI)."""
    import os
    import shutil
    import subprocess

    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"], capture_output=True,
                       env=env)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("Debian's chromium is not installed and cannot be installed without root")
    return found


@pytest.mark.slow
def test_the_report_opens_in_headless_chromium_with_every_section(finished_run, tmp_path):
    import subprocess

    import conftest

    wd, dirs = finished_run
    html = dirs["report"] / "report.html"
    if not html.exists():
        assert snakemake(wd, "--report", str(html)).returncode == 0
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000"]
    dom = subprocess.run(flags + ["--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=120).stdout
    for section in ("Training", "Evaluation", "Data", "Gallery", "Workflow", "SVIP ranks the people"):
        assert section in dom, section
    # The landing page opens on the result: the headline precedes the description, with the metrics' figures.
    headline = json.loads((dirs["report"] / "headline.json").read_text())
    metrics = json.loads(next(dirs["evaluate"].rglob("metrics.json")).read_text())
    assert f"Top-1 {metrics['model']['overall']['top1']['mean']:.2f} [" in headline["text"]
    assert headline["text"] in dom and dom.index(headline["text"]) < dom.index("SVIP ranks the people")
    shot = conftest.ROOT / "results" / "report_screenshot.png"
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    subprocess.run(flags + ["--window-size=1400,1000", f"--screenshot={shot}", html.as_uri()], capture_output=True,
                   timeout=120)
    assert shot.stat().st_size > 10_000


def test_the_venvs_snakemake_runs_jobs_without_activating_the_venv(workflow_dir):
    """A bare PATH (no venv on it, as after opening a new shell): jobs still find the venv's python and svip."""
    config = load_config(workflow_dir / "config.yaml")
    target = f"{stage_dir(config, 'prepare')}/manifest.parquet"
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
    result = subprocess.run([str(BIN / "snakemake"), "--cores", "1", target], cwd=workflow_dir, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workflow_dir / target).is_file()
