"""The clip reader and validator: good clips load, hostile ones are refused with the field named."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from svip_core.dataset.clip import ClipError, inspect_clip, read_clip
from svip_core.dataset.manifest import DatasetError, prepare_dataset
from svip_core.synthetic.generate import make_clip, write_dataset


def good_arrays(seed=0):
    return make_clip(np.random.default_rng(seed), "vid", "meeting", 0, 5, 4, 40, 64)


def save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_good_clip_reads_with_normalised_boxes(tmp_path):
    arrays = good_arrays()
    clip = read_clip(save(tmp_path / "ok clip é.npz", **arrays))
    assert clip.video_id == "vid" and clip.frames.shape == (5, 40, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.boxes.max() <= 1 and clip.present[clip.target_index]
    np.testing.assert_allclose(clip.boxes[clip.valid][:, 2], arrays["bboxes"][clip.valid][:, 2] / 64, rtol=1e-6)


def test_float_frames_in_0_1_are_scaled(tmp_path):
    arrays = good_arrays()
    ref = read_clip(save(tmp_path / "a.npz", **arrays)).frames
    arrays["frames"] = arrays["frames"].astype(np.float32) / 255
    assert np.abs(read_clip(save(tmp_path / "b.npz", **arrays)).frames.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("edit,field", [
    (lambda a: a.pop("target_index"), "target_index"),
    (lambda a: a.update(frames=a["frames"].transpose(0, 3, 1, 2)), "frames"),
    (lambda a: a.update(person_mask=a["person_mask"][:-1]), "person_mask"),
    (lambda a: a["bboxes"].__setitem__((0, a["target_index"].item(), 0), np.nan), "bboxes"),
    (lambda a: a["bboxes"].__setitem__((0, a["target_index"].item()), [50, 5, 10, 30]), "bboxes"),
    (lambda a: a.update(target_index=np.int64(99)), "target_index"),
    (lambda a: a.update(video_id=np.array(["a", "b"], dtype=object)), "video_id"),
    (lambda a: a.update(frame_mask=np.zeros_like(a["frame_mask"])), "frame_mask"),
])
def test_hostile_clip_is_refused_naming_the_field(tmp_path, edit, field):
    arrays = good_arrays()
    edit(arrays)
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ClipError) as err:
        inspect_clip(path)
    assert err.value.field == field and str(path) in str(err.value) and "Fix:" in str(err.value)


def test_header_claiming_terabytes_is_refused_before_allocating(tmp_path):
    arrays = good_arrays()
    path = tmp_path / "huge.npz"
    np.savez(path, **arrays)
    buf = io.BytesIO()
    header = {"descr": "|u1", "fortran_order": False, "shape": (100000, 1000, 1000, 3)}
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("frames_big.npy", buf.getvalue())
    with pytest.raises(ClipError, match="claims") as err:
        inspect_clip(path)
    assert err.value.field == "frames_big"


def test_not_a_zip_is_refused(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(ClipError) as err:
        inspect_clip(path)
    assert err.value.field == "file"


def test_prepare_keeps_good_clips_and_lists_bad_ones(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, {"train": 3, "val": 2}, 5, 4, 40, 64, ["meeting"], seed=1)
    (data / "train" / "broken.npz").write_bytes(b"\x00" * 10)
    manifest = prepare_dataset(data, tmp_path / "out", num_shards=2, max_array_bytes=10**9, on_duplicate_id="error")
    assert (manifest.verdict == "accepted").sum() == 5
    bad = manifest[manifest.verdict == "rejected"]
    assert list(bad.path) == [str(data / "train" / "broken.npz")] and bad.reason.iloc[0].startswith("file:")
    assert (tmp_path / "out" / "manifest.parquet").exists()


def test_a_leaking_video_id_stops_prepare_naming_both_files(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, {"train": 2, "val": 1}, 5, 4, 40, 64, ["meeting"], seed=1)
    arrays = dict(np.load(data / "train" / "synth_train_00000.npz"))
    save(data / "val" / "copy.npz", **arrays)
    with pytest.raises(DatasetError, match="leak") as err:
        prepare_dataset(data, tmp_path / "out", 2, 10**9, "error")
    assert "synth_train_00000.npz" in str(err.value) and "copy.npz" in str(err.value)


def test_synthetic_dataset_is_byte_identical_for_a_seed(tmp_path):
    a = write_dataset(tmp_path / "a", {"train": 2}, 5, 4, 40, 64, ["meeting"], seed=7)
    b = write_dataset(tmp_path / "b", {"train": 2}, 5, 4, 40, 64, ["meeting"], seed=7)
    for pa, pb in zip(a, b):
        for key in np.load(pa).files:
            np.testing.assert_array_equal(np.load(pa)[key], np.load(pb)[key])
