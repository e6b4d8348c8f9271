"""A corpus of hostile clips beside good ones, each with the verdict the validator must give."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from svip_core.synthetic.generate import make_clip

T, N, H, W = 6, 4, 48, 80


def good(seed: int, video_id: str) -> dict:
    return make_clip(np.random.default_rng(seed), video_id, "meeting", 0, T, N, H, W)


def _target_slot(a: dict) -> int:
    return int(a["target_index"])


def _set_target_box(a: dict, box) -> dict:
    a["bboxes"][0, _target_slot(a)] = box
    return a


def _absent_target(a: dict) -> dict:
    absent = int(np.flatnonzero(~a["person_mask"].any(0))[0]) if (~a["person_mask"].any(0)).any() else None
    if absent is None:  # free a slot: blank one non-target person everywhere
        absent = next(n for n in range(N) if n != _target_slot(a))
        a["person_mask"][:, absent] = False
    a["target_index"] = np.int64(absent)
    return a


# name -> (edit of a good clip's arrays, expected field, words the reason must contain)
EDITS = {
    "missing field.npz": (lambda a: a.pop("scene_category") and a, "scene_category", "required field missing"),
    "channel first.npz": (lambda a: a.update(frames=a["frames"].transpose(0, 3, 1, 2)) or a, "frames", "is not (T, H, W, 3)"),
    "grayscale.npz": (lambda a: a.update(frames=a["frames"][..., 0]) or a, "frames", "is not (T, H, W, 3)"),
    "short mask.npz": (lambda a: a.update(person_mask=a["person_mask"][:-1]) or a, "person_mask", "does not match"),
    "boxes wrong n.npz": (lambda a: a.update(bboxes=a["bboxes"][:, :-1]) or a, "person_mask", "does not match"),
    "nan box.npz": (lambda a: _set_target_box(a, [np.nan, 1, 5, 9]), "bboxes", "NaN or inf"),
    "inf box.npz": (lambda a: _set_target_box(a, [1, 1, np.inf, 9]), "bboxes", "NaN or inf"),
    "inverted box.npz": (lambda a: _set_target_box(a, [30, 5, 10, 20]), "bboxes", "x2 <= x1"),
    "off frame box.npz": (lambda a: _set_target_box(a, [500, 5, 600, 20]), "bboxes", "outside the 80x48 frame"),
    "target out of range.npz": (lambda a: a.update(target_index=np.int64(N)) or a, "target_index", "outside 0..3"),
    "target absent.npz": (_absent_target, "target_index", "never present"),
    "float target.npz": (lambda a: a.update(target_index=np.float64(1.0)) or a, "target_index", "not an integer"),
    "object array.npz": (lambda a: a.update(video_id=np.array(["x", 1], dtype=object)) or a, "video_id", "object array"),
    "no valid frame.npz": (lambda a: a.update(frame_mask=np.zeros(T, bool)) or a, "frame_mask", "no valid frame"),
    "nobody present.npz": (lambda a: a.update(person_mask=np.zeros((T, N), bool)) or a, "person_mask", "no person"),
    "mask not boolean.npz": (lambda a: a.update(person_mask=a["person_mask"] * 7) or a, "person_mask", "bool or 0/1"),
    "empty id.npz": (lambda a: a.update(video_id=np.array("")) or a, "video_id", "is empty"),
}


def build(folder: Path) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Write hostile and good clips under ``folder/train`` and ``folder/val``.
    Returns ({hostile path: (field, reason words)}, [good paths])."""
    train, val = folder / "train", folder / "val"
    train.mkdir(parents=True)
    val.mkdir(parents=True)
    expected, good_paths = {}, []
    for i, (name, (edit, field, words)) in enumerate(EDITS.items()):
        np.savez(train / name, **edit(good(100 + i, f"hostile_{i}")))
        expected[str(train / name)] = (field, words)
    (train / "empty.npz").write_bytes(b"")
    expected[str(train / "empty.npz")] = ("file", "not a readable .npz")
    (train / "not a zip.npz").write_text("hello, I am text")
    expected[str(train / "not a zip.npz")] = ("file", "not a readable .npz")
    np.savez_compressed(train / "whole.npz", **good(7, "to_truncate"))
    blob = (train / "whole.npz").read_bytes()
    (train / "truncated.npz").write_bytes(blob[: len(blob) // 2])
    (train / "whole.npz").unlink()
    expected[str(train / "truncated.npz")] = ("file", "")
    # A header that claims about a terabyte, in an otherwise valid clip.
    np.savez(train / "terabyte header.npz", **good(8, "terabyte"))
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (10**6, 1000, 1000)})
    with zipfile.ZipFile(train / "terabyte header.npz", "a") as zf:
        zf.writestr("padding.npy", buf.getvalue())
    expected[str(train / "terabyte header.npz")] = ("padding", "claims 1,000,000,000,000 bytes")
    # Good clips, names with spaces and unicode included.
    for i, name in enumerate(["good one.npz", "bon clip é ü 名.npz", "good_3.npz", "good_4.npz"]):
        np.savez_compressed(train / name, **good(i, f"good_train_{i}"))
        good_paths.append(str(train / name))
    for i in range(3):
        np.savez_compressed(val / f"val {i}.npz", **good(50 + i, f"good_val_{i}"))
        good_paths.append(str(val / f"val {i}.npz"))
    return expected, good_paths
