"""One atomic-write helper: a reader sees the old result or the new one, never a part, and a killed writer's
temporary is never taken for a clip."""
from __future__ import annotations

import numpy as np
import pytest

from svip_core.atomic import atomic_path, stale_partials, write_text
from svip_core.dataset.containers import list_clips
from svip_core.synthetic.generate import write_dataset


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    write_text(target, "new")
    assert target.read_text() == "new" and not stale_partials(target)


def test_a_folder_replaces_the_folder_there_and_a_suffix_is_kept(tmp_path):
    store = tmp_path / "shard.zarr"
    for content in ("first", "second"):
        with atomic_path(store) as tmp:
            tmp.mkdir()
            (tmp / "part").write_text(content)
    assert (store / "part").read_text() == "second" and [p.name for p in tmp_path.iterdir()] == ["shard.zarr"]
    clip = tmp_path / "clip.npz"
    with atomic_path(clip) as tmp:
        np.savez(tmp, x=np.arange(3))                  # np.savez appends .npz to a name without it
    assert np.load(clip)["x"].tolist() == [0, 1, 2] and sorted(p.name for p in tmp_path.iterdir()) == [
        "clip.npz", "shard.zarr"]


def test_a_killed_writers_temporary_is_not_a_clip(tmp_path):
    paths = write_dataset(tmp_path, {"train": 2}, 4, 2, 32, 48, ["meeting"], seed=1)
    before = list_clips(tmp_path)
    with pytest.raises(RuntimeError):
        with atomic_path(paths[0].with_name("third.npz")) as tmp:
            np.savez(tmp, **np.load(paths[0]))
            partial = tmp
            raise RuntimeError("killed after writing, before the rename")
    assert not partial.exists()
    partial.write_bytes(paths[0].read_bytes())         # as a SIGKILL leaves it: no cleanup ran
    assert list_clips(tmp_path) == before and stale_partials(paths[0].with_name("third.npz")) == [partial]
