"""Training under real torchrun (2 gloo processes): ranks stay in sync, seeds reproduce, a killed run resumes."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from conftest import ROOT, TINY, build_stores
from svip_core.stages import runs, validate_config

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return build_stores(tmp_path_factory.mktemp("stores"), {"train": 16, "val": 6}, num_shards=2)


def launch(stores, out: Path, epochs: int, nproc: int = 2, batch_size: int = 4, lr: float = 0.001) -> subprocess.Popen:
    run = next(iter(runs(validate_config(json.loads(json.dumps(TINY)))).values()))
    run["train"].update(epochs=epochs, patience=100, batch_size=batch_size, lr=lr)
    stage = {"config": {"model": run["model"], "train": run["train"]}}
    return subprocess.Popen([str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}",
                             str(ROOT / "workflow_scripts/train.py"), "--config", json.dumps(stage), "--stores", *stores,
                             "--out-dir", str(out), "--log-file", str(out / "train.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def kill_tree(job: subprocess.Popen) -> None:
    """SIGKILL torchrun and its ranks. The ranks run in sessions of their own (torchrun starts them with
    start_new_session), so killing torchrun's process group alone would leave them training."""
    import psutil

    procs = [psutil.Process(job.pid)]
    procs += procs[0].children(recursive=True)
    for p in procs:
        p.kill()
    psutil.wait_procs(procs, timeout=30)
    job.wait()


def finish(job: subprocess.Popen, timeout: int = 240) -> int:
    """Wait for a torchrun job; on timeout kill it and its ranks so nothing outlives the test."""
    try:
        return job.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(job)
        raise


def curves(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "metrics.csv").drop(columns="seconds")


def test_two_ranks_hold_identical_weights_and_the_same_seed_gives_the_same_loss(stores, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        out.mkdir()
        assert finish(launch(stores, out, epochs=2)) == 0, (out / "train.log").read_text()[-2000:]
    meta = json.loads((a / "model.json").read_text())
    assert meta["world_size"] == 2 and len(set(meta["rank_weight_checksums"])) == 1
    pd.testing.assert_frame_equal(curves(a), curves(b))
    assert curves(a).train_loss.notna().all()
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_a_killed_run_resumes_and_ends_with_the_same_metrics(stores, tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for out in (clean, killed):
        out.mkdir()
    # Small batches make epochs long enough to kill the job between two of them.
    assert finish(launch(stores, clean, epochs=8, batch_size=1)) == 0

    job = launch(stores, killed, epochs=8, batch_size=1)
    state = killed / "checkpoints" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (state.exists() and json.loads(state.read_text())["epoch"] >= 2):
        assert job.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    kill_tree(job)                               # torchrun and both ranks, mid-run
    done = json.loads(state.read_text())["epoch"]
    assert 2 <= done < 8 and not (killed / "model.safetensors").exists()

    assert finish(launch(stores, killed, epochs=8, batch_size=1)) == 0
    assert "resuming after epoch" in (killed / "train.log").read_text()
    pd.testing.assert_frame_equal(curves(clean), curves(killed))
    wa, wb = load_file(clean / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_another_runs_checkpoint_is_refused_and_a_finished_run_is_not_resumed(stores, tmp_path):
    """A checkpoint is resumed only by the run that wrote it, and only when that run was interrupted."""
    mine, other = tmp_path / "mine", tmp_path / "other"
    for out in (mine, other):
        out.mkdir()
    assert finish(launch(stores, mine, epochs=3)) == 0
    first = load_file(mine / "model.safetensors")
    assert finish(launch(stores, other, epochs=3, lr=0.003)) == 0          # the other run, trained cleanly

    # My run again (snakemake -R train): it finished before, so it trains from scratch, to the same weights.
    assert finish(launch(stores, mine, epochs=3)) == 0
    assert "that run finished" in (mine / "train.log").read_text()
    again = load_file(mine / "model.safetensors")
    assert all((first[k] == again[k]).all() for k in first)
    assert json.loads((mine / "checkpoints" / "state.json").read_text())["finished"] is True

    # The other run's job in my folder (a stale folder, a copy, a bug in naming): it must not resume my
    # checkpoint, and must end exactly as it does in a folder of its own.
    (mine / "checkpoints" / "state.json").write_text(json.dumps(
        {**json.loads((mine / "checkpoints" / "state.json").read_text()), "finished": False, "epoch": 2}))
    assert finish(launch(stores, mine, epochs=3, lr=0.003)) == 0
    log = (mine / "train.log").read_text()
    assert "not resuming the checkpoint" in log and "written by another run" in log
    pd.testing.assert_frame_equal(curves(mine), curves(other))
    wa, wb = load_file(mine / "model.safetensors"), load_file(other / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)
