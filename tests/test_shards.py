"""Content-addressed shards: adding one video re-extracts exactly one shard's store."""
from __future__ import annotations

import numpy as np

from conftest import planned_jobs, snakemake, write_config
from svip_core.io.synth import write_dataset
from svip_core.stages import load_config, stage_dir


def test_adding_one_video_reextracts_exactly_one_shard(workflow_dir, tiny_config):
    data = workflow_dir / "data"
    write_dataset(data, {"train": 14, "val": 4, "test": 4}, 6, 4, 48, 80, ["meeting"], seed=5)
    extra = write_dataset(workflow_dir / "extra", {"train": 1}, 6, 4, 48, 80, ["meeting"], seed=6)[0]
    tiny_config["data"].update(source=str(data), num_shards=16)
    write_config(workflow_dir / "config.yaml", tiny_config)

    first = snakemake(workflow_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    stores = sorted((workflow_dir / "results" / "features").glob("*/*.zarr"))
    assert len(stores) > 8

    # A new clip with an id of its own (the generated one would repeat an existing id).
    arrays = dict(np.load(extra))
    arrays["video_id"] = np.array("brand_new_video")
    np.savez(data / "train" / "brand new video.npz", **arrays)

    manifest = stage_dir(load_config(workflow_dir / "config.yaml"), "prepare") / "manifest.parquet"
    prepared = snakemake(workflow_dir, str(manifest))
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    plan = planned_jobs(snakemake(workflow_dir, "-n"))
    assert plan.get("extract") == 1 and "prepare" not in plan and plan.get("train") == 1
