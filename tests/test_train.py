"""Training under real torchrun (2 gloo processes): ranks stay in sync, seeds reproduce, a killed run resumes."""
from __future__ import annotations

import contextlib
from contextlib import nullcontext
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, TINY, build_stores
from safetensors.torch import load_file

from svip_core.config import validate_config
from svip_core.stages import runs
from svip_core.train.loop import TIME_COLUMNS

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """One validation clip: under 2 ranks, one of them validates nothing and must still meet the other's
    collectives. Eight clips without labels (the dataset's unlabelled split) for self-training."""
    return build_stores(tmp_path_factory.mktemp("stores"), {"train": 16, "val": 1, "unlabelled": 8}, num_shards=2)


def launch(stores, out: Path, epochs: int, nproc: int = 2, batch_size: int = 4, lr: float = 0.001,
           **train) -> subprocess.Popen:
    run = next(iter(runs(validate_config(json.loads(json.dumps(TINY)))).values()))
    run["train"].update(epochs=epochs, patience=100, batch_size=batch_size, lr=lr, **train)
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
    return pd.read_csv(out / "metrics.csv").drop(columns=list(TIME_COLUMNS))


# The resume reference: small batches make epochs long enough to kill a job between two of them. It self-trains
# on the unlabelled split (every pseudo label counts), so a resumed run must also resume that stream of clips.
CLEAN = {"epochs": 5, "batch_size": 1, "self_training": {"weight": 1.0, "threshold": 0.0}}


@pytest.fixture(scope="module")
def clean_run(stores, tmp_path_factory) -> Path:
    """One clean 2-rank run, shared: the reference of the killed run and of a forced re-run."""
    out = tmp_path_factory.mktemp("clean")
    assert finish(launch(stores, out, **CLEAN)) == 0, (out / "train.log").read_text()[-2000:]
    return out


def test_two_ranks_hold_identical_weights(clean_run):
    assert "self-training on 8 unlabelled clips" in (clean_run / "train.log").read_text()
    meta = json.loads((clean_run / "model.json").read_text())
    assert meta["world_size"] == 2 and len(set(meta["rank_weight_checksums"])) == 1
    assert curves(clean_run).train_loss.notna().all() and len(curves(clean_run)) == CLEAN["epochs"]
    # The kept epoch: the best val top-1, the lowest val loss among the epochs tied on it.
    kept = curves(clean_run).assign(neg_loss=lambda c: -c.val_loss).sort_values(["val_top1", "neg_loss"]).iloc[-1]
    assert meta["best_epoch"] == kept.epoch


def test_loader_items_are_the_stored_clips_and_workers_deliver_the_same_batches(stores):
    import numpy as np
    import torch
    import zarr

    from svip_core.train.data import StoreClips, clip_loader

    dataset = StoreClips(stores, "train")
    groups = [zarr.open_group(path, mode="r") for path in stores]
    for i in (0, len(dataset) // 2, len(dataset) - 1):
        s, row, _ = dataset.index[i]
        item, g = dataset[i], groups[s]
        assert item["visual"].dtype == torch.float16                   # fp16 until the model's device
        assert np.array_equal(item["visual"].numpy(), g["visual"][row])
        assert np.array_equal(item["geometry"].numpy(), g["geometry"][row])
        assert np.array_equal(item["valid"].numpy(), g["person_mask"][row])
        assert int(item["target"]) == int(g["target_index"][row]) and g["split"][row] == "train"
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(3)).tolist()
    cpu = torch.device("cpu")
    inline = list(clip_loader(dataset, 3, 0, cpu, order))
    for _ in range(2):                                                 # persistent workers: a second epoch
        pooled = list(clip_loader(dataset, 3, 2, cpu, order))
        assert len(pooled) == len(inline) == -(-len(dataset) // 3)
        for a, b in zip(inline, pooled):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.cat([b["item"] for b in inline]).tolist() == order


# One process (no DDP wrapper), its clips read inline: a cheap run for the tests that need one of their own.
INLINE = {"epochs": 2, "nproc": 1, "workers": 0}


@pytest.fixture(scope="module")
def inline_run(stores, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("inline")
    assert finish(launch(stores, out, **INLINE)) == 0, (out / "train.log").read_text()[-2000:]
    return out


def same_run(a: Path, b: Path) -> None:
    """Two runs ended with the same curves (times aside) and the same weights."""
    pd.testing.assert_frame_equal(curves(a), curves(b))
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


@pytest.mark.slow
def test_loader_workers_and_deterministic_kernels_leave_every_number_unchanged(stores, inline_run, tmp_path):
    """One process trains to the same curves and weights with its clips read inline or by two worker processes,
    with or without deterministic algorithms."""
    pooled = tmp_path / "pooled"
    pooled.mkdir()
    train = {**INLINE, "workers": 2, "deterministic": True}
    assert finish(launch(stores, pooled, **train)) == 0, (pooled / "train.log").read_text()[-2000:]
    assert "2 loader worker(s)" in (pooled / "train.log").read_text()
    same_run(inline_run, pooled)
    assert json.loads((inline_run / "model.json").read_text())["world_size"] == 1


def wait_for_state(job: subprocess.Popen, state: Path, ready) -> dict:
    """The checkpoint's state once ``ready(state)`` holds, while the run goes on."""
    deadline = time.time() + 300
    while time.time() < deadline:
        assert job.poll() is None, "training ended before the test could stop it"
        with contextlib.suppress(OSError, ValueError):
            found = json.loads(state.read_text())
            if ready(found):
                return found
        time.sleep(0.02)
    raise AssertionError("no such checkpoint in time")


@pytest.mark.slow
def test_a_stopped_then_killed_run_resumes_inside_epochs_and_ends_with_the_same_metrics(stores, clean_run, tmp_path):
    """SIGTERM to torchrun inside epoch 2 (SLURM's preemption signal reaches the job's processes; torchrun passes it
    to its ranks): the ranks finish their step, agree, write a checkpoint at it and stop. The re-run resumes at that
    sample; SIGKILL to torchrun and both ranks after a step checkpoint (every 3 steps, 8 per epoch) inside epoch 4
    or later; the last run resumes at that batch and ends with the clean run's weights, curves and TensorBoard."""
    out = tmp_path / "interrupted"
    out.mkdir()
    state = out / "checkpoints" / "state.json"
    job = launch(stores, out, **CLEAN, checkpoint_every=3)
    wait_for_state(job, state, lambda s: s["epoch"] >= 1)
    job.send_signal(signal.SIGTERM)
    finish(job)
    stopped = json.loads(state.read_text())
    assert stopped["stopped_by"] == "SIGTERM", stopped
    assert "SIGTERM: checkpoint written " in (out / "train.log").read_text()

    job = launch(stores, out, **CLEAN, checkpoint_every=3)
    wait_for_state(job, state, lambda s: s["epoch"] >= 3 and s.get("batches"))
    kill_tree(job)                               # torchrun and both ranks, mid-run
    done = json.loads(state.read_text())
    assert 3 <= done["epoch"] < CLEAN["epochs"] and not (out / "model.safetensors").exists()
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out / "tensorboard")) as writer:      # as if it had logged the next epoch, then died
        writer.add_scalar("val_top1", -1.0, done["epoch"] + 1)

    assert finish(launch(stores, out, **CLEAN, checkpoint_every=3)) == 0
    resumed = [line for line in (out / "train.log").read_text().splitlines() if " resuming " in line]
    assert len(resumed) == 2 and "where SIGTERM stopped it" in resumed[0] and "resuming at batch " in resumed[1]
    same_run(clean_run, out)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("val_top1")]
    assert logged == [(epoch, pytest.approx(top1)) for epoch, top1 in enumerate(curves(clean_run).val_top1, 1)]


def test_the_same_seed_gives_the_same_run_and_a_finished_run_is_not_resumed(stores, inline_run, tmp_path):
    """My run again (snakemake -R train) in its finished folder trains from scratch, to the same curves and
    weights: the same seed gives the same numbers. The log kept across attempts starts afresh with it."""
    mine = tmp_path / "mine"
    shutil.copytree(inline_run, mine)
    assert finish(launch(stores, mine, **INLINE)) == 0
    assert "that run finished" in (mine / "train.log").read_text()
    attempts = (mine / "logs" / "train_attempts.log").read_text()
    assert "that run finished" in attempts and attempts.count(" clips to train on") == 1, attempts
    same_run(inline_run, mine)
    assert json.loads((mine / "checkpoints" / "state.json").read_text())["finished"] is True


def test_another_runs_checkpoint_is_refused(stores, clean_run, inline_run, tmp_path):
    """A checkpoint is resumed only by the run that wrote it: another run's job in my folder (a stale folder, a
    copy, a bug in naming) must not resume my checkpoint, and must end exactly as it does in a folder of its own."""
    mine = tmp_path / "mine"
    shutil.copytree(clean_run, mine)
    (mine / "checkpoints" / "state.json").write_text(json.dumps(
        {**json.loads((mine / "checkpoints" / "state.json").read_text()), "finished": False, "epoch": 2}))
    assert finish(launch(stores, mine, **INLINE)) == 0                    # the inline run's job, in my folder
    log = (mine / "train.log").read_text()
    assert "not resuming the checkpoint" in log and "written by another run" in log
    same_run(inline_run, mine)


AGREE = """
import json, sys
import torch.distributed as dist
from svip_core.train.checkpoint import agreed_checkpoint
dist.init_process_group("gloo")
rank = dist.get_rank()
checkpoint, _ = agreed_checkpoint(sys.argv[1 + rank], "run-a")          # the folder as this rank sees it
with open(sys.argv[3 + rank], "w") as out:
    json.dump({"epoch": checkpoint["state"]["epoch"], "rng_epoch": int(checkpoint["rng"][rank]["epoch"])}, out)
dist.destroy_process_group()
"""


def test_every_rank_resumes_what_rank_0_read(tmp_path):
    """Rank 1's view of the checkpoint folder lags one epoch behind rank 0's (a shared filesystem's cache): both
    ranks resume rank 0's epoch, each with its own RNG state of that epoch."""
    import torch

    from svip_core.train.checkpoint import save_checkpoint, save_rng

    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    views = [tmp_path / "rank0_view", tmp_path / "rank1_view"]
    for folder, epoch in zip(views, (3, 2)):
        for rank in (0, 1):
            save_rng(folder, rank, epoch)
        save_checkpoint(folder, model, optimizer, scheduler, scaler, {"epoch": epoch, "identity": "run-a"})
    script = tmp_path / "agree.py"
    script.write_text(AGREE)
    outs = [tmp_path / "rank0.json", tmp_path / "rank1.json"]
    job = subprocess.Popen([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(script), *views, *outs],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert finish(job, timeout=120) == 0, job.stderr.read()[-3000:]
    assert [json.loads(out.read_text()) for out in outs] == [{"epoch": 3, "rng_epoch": 3}] * 2


def test_train_clips_keeps_the_first_clips_by_video_id_and_refuses_more_than_there_are(stores):
    """train.clips = n: the split's first n clips by video id, across the stores (the synthetic benchmarks' n
    training clips are the first n of any larger set, so a learning curve needs one extraction)."""
    from svip_core.train.data import StoreClips

    every = StoreClips(stores, "train")
    ids = sorted(every.describe(i)["video_id"] for i in range(len(every)))
    first = StoreClips(stores, "train", first=5)
    assert sorted(first.describe(i)["video_id"] for i in range(len(first))) == ids[:5]
    assert first[0]["geometry"].shape == every[0]["geometry"].shape
    with pytest.raises(ValueError, match=r"train.clips = 17: the stores .* hold 16 train clips. Fix: set train.clips"):
        StoreClips(stores, "train", first=17)


def test_facing_directions_learn_from_grid_stores_and_evaluate_as_trained(tmp_path):
    """Stores with each box's RoI samples side by side (features.roi_pooling: grid), a model with facing
    directions taught by the tracks (model.looks_at, train.facing_weight): it trains, and evaluation rebuilds
    from model.json the model that fuses the cells' mean and reads the grid's layout for the directions."""
    import torch

    from svip_core.evaluate.evaluation import load_ranker, score_split
    from svip_core.train.data import StoreClips
    from svip_core.train.loop import _forward, train

    stores = build_stores(tmp_path / "grid", {"train": 8, "val": 2}, num_shards=1, features={"roi_pooling": "grid"})
    run = next(iter(runs(validate_config(json.loads(json.dumps(TINY)))).values()))
    run["model"]["looks_at"] = 2
    run["train"].update(epochs=3, patience=100, batch_size=4, facing_weight=1.0, workers=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(stores, tmp_path / "run", run["model"], run["train"])
    finally:
        torch.set_num_threads(threads)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    width = TINY["features"]["embedded"]["hidden_size"]
    assert meta["visual_dim"] == 4 * width and meta["features"]["features"]["roi_pooling"] == "grid"
    model = load_ranker(tmp_path / "run")
    assert model.fuse[0].in_features == width + run["model"]["geometry_dim"]
    assert model.facing.read.in_features == 4 * width
    # The walking loss joins the training loss only (validation's, which early stopping reads, stays the ranking loss).
    clips = StoreClips(stores, "train")
    batch = {k: torch.stack([torch.as_tensor(clips[i][k]) for i in range(4)]) for k in ("visual", "geometry", "valid", "target")}
    total = {}
    for mode in ("train", "eval"):
        getattr(model, mode)()
        for weight in (0.0, 1.0):
            torch.manual_seed(0)
            total[mode, weight] = _forward(model, batch, {**run["train"], "facing_weight": weight}, nullcontext())[3]["total"]
    assert total["train", 1.0] > total["train", 0.0] and total["eval", 1.0] == total["eval", 0.0]
    model.eval()
    scores = score_split(model, StoreClips(stores, "val"))["scores"]
    assert scores.shape[0] == 2 and torch.isfinite(torch.as_tensor(scores)).any(1).all()


def test_self_training_learns_from_the_clips_after_the_labelled_ones_without_reading_their_labels(stores, tmp_path):
    """train.self_training: the training clips after the first train.clips are unlabelled ones (exactly those,
    beside the unlabelled split's 8); two ranks learn from them in step; and what their stored labels say changes
    nothing."""
    import numpy as np
    import zarr

    from svip_core.train.data import StoreClips

    first, rest = StoreClips(stores, "train", first=8), StoreClips(stores, "train", first=8, rest=True)
    every = StoreClips(stores, "train")
    ids = lambda clips: sorted(clips.describe(i)["video_id"] for i in range(len(clips)))  # noqa: E731
    assert ids(first) + ids(rest) == ids(every) and len(ids(rest)) == 8

    # Every pseudo label counts (threshold 0), so the unlabelled clips surely enter the loss.
    st = {"clips": 8, "self_training": {"weight": 1.0, "threshold": 0.0}}
    out = tmp_path / "two_ranks"
    assert finish(launch(stores, out, epochs=2, **st)) == 0, (out / "train.log").read_text()[-2000:]
    text = (out / "train.log").read_text()
    assert "self-training on 16 unlabelled clips" in text
    assert "epoch 2: 1 of the unlabelled clips were confident enough to learn from" in text
    meta = json.loads((out / "model.json").read_text())
    assert meta["train_clips"] == 8 and len(set(meta["rank_weight_checksums"])) == 1

    # The same run on copies of the stores whose unlabelled clips name other VIPs: the same weights.
    relabelled = []
    for path in stores:
        copy = tmp_path / "relabelled" / Path(path).name
        shutil.copytree(path, copy)
        group = zarr.open_group(str(copy), mode="r+")
        unlabelled = set(ids(rest))
        targets = group["target_index"][:]
        for row, (vid, split) in enumerate(zip(group["video_id"][:], group["split"][:])):
            if split == "train" and str(vid) in unlabelled:
                present = np.flatnonzero(group["person_mask"][row].any(0))
                targets[row] = present[(list(present).index(targets[row]) + 1) % len(present)]
        group["target_index"][:] = targets
        relabelled.append(str(copy))
    again = tmp_path / "relabelled_run"
    assert finish(launch(relabelled, again, epochs=2, **st)) == 0
    assert json.loads((again / "model.json").read_text())["rank_weight_checksums"] == meta["rank_weight_checksums"]


def test_a_datasets_unlabelled_split_is_accepted_and_stored_without_labels(stores):
    """Clips under unlabelled/ (no target_index, or -1: ``build_stores``) pass validation and reach the stores
    with target -1 (the clean run self-trains on them, above); a labelled split's clip marked -1 is refused,
    naming the way out."""
    import numpy as np
    import pandas as pd
    import zarr

    from svip_core.dataset.clip import ClipError, clip_from_arrays
    from svip_core.train.data import StoreClips

    data = Path(stores[0]).parent
    manifest = pd.read_parquet(data / "prepare" / "manifest.parquet")
    assert (manifest.verdict == "accepted").all() and (manifest.split == "unlabelled").sum() == 8
    groups = [zarr.open_group(path, mode="r") for path in stores]
    stored = [int(t) for g in groups for s, t in zip(g["split"][:], g["target_index"][:]) if s == "unlabelled"]
    assert len(StoreClips(stores, "unlabelled")) == 8 and stored == [-1] * 8

    with np.load(sorted((data / "clips" / "train").glob("*.npz"))[0], allow_pickle=False) as clip:
        marked = {**clip, "target_index": np.int64(-1)}
    with pytest.raises(ClipError, match="marks a clip without a label.*unlabelled/"):
        clip_from_arrays("train/marked.npz", marked)
    with pytest.raises(ClipError, match="names no VIP.*unlabelled/"):
        clip_from_arrays("train/unnamed.npz", {k: v for k, v in marked.items() if k != "target_index"})
    assert clip_from_arrays("unlabelled/marked.npz", marked, labelled=False).target_index is None
