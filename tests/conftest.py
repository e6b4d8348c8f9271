"""Shared fixtures: a tiny config, a copy of the workflow in a temporary folder, and one whole workflow run per
session (``finished_workflow``) that tests read, dry-run against, or copy (``clone_workflow``)."""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW_FILES = ("Snakefile", "rules", "workflow_scripts", "config.schema.yaml", "captions", "envs", "profiles")
BIN = Path(sys.executable).parent


def svip(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """The installed ``svip`` command, as a user runs it."""
    return subprocess.run([str(BIN / "svip"), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)

TINY = {
    "data": {"source": "synthetic", "num_shards": 2, "max_persons": 4},
    "synthetic": {"clips": {"train": 12, "val": 4, "test": 4}, "frames": 6, "persons": 4, "height": 48,
                  "width": 80, "categories": ["meeting", "street"], "seed": 3},
    "features": {"backbone": "embedded", "embedded": {"hidden_size": 16, "num_layers": 1, "num_heads": 2,
                                                      "patch_size": 8, "seed": 0},
                 "frame_size": [48, 80], "num_frames": 6, "batch_clips": 4, "roi_samples": 2, "crop_size": 16},
    "model": {"fused_dim": 32, "geometry_dim": 8, "gat_hidden": 16, "gat_layers": 1, "gat_heads": 2, "d_model": 16,
              "temporal_layers": 1, "temporal_heads": 2, "temporal_ffn": 32},
    # The weights' moving average is on, so that every training test (resume, ranks in step, same seed same
    # numbers, loader workers, nodes) covers it too.
    "train": {"seeds": [0], "nproc": 2, "epochs": 2, "batch_size": 4, "accumulation_steps": 1, "lr": 0.001,
              "warmup_steps": 1, "workers": 0, "ema": 0.9},
    "evaluate": {"split": "test"},
}


@pytest.fixture
def tiny_config() -> dict:
    return copy.deepcopy(TINY)


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def copy_workflow(dst: Path, config: dict) -> Path:
    """A copy of the workflow in ``dst`` with ``config`` as its config.yaml."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    write_config(dst / "config.yaml", config)
    return dst


@pytest.fixture
def workflow_dir(tmp_path, tiny_config) -> Path:
    """A copy of the workflow with the tiny config as its config.yaml."""
    return copy_workflow(tmp_path, tiny_config)


def folder_dataset(root: Path, clips: dict, seed: int) -> Path:
    """Tiny synthetic clips written as a dataset folder (``<root>/<split>/*.npz``), as a user's would be."""
    from svip_core.synthetic.generate import write_dataset

    write_dataset(root, clips, 6, 4, 48, 80, ["meeting", "street"], seed=seed)
    return root


# The shared workflow's dataset is split in 3 shards, so that an edit of a few clips touches some, not all.
SHARED_SHARDS = 3


def session_folder(tmp_path_factory) -> Path:
    """A folder every process of this test session sees: pytest-xdist's workers each have a base folder of their
    own, beside each other."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


class SharedWorkflow:
    """The whole workflow run once per test session, in the background from the moment collection shows a test
    that needs it (so no worker idles while it runs), by whichever process asks first; the others find it started.
    Its run's exit status lands in ``rc`` and its output in ``log``, beside the folder."""

    def __init__(self, root: Path):
        self.folder, self.rc, self.log = root / "shared_workflow", root / "shared_workflow.rc", root / "shared_workflow.log"
        self.pid, self.lock = root / "shared_workflow.pid", root / "shared_workflow.lock"

    def start(self) -> None:
        from filelock import FileLock

        with FileLock(str(self.lock)):
            if self.pid.exists():
                return
            data = folder_dataset(self.folder / "data", {"train": 12, "val": 4, "test": 4}, seed=21)
            config = copy.deepcopy(TINY)
            config["data"].update(source=str(data), num_shards=SHARED_SHARDS)
            # One training process: 2-rank DDP under Snakemake is test_hostile's run, under torchrun test_train's.
            config["train"]["nproc"] = 1
            copy_workflow(self.folder, config)
            command = f"{BIN / 'snakemake'} --cores 2 > {self.log} 2>&1; echo $? > {self.rc}.tmp; mv {self.rc}.tmp {self.rc}"
            job = subprocess.Popen(["bash", "-c", command], cwd=self.folder, env=venv_env(), start_new_session=True)
            self.pid.write_text(str(job.pid))

    def wait(self, timeout: float = 900) -> Path:
        self.start()
        deadline = time.monotonic() + timeout
        while not self.rc.exists():
            assert time.monotonic() < deadline, f"the shared workflow did not finish in {timeout} s: {self.log}"
            time.sleep(0.5)
        assert self.rc.read_text().strip() == "0", self.log.read_text()[-4000:]
        return self.folder

    def stop(self) -> None:
        """End a run nobody waited for (a session stopped early), with its jobs."""
        if self.pid.exists() and not self.rc.exists():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(self.pid.read_text()), signal.SIGTERM)


def pytest_collection_modifyitems(items):
    """Test files with the most slow tests first (each file's own order kept): workers then take the long files
    early and the short ones fill in at the end, instead of one worker finishing a long file alone."""
    weight: dict[str, int] = {}
    for item in items:
        weight[item.module.__name__] = weight.get(item.module.__name__, 0) + bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: -weight[item.module.__name__])


def pytest_collection_finish(session):
    if any("finished_workflow" in getattr(item, "fixturenames", ()) for item in session.items):
        SharedWorkflow(session_folder(session.config._tmp_path_factory)).start()


def pytest_sessionfinish(session):
    if not os.environ.get("PYTEST_XDIST_WORKER"):        # the controller: every worker has finished
        SharedWorkflow(session_folder(session.config._tmp_path_factory)).stop()


@pytest.fixture(scope="session")
def finished_workflow(tmp_path_factory) -> Path:
    """The shared workflow, finished (``SharedWorkflow``): the tiny config on a folder of .npz clips (``<wd>/data``,
    20 clips, 3 shards), trained by one process. Tests read it and dry-run edits against it; tests that
    change its data, config or results work on ``clone_workflow``."""
    return SharedWorkflow(session_folder(tmp_path_factory)).wait()


def clone_workflow(src: Path, dst: Path, with_data: bool = False) -> Path:
    """A copy of a finished workflow folder (results and Snakemake's records included) that a test may change.
    ``with_data``: its ``data`` folder too, with the config pointing at the copy (prepare then runs again for the
    new place; the feature stores, models and evaluations are reused, since they follow content)."""
    # Snakemake's locks and run logs (.snakemake/locks, .snakemake/log) belong to the runs in the original folder.
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns("locks", "log"))
    if with_data:
        config = yaml.safe_load((dst / "config.yaml").read_text())
        config["data"]["source"] = str(dst / "data")
        write_config(dst / "config.yaml", config)
    return dst


def venv_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's) with the venv's bin folder first on PATH, as for a user who activated it."""
    return {**(os.environ if env is None else env), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def snakemake(workdir: Path, *args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    env = venv_env(env)
    return subprocess.run([str(BIN / "snakemake"), "--cores", "2", *args], cwd=workdir, env=env, text=True,
                          capture_output=True, timeout=timeout)


def ran_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule of a real run, from Snakemake's 'Finished jobid: N (Rule: R)' lines."""
    counts: dict[str, int] = {}
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("Finished jobid") and "(Rule: " in line:
            rule = line.split("(Rule: ")[1].rstrip(")")
            counts[rule] = counts.get(rule, 0) + 1
    counts.pop("all", None)
    return counts


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts from a dry run's 'Job stats' table."""
    counts, inside = {}, False
    for line in result.stdout.splitlines() + result.stderr.splitlines():
        parts = line.split()
        if line.startswith("job ") and "count" in line:
            inside = True
        elif inside and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                inside = False
            else:
                counts[parts[0]] = int(parts[1])
    return counts


def build_stores(folder: Path, clips: dict[str, int], num_shards: int, features: dict | None = None) -> list[str]:
    """Tiny synthetic clips -> prepare -> embedded backbone -> one Zarr store per shard (the real stage code);
    ``features``: keys of the features section changed from TINY's. Clips of an "unlabelled" split lose their
    label as a user's would come: every other one has no target_index, the rest have -1."""
    import numpy as np

    from svip_core.config import validate_config
    from svip_core.dataset.manifest import prepare_dataset
    from svip_core.dataset.shards import read_shard
    from svip_core.features.backbone import build_embedded
    from svip_core.features.extract import extract_shard
    from svip_core.synthetic.generate import write_dataset

    cfg = validate_config(copy.deepcopy(TINY))
    s, f = cfg["synthetic"], {**cfg["features"], **(features or {})}
    write_dataset(folder / "clips", clips, s["frames"], s["persons"], s["height"], s["width"], s["categories"], s["seed"])
    for k, path in enumerate(sorted((folder / "clips" / "unlabelled").glob("*.npz"))):
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files if name != "target_index" or k % 2}
        np.savez_compressed(path, **{**arrays, **({"target_index": np.int64(-1)} if k % 2 else {})})
    prepare_dataset(folder / "clips", folder / "prepare", num_shards, 10**9, "error")
    backbone = build_embedded(f["embedded"], folder / "backbone")
    stores = []
    for shard in sorted((folder / "prepare" / "shards").glob("*.json")):
        stores.append(str(folder / f"{shard.stem}.zarr"))
        extract_shard(read_shard(shard), stores[-1], f, cfg["data"]["max_persons"], backbone, {})
    return stores


def until_extract(wd: Path, *flags: str) -> dict[str, int]:
    """Run (or with -n, plan) prepare and the feature stores of the working directory's config only (the workflow's
    `features` target); job counts per rule."""
    result = snakemake(wd, *flags, "features")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = planned_jobs(result) if "-n" in flags else ran_jobs(result)
    counts.pop("features", None)
    counts.pop("all", None)
    return counts
