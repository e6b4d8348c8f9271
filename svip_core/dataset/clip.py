"""Reading and validating MSG_VIP clips (``shared/spec/clip-format.md``), without ever unpickling.

``inspect_clip`` checks every rule of the contract and reads everything but the pixels, so a whole dataset
is validated in seconds; ``read_clip`` also loads the frames; ``clip_from_arrays`` applies the same rules to arrays
in memory. All raise ``ClipError`` naming the file, the field and the fix.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from svip_core.dataset.containers import NO_LABEL, PAYLOAD_FIELDS, REQUIRED_FIELDS, ClipError, open_clip

__all__ = ["Clip", "ClipError", "PAYLOAD_FIELDS", "REQUIRED_FIELDS", "clip_from_arrays", "inspect_clip",
           "read_clip"]


@dataclasses.dataclass
class Clip:
    """One validated clip. T frames, N person slots, boxes normalised by the clip's own W and H."""

    path: str
    video_id: str
    scene_category: str
    target_index: int | None  # None: an unlabelled clip (the unlabelled split)
    boxes: np.ndarray          # (T, N, 4) float32 x1, y1, x2, y2 in [0, 1]
    valid: np.ndarray          # (T, N) bool: person_mask & frame_mask
    frame_mask: np.ndarray     # (T,) bool
    person_ids: np.ndarray     # (T, N) int64, -1 where absent
    original_ids: np.ndarray   # (N,) int64
    height: int
    width: int
    frames: np.ndarray | None = None   # (T, H, W, 3) uint8 (or only the frames asked for), from read_clip

    @property
    def num_frames(self) -> int:
        return self.boxes.shape[0]

    @property
    def num_slots(self) -> int:
        return self.boxes.shape[1]

    @property
    def present(self) -> np.ndarray:
        """(N,) bool: valid in at least one frame."""
        return self.valid.any(0)


def _bool_mask(path, field: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.integer) and np.isin(arr, (0, 1)).all():
        return arr.astype(bool)
    raise ClipError(path, field, f"must be bool or 0/1 integers, got {arr.dtype}", "store the mask as bool")


def _scalar_str(path, field: str, arr: np.ndarray) -> str:
    if arr.shape != () or arr.dtype.kind not in "US":
        raise ClipError(path, field, f"must be a 0-d string array, got shape {arr.shape} dtype {arr.dtype}",
                        "save it as np.array('...')")
    value = arr.item()
    value = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    if not value.strip():
        raise ClipError(path, field, "is empty", f"give every clip a non-empty {field}")
    return value


def _fields(labelled: bool) -> tuple[str, ...]:
    """The fields a clip must have: an unlabelled one may lack its target."""
    return REQUIRED_FIELDS if labelled else tuple(f for f in REQUIRED_FIELDS if f != "target_index")


def _refuse_missing(path, missing: list[str]) -> None:
    if missing == ["target_index"]:
        raise ClipError(path, "target_index", "required field missing: the clip names no VIP",
                        "store the VIP's slot as target_index, or move the clip to the dataset's unlabelled/ folder "
                        "(self-training)")
    if missing:
        raise ClipError(path, missing[0], f"required field missing (missing: {', '.join(missing)})",
                        "add every field of shared/spec/clip-format.md")


def inspect_clip(path, max_array_bytes: int = 2_000_000_000,
                 load_frames: bool | Callable[["Clip"], np.ndarray] = False, labelled: bool = True) -> Clip:
    """Validate a clip (an address: ``.npz`` path or ``file.h5::group``) against the contract and read all its
    fields but the frames. ``load_frames``: True reads every frame; a function of the validated clip returning
    frame indices (K,) reads only those (from HDF5, only their chunks) into ``frames`` (K, H, W, 3).
    ``labelled`` False (the unlabelled split): the target is not read, and the clip's ``target_index`` is None."""
    with open_clip(path, max_array_bytes) as source:
        shapes = source.fields
        _refuse_missing(path, [f for f in _fields(labelled) if f not in shapes])
        arr = {f: source.read(f) for f in _fields(labelled) if f != "frames"}
        clip = _validated(path, shapes, arr, labelled)
        if load_frames is True:
            clip.frames = _frames_uint8(source.read("frames"), clip.frame_mask)
        elif load_frames:
            index = np.asarray(load_frames(clip), dtype=np.int64)
            frames = source.read_frames(index)
            # Float frames are 0..1 or 0..255 by the maximum of the whole clip, not of the frames read.
            peak = source.peak("frames") if frames.dtype != np.uint8 else None
            clip.frames = _frames_uint8(frames, clip.frame_mask[index], peak)
    return clip


def clip_from_arrays(name: str, arrays: dict, labelled: bool = True) -> Clip:
    """Validate a clip held in memory (a dict of the contract's arrays, as ``np.load`` or a generator gives it) by
    the same rules as a file; ``name`` stands for the path in errors. Frames are not kept."""
    _refuse_missing(name, [f for f in _fields(labelled) if f not in arrays])
    arr = {f: np.asarray(arrays[f]) for f in _fields(labelled)}
    return _validated(name, {f: (a.shape, a.dtype) for f, a in arr.items()}, arr, labelled)


def _where(bad: np.ndarray, boxes: np.ndarray) -> str:
    """Where the first of the ``bad`` (T, N) boxes (T, N, 4) is, and how many there are: the user's way to it."""
    t, n = np.argwhere(bad)[0]
    box = ", ".join(f"{v:g}" for v in boxes[t, n])
    return f"first at frame {t}, slot {n}: [{box}]; {int(bad.sum())} such box{'es' if bad.sum() > 1 else ''} in all"


def _validated(path, shapes: dict, arr: dict, labelled: bool = True) -> Clip:
    frame_shape, frame_dtype = shapes["frames"]
    if len(frame_shape) != 4 or frame_shape[-1] != 3:
        raise ClipError(path, "frames", f"shape {frame_shape} is not (T, H, W, 3)",
                        "store RGB frames channel-last, e.g. frames.transpose(0, 2, 3, 1)")
    if not (frame_dtype == np.uint8 or frame_dtype.kind == "f"):
        raise ClipError(path, "frames", f"dtype {frame_dtype} is neither uint8 nor float", "store uint8 0..255")
    T, H, W, _ = frame_shape
    boxes = arr["bboxes"]
    if boxes.ndim != 3 or boxes.shape[0] != T or boxes.shape[2] != 4:
        raise ClipError(path, "bboxes", f"shape {boxes.shape} is not (T={T}, N, 4)", "one xyxy box per slot per frame")
    N = boxes.shape[1]
    expected = {"person_mask": (T, N), "frame_mask": (T,), "person_ids": (T, N), "original_ids": (N,),
                **({"target_index": ()} if labelled else {})}
    for field, shape in expected.items():
        if arr[field].shape != shape:
            raise ClipError(path, field, f"shape {arr[field].shape} does not match (T={T}, N={N}) -> {shape}",
                            "give every per-frame array the same T and every per-slot array the same N")
    person_mask = _bool_mask(path, "person_mask", arr["person_mask"])
    frame_mask = _bool_mask(path, "frame_mask", arr["frame_mask"])
    valid = person_mask & frame_mask[:, None]
    if not frame_mask.any():
        raise ClipError(path, "frame_mask", "no valid frame", "mark the clip's usable frames True")
    if not valid.any():
        raise ClipError(path, "person_mask", "no person is present in any valid frame", "drop this clip")
    if not np.issubdtype(boxes.dtype, np.number):
        raise ClipError(path, "bboxes", f"dtype {boxes.dtype} is not numeric", "store float pixel coordinates")
    b = np.where(valid[..., None], boxes.astype(np.float64), 0.0)                     # (T, N, 4)
    with np.errstate(invalid="ignore"):
        broken = valid & ~np.isfinite(b).all(-1)
        if broken.any():
            raise ClipError(path, "bboxes", f"a valid person's box holds NaN or inf ({_where(broken, b)})",
                            "fix the tracker output or set person_mask False in that frame")
        flat = valid & ~((b[..., 2] > b[..., 0]) & (b[..., 3] > b[..., 1]))
        if flat.any():
            raise ClipError(path, "bboxes", f"a valid person's box has x2 <= x1 or y2 <= y1 ({_where(flat, b)})",
                            "store boxes as x1, y1, x2, y2 in pixels")
        outside = valid & ~((b[..., 0] < W) & (b[..., 2] > 0) & (b[..., 1] < H) & (b[..., 3] > 0))
    if outside.any():
        raise ClipError(path, "bboxes", f"a valid person's box lies outside the {W}x{H} frame ({_where(outside, b)})",
                        "boxes must be pixels of the clip's own frame size")
    target = _target(path, arr["target_index"], N, valid) if labelled else None
    for field in ("person_ids", "original_ids"):
        if not np.issubdtype(arr[field].dtype, np.integer):
            raise ClipError(path, field, f"dtype {arr[field].dtype} is not an integer", "store ids as int, -1 for padding")

    scale = np.array([W, H, W, H], dtype=np.float64)
    norm = np.where(valid[..., None], np.clip(np.nan_to_num(boxes.astype(np.float64)) / scale, 0.0, 1.0), 0.0)
    return Clip(path=str(path), video_id=_scalar_str(path, "video_id", arr["video_id"]),
                scene_category=_scalar_str(path, "scene_category", arr["scene_category"]),
                target_index=target, boxes=norm.astype(np.float32), valid=valid, frame_mask=frame_mask,
                person_ids=arr["person_ids"].astype(np.int64), original_ids=arr["original_ids"].astype(np.int64),
                height=H, width=W)


def _target(path, target: np.ndarray, N: int, valid: np.ndarray) -> int:
    """The VIP's slot of a labelled clip, checked: an integer naming a present person."""
    if not np.issubdtype(target.dtype, np.integer):
        raise ClipError(path, "target_index", f"dtype {target.dtype} is not an integer", "store the VIP's slot as int")
    target = int(target)
    if target == NO_LABEL:
        raise ClipError(path, "target_index", f"{NO_LABEL} marks a clip without a label",
                        "name the VIP's slot, or move the clip to the dataset's unlabelled/ folder (self-training)")
    if not 0 <= target < N:
        raise ClipError(path, "target_index", f"{target} is outside 0..{N - 1}", "point it at the VIP's slot")
    if not valid[:, target].any():
        raise ClipError(path, "target_index", f"slot {target} is never present", "point it at a present person")
    return target


def _frames_uint8(frames: np.ndarray, frame_mask: np.ndarray, peak: float | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 with invalid frames blanked. Floats are 0..1, or 0..255 when the clip's maximum
    (``peak``; these frames' when None) is above 1.5."""
    if frames.dtype != np.uint8:
        f = np.nan_to_num(frames.astype(np.float32))
        peak = f.max(initial=0.0) if peak is None else peak
        f = f if peak > 1.5 else f * 255.0
        frames = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    return np.where(frame_mask[:, None, None, None], frames, 0).astype(np.uint8)


def read_clip(path, max_array_bytes: int = 2_000_000_000) -> Clip:
    """Validate and fully load a clip, frames included."""
    return inspect_clip(path, max_array_bytes, load_frames=True)
