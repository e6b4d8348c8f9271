"""HDF5 datasets: the same clips give the same digests, features and metrics as .npz; `svip convert` is lossless;
hostile HDF5 is refused clip by clip; extraction reads only the frames it samples; adding clips to one file
re-extracts only their shards."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from conftest import (
    SHARED_SHARDS,
    clone_workflow,
    ran_jobs,
    snakemake,
    svip,
    until_extract,
    write_config,
)

from svip_core.config import load_config
from svip_core.dataset.clip import ClipError, inspect_clip, read_clip
from svip_core.dataset.containers import clip_digests, list_clips
from svip_core.dataset.convert import clip_arrays, write_h5_clip
from svip_core.dataset.manifest import validate_files
from svip_core.dataset.shards import read_shard
from svip_core.features.extract import ShardClips, extract_shard
from svip_core.stages import stage_dir
from svip_core.synthetic.generate import write_dataset


def convert(src, dst, *flags):
    result = svip("convert", src, dst, *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("npz") / "data"
    write_dataset(root, {"train": 12, "val": 4, "test": 4}, 6, 4, 48, 80, ["meeting", "street"], seed=41)
    return root


@pytest.fixture(scope="module")
def h5_data(npz_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("h5") / "data"
    convert(npz_data, root)
    return root


def test_convert_round_trip_is_lossless_and_digests_ignore_the_container(npz_data, h5_data, tmp_path):
    assert sorted(p.name for p in h5_data.iterdir()) == ["test.h5", "train.h5", "val.h5"]
    back = tmp_path / "back"
    convert(h5_data, back)
    originals = list_clips(npz_data)
    assert [(s, Path(a).name) for s, a in list_clips(back)] == [(s, Path(a).name) for s, a in originals]
    for split, address in originals:
        name = Path(address).stem
        in_h5, returned = f"{h5_data}/{split}.h5::{name}", str(back / split / f"{name}.npz")
        a, b = clip_arrays(address), clip_arrays(returned)
        for field in a:
            assert a[field].dtype == b[field].dtype and np.array_equal(a[field], b[field]), (name, field)
        assert clip_digests(address) == clip_digests(in_h5) == clip_digests(returned)
    with h5py.File(h5_data / "train.h5", "r") as f:
        frames = f[next(iter(f))]["frames"]
        assert frames.chunks == (1, *frames.shape[1:]) and frames.compression == "gzip"
    # A changed value changes the digest; byte order and compression do not.
    arrays = dict(np.load(originals[0][1]))
    np.savez(tmp_path / "plain.npz", **arrays)
    np.savez(tmp_path / "big_endian.npz", **{k: v.astype(v.dtype.newbyteorder(">")) if v.dtype.kind in "fi" else v
                                             for k, v in arrays.items()})
    np.savez(tmp_path / "moved.npz", **dict(arrays, bboxes=arrays["bboxes"] + 1))
    same = clip_digests(originals[0][1])
    assert clip_digests(tmp_path / "plain.npz") == same == clip_digests(tmp_path / "big_endian.npz")
    assert clip_digests(tmp_path / "moved.npz")[0] != same[0]

    # An unlabelled split travels too, its clips still without target_index; validated there, in either layout.
    mixed = tmp_path / "mixed"
    shutil.copytree(npz_data / "train", mixed / "train")
    shutil.copytree(npz_data / "val", mixed / "val")
    (mixed / "unlabelled").mkdir()
    np.savez(mixed / "unlabelled" / "u.npz", **{k: v for k, v in arrays.items() if k != "target_index"})
    convert(mixed, tmp_path / "mixed_h5")
    assert svip("validate", tmp_path / "mixed_h5" / "unlabelled.h5").returncode == 0
    with h5py.File(tmp_path / "mixed_h5" / "unlabelled.h5", "r") as f:
        assert "target_index" not in f["u"] and np.array_equal(f["u"]["bboxes"][()], arrays["bboxes"])


def _hostile_file(path: Path, good: dict[str, np.ndarray], tmp_path: Path) -> dict[str, tuple[str, str]]:
    """An HDF5 file holding good clips and one hostile clip per case: {group: (field, words of the reason)}."""
    (tmp_path / "raw.bin").write_bytes(bytes(64))
    cases = {}
    with h5py.File(path, "w") as f:
        write_h5_clip(f, "good_a", dict(good, video_id=np.array("good_a")))

        def clip(name, field, words, **changes):
            arrays = {k: v for k, v in {**good, "video_id": np.array(name), **changes}.items() if v is not None}
            write_h5_clip(f, name, arrays)
            cases[name] = (field, words)
            return f[name]

        clip("wrong_dtype", "frames", "neither uint8 nor float", frames=good["frames"].astype(np.int32))
        clip("wrong_shape", "person_mask", "does not match", person_mask=good["person_mask"][:, :2])
        clip("missing_field", "bboxes", "required field missing", bboxes=None)
        clip("too_big", "frames", "data.max_array_bytes", frames=np.zeros((60, 240, 320, 3), np.uint8))
        g = clip("vlen", "original_ids", "variable-length", original_ids=None)
        g.create_dataset("original_ids", (good["original_ids"].shape[0],), dtype=h5py.vlen_dtype(np.int64))
        g = clip("reference", "original_ids", "dtype", original_ids=None)
        g.create_dataset("original_ids", (good["original_ids"].shape[0],), dtype=h5py.ref_dtype)
        g = clip("external_link", "bboxes", "ExternalLink", bboxes=None)
        g["bboxes"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/bboxes")
        g = clip("soft_link", "bboxes", "SoftLink", bboxes=None)
        g["bboxes"] = h5py.SoftLink("/good_a/bboxes")
        g = clip("external_storage", "original_ids", "external files", original_ids=None)
        g.create_dataset("original_ids", (4,), dtype="<i8", external=[(str(tmp_path / "raw.bin"), 0, 32)])
        g = clip("virtual", "bboxes", "virtual dataset", bboxes=None)
        layout = h5py.VirtualLayout(shape=good["bboxes"].shape, dtype=good["bboxes"].dtype)
        layout[...] = h5py.VirtualSource(str(tmp_path / "other.h5"), "bboxes", shape=good["bboxes"].shape)
        g.create_virtual_dataset("bboxes", layout)
        g = clip("huge_string", "video_id", "header claims", video_id=None)
        g.create_dataset("video_id", shape=(), dtype=h5py.string_dtype("utf-8", 500_000_000))
        g = clip("empty", "original_ids", "empty dataspace", original_ids=None)
        g.create_dataset("original_ids", data=h5py.Empty("<i8"))
        clip("corrupt_frames", "frames", "data unreadable")     # its first frame's chunk is overwritten below
        f["linked_clip"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/clip")
        cases["linked_clip"] = ("file", "ExternalLink")
        write_h5_clip(f, "good_b", dict(good, video_id=np.array("good_b")))
        chunk = f["corrupt_frames/frames"].id.get_chunk_info_by_coord((0, 0, 0, 0))
    with open(path, "r+b") as out:
        out.seek(chunk.byte_offset)
        out.write(b"\xff" * chunk.size)
    return cases


def test_hostile_hdf5_is_refused_clip_by_clip_and_the_good_clips_run(npz_data, tmp_path):
    good = clip_arrays(list_clips(npz_data)[0][1])
    data = tmp_path / "data"
    data.mkdir()
    cases = _hostile_file(data / "train.h5", good, tmp_path)
    with h5py.File(data / "val.h5", "w") as f:
        write_h5_clip(f, "good_val", dict(good, video_id=np.array("good_val")))
    (data / "test.h5").write_bytes(b"not an HDF5 file at all" * 100)
    truncated = data / "val" / "truncated.h5"
    truncated.parent.mkdir()
    truncated.write_bytes((data / "val.h5").read_bytes()[:3000])
    files = list_clips(data)
    manifest = validate_files(files, max_array_bytes=10_000_000).set_index("path")
    accepted = {Path(p).name for p in manifest[manifest.verdict == "accepted"].index}
    assert accepted == {"train.h5::good_a", "train.h5::good_b", "val.h5::good_val"}
    for name, (field, words) in cases.items():
        reason = manifest.loc[f"{data}/train.h5::{name}", "reason"]
        assert reason.startswith(field + ":") and words in reason and "Fix:" in reason, (name, reason)
        with pytest.raises(ClipError) as err:
            if name == "corrupt_frames":        # the contract check reads no pixels; the content digest does
                clip_digests(f"{data}/train.h5::{name}", 10_000_000)
            else:
                inspect_clip(f"{data}/train.h5::{name}", 10_000_000)
        assert str(err.value).startswith(f"{data}/train.h5::{name}: field '{field}'")
    for bad in (data / "test.h5", truncated):
        assert manifest.loc[str(bad), "reason"].startswith("file: not a readable HDF5 file")
    # Nothing outside the file was opened: the linked files do not even exist.
    assert not (tmp_path / "other.h5").exists()
    result = svip("validate", data)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    rejected = [line for line in result.stdout.splitlines() if line.startswith("rejected")]
    named = [f"train.h5::{name} " for name in cases] + [f"{data / 'test.h5'} ", f"{truncated} "]
    assert all(any(n in line for line in rejected) for n in named)
    # An unreadable file may hold many clips: it is counted apart from them (and from duplicates, which validate
    # drops as a run would).
    clips_rejected = len(rejected) - 2
    assert result.stdout.splitlines()[-1] == (f"{len(cases) + 3} clips: {len(cases) + 3 - clips_rejected} accepted, "
                                             f"{clips_rejected} rejected; 2 files could not be read, their clips "
                                             f"not counted")
    # svip convert copies the good clips and names every refused one.
    out = tmp_path / "converted"
    result = svip("convert", data, out)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert all(any(n.strip() in line for line in result.stderr.splitlines()) for n in named)
    assert sorted(p.name for p in out.rglob("*.npz")) == ["good_a.npz", "good_b.npz", "good_val.npz"]


def test_extraction_reads_only_the_sampled_frames(h5_data, npz_data, tmp_path):
    """The unsampled frames' chunks are destroyed on disk: reading them would fail, yet extraction's items are
    those of the intact .npz clip."""
    damaged = tmp_path / "train.h5"
    damaged.write_bytes((h5_data / "train.h5").read_bytes())
    name = Path(list_clips(npz_data)[0][1]).stem
    member = {"path": f"{damaged}::{name}", "video_id": name}
    npz_member = {"path": str(npz_data / "train" / f"{name}.npz"), "video_id": name}
    clips = ShardClips([member, npz_member], num_frames=3, max_persons=4, frame_size=(48, 80), max_array_bytes=10**9)
    sampled = set(clips.sampled_frames(inspect_clip(member["path"])).tolist())
    with h5py.File(damaged, "r") as f:
        frames = f[name]["frames"]
        spans = [(info.byte_offset, info.size) for t in range(frames.shape[0]) if t not in sampled
                 for info in [frames.id.get_chunk_info_by_coord((t, 0, 0, 0))]]
    assert spans
    with open(damaged, "r+b") as f:
        for offset, size in spans:
            f.seek(offset)
            f.write(b"\xff" * size)
    with pytest.raises(ClipError, match="frames"):
        read_clip(member["path"])
    from_h5, from_npz = clips[0], clips[1]
    for key in ("frames", "boxes", "valid", "frame_mask"):
        assert (from_h5[key] == from_npz[key]).all(), key
    assert from_h5["target"] == from_npz["target"]


def _arrays(store: Path) -> dict[str, np.ndarray]:
    return {name: np.asarray(arr[...]) for name, arr in zarr.open_group(str(store), mode="r").arrays()}


@pytest.mark.slow
def test_the_workflow_on_hdf5_equals_the_workflow_on_npz_and_adding_clips_reextracts_their_shards(
        finished_workflow, tmp_path):
    """The shared workflow pointed at an HDF5 copy of its clips prepares them again and reuses everything else;
    the HDF5 clips extract (the extract stage's code, in-process) to the npz stores value for value; clips
    appended to an HDF5 file re-extract only the shards now holding them."""
    h5_data = tmp_path / "h5"
    convert(finished_workflow / "data", h5_data)
    wd = clone_workflow(finished_workflow, tmp_path / "wf")
    npz_config = load_config(wd / "config.yaml")
    config = yaml.safe_load((wd / "config.yaml").read_text())
    config["data"]["source"] = str(h5_data)
    write_config(wd / "config.yaml", config)
    h5_config = load_config(wd / "config.yaml")
    # The same clips: the manifest (which names them) is new, the stores and so the model are the same.
    switched = snakemake(wd)
    assert switched.returncode == 0, switched.stderr[-2000:]
    assert ran_jobs(switched) == {"prepare": 1, "report": 1}
    assert stage_dir(npz_config, "train") == stage_dir(h5_config, "train")
    assert stage_dir(npz_config, "prepare") != stage_dir(h5_config, "prepare")

    features = wd / stage_dir(h5_config, "extract")
    stage = json.loads((features / "config.json").read_text())["config"]
    shards = sorted((wd / stage_dir(h5_config, "prepare") / "shards").glob("*.json"))
    assert len(shards) == SHARED_SHARDS
    for shard in shards:
        members = read_shard(shard)
        assert all(m["path"].startswith(f"{h5_data}/") and "::" in m["path"] for m in members)
        from_h5 = tmp_path / "h5_stores" / f"{shard.stem}.zarr"
        extract_shard(members, from_h5, {**stage["features"], "batch_clips": 4, "workers": 0},
                      stage["data"]["max_persons"], features / "backbone", {})
        npz_arrays, h5_arrays = _arrays(features / f"{shard.stem}.zarr"), _arrays(from_h5)
        assert npz_arrays.keys() == h5_arrays.keys()
        for key, values in npz_arrays.items():
            assert np.array_equal(values, h5_arrays[key]), (shard.stem, key)

    # Two clips appended to train.h5: prepare again and only the shards now holding them (through Snakemake).
    old_keys = {p.stem for p in shards}
    extra = write_dataset(tmp_path / "extra", {"train": 2}, 6, 4, 48, 80, ["meeting"], seed=42)
    with h5py.File(h5_data / "train.h5", "a") as f:
        for i, path in enumerate(extra):
            write_h5_clip(f, f"added_{i}", dict(clip_arrays(path), video_id=np.array(f"added_{i}")))
    again = until_extract(wd)
    new_prepare = wd / stage_dir(load_config(wd / "config.yaml"), "prepare")
    new_keys = {p.stem for p in (new_prepare / "shards").glob("*.json")}
    assert again["prepare"] == 1 and 0 < again["extract"] == len(new_keys - old_keys) < len(new_keys)
    manifest = pd.read_parquet(new_prepare / "manifest.parquet")
    assert {f"{h5_data}/train.h5::added_0", f"{h5_data}/train.h5::added_1"} <= set(manifest.path)
