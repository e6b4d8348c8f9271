"""Reading and validating MSG_VIP clips (``shared/spec/clip-format.md``), without ever unpickling.

``inspect_clip`` checks every rule of the contract and reads everything but the pixels, so a whole dataset
is validated in seconds; ``read_clip`` also loads the frames. Both raise ``ClipError`` naming the file,
the field and the fix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import numpy as np

REQUIRED_FIELDS = ("frames", "bboxes", "person_mask", "frame_mask", "person_ids", "original_ids",
                   "target_index", "video_id", "scene_category")
# Deflate cannot compress better than about 1032:1, so a member claiming more is lying about its size.
MAX_DEFLATE_RATIO = 1032


class ClipError(ValueError):
    """A clip breaks the contract. ``field`` is the offending array (or ``file``)."""

    def __init__(self, path, field: str, problem: str, fix: str):
        self.path, self.field, self.problem, self.fix = str(path), field, problem, fix
        super().__init__(f"{path}: field '{field}': {problem}. Fix: {fix}")

    @property
    def reason(self) -> str:
        return f"{self.field}: {self.problem}"


@dataclasses.dataclass
class Clip:
    """One validated clip. T frames, N person slots, boxes normalised by the clip's own W and H."""

    path: str
    video_id: str
    scene_category: str
    target_index: int
    boxes: np.ndarray          # (T, N, 4) float32 x1, y1, x2, y2 in [0, 1]
    valid: np.ndarray          # (T, N) bool: person_mask & frame_mask
    frame_mask: np.ndarray     # (T,) bool
    person_ids: np.ndarray     # (T, N) int64, -1 where absent
    original_ids: np.ndarray   # (N,) int64
    height: int
    width: int
    payload: str = ""                  # payload_fingerprint: same pixels, boxes and target, whatever the id
    frames: np.ndarray | None = None   # (T, H, W, 3) uint8, only from read_clip

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


# The members that make a clip what it is; the ids and names do not (a copy under another id is the same clip).
PAYLOAD_FIELDS = ("frames", "bboxes", "person_mask", "frame_mask", "target_index")


def payload_fingerprint(zf: zipfile.ZipFile) -> str:
    """Hash of the pixels, boxes, masks and target as stored: each member's CRC-32 and size from the zip's
    directory (free to read; independent of compression, video_id and file name)."""
    infos = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
    parts = [(f, infos[f].CRC, infos[f].file_size) for f in PAYLOAD_FIELDS if f in infos]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def _check_headers(path: Path, zf: zipfile.ZipFile, max_array_bytes: int) -> dict[str, tuple]:
    """Read every member's .npy header; refuse object arrays and impossible sizes before allocating."""
    shapes = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            continue
        field = info.filename[:-4]
        with zf.open(info) as f:
            try:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f, max_header_size=10000)
            except ValueError as e:
                raise ClipError(path, field, f"unreadable .npy header ({e})",
                                "re-save the clip with numpy.savez / savez_compressed") from None
        if dtype.hasobject:
            raise ClipError(path, field, "object array (would need pickle, refused)",
                            "store strings as fixed-width unicode (np.array(str)), numbers as numeric arrays")
        nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        stored = info.file_size if info.compress_type == zipfile.ZIP_STORED else info.compress_size * MAX_DEFLATE_RATIO
        if nbytes > max_array_bytes or nbytes > stored + 1024:
            raise ClipError(path, field, f"header claims {nbytes:,} bytes for shape {shape}, more than the file "
                                         f"holds or the limit data.max_array_bytes={max_array_bytes:,}",
                            "re-export the clip; raise data.max_array_bytes only for genuinely large clips")
        shapes[field] = (shape, dtype)
    return shapes


def _bool_mask(path, field: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.integer) and np.isin(arr, (0, 1)).all():
        return arr.astype(bool)
    raise ClipError(path, field, f"must be bool or 0/1 integers, got {arr.dtype}", "store the mask as bool")


def _scalar_str(path, field: str, arr: np.ndarray) -> str:
    if arr.shape != () or arr.dtype.kind not in "US":
        raise ClipError(path, field, f"must be a 0-d string array, got shape {arr.shape} dtype {arr.dtype}",
                        f"save it as np.array('...')")
    value = arr.item()
    value = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    if not value.strip():
        raise ClipError(path, field, "is empty", f"give every clip a non-empty {field}")
    return value


def inspect_clip(path, max_array_bytes: int = 2_000_000_000, load_frames: bool = False) -> Clip:
    """Validate a clip against the contract; read all fields (frames only if ``load_frames``)."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ClipError(path, "file", f"not a readable .npz (zip) file ({e})",
                        "write clips with numpy.savez or numpy.savez_compressed") from None
    with zf:
        try:
            shapes = _check_headers(path, zf, max_array_bytes)
        except ClipError:
            raise
        except Exception as e:  # truncated or corrupt members fail in many ways (zlib, EOF, struct, ...)
            raise ClipError(path, "file", f"corrupt or truncated archive ({type(e).__name__}: {e})",
                            "re-export the clip") from None
        payload = payload_fingerprint(zf)
        missing = [f for f in REQUIRED_FIELDS if f not in shapes]
        if missing:
            raise ClipError(path, missing[0], f"required field missing (missing: {', '.join(missing)})",
                            "add every field of shared/spec/clip-format.md")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arr = {f: npz[f] for f in REQUIRED_FIELDS if f != "frames" or load_frames}
        except Exception as e:  # np.load refuses pickles with ValueError; corrupt data raises zlib/EOF errors
            raise ClipError(path, "file", f"member data unreadable ({type(e).__name__}: {e})",
                            "re-save the clip with numpy.savez") from None

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
                "target_index": ()}
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
    b = boxes[valid].astype(np.float64)
    if not np.isfinite(b).all():
        raise ClipError(path, "bboxes", "a valid person's box holds NaN or inf",
                        "fix the tracker output or set person_mask False in that frame")
    if not ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all():
        raise ClipError(path, "bboxes", "a valid person's box has x2 <= x1 or y2 <= y1",
                        "store boxes as x1, y1, x2, y2 in pixels")
    if not ((b[:, 0] < W) & (b[:, 2] > 0) & (b[:, 1] < H) & (b[:, 3] > 0)).all():
        raise ClipError(path, "bboxes", f"a valid person's box lies outside the {W}x{H} frame",
                        "boxes must be pixels of the clip's own frame size")
    target = arr["target_index"]
    if not np.issubdtype(target.dtype, np.integer):
        raise ClipError(path, "target_index", f"dtype {target.dtype} is not an integer", "store the VIP's slot as int")
    target = int(target)
    if not 0 <= target < N:
        raise ClipError(path, "target_index", f"{target} is outside 0..{N - 1}", "point it at the VIP's slot")
    if not valid[:, target].any():
        raise ClipError(path, "target_index", f"slot {target} is never present", "point it at a present person")
    for field in ("person_ids", "original_ids"):
        if not np.issubdtype(arr[field].dtype, np.integer):
            raise ClipError(path, field, f"dtype {arr[field].dtype} is not an integer", "store ids as int, -1 for padding")

    scale = np.array([W, H, W, H], dtype=np.float64)
    norm = np.where(valid[..., None], np.clip(np.nan_to_num(boxes.astype(np.float64)) / scale, 0.0, 1.0), 0.0)
    frames = _frames_uint8(arr["frames"], frame_mask) if load_frames else None
    return Clip(path=str(path), video_id=_scalar_str(path, "video_id", arr["video_id"]),
                scene_category=_scalar_str(path, "scene_category", arr["scene_category"]),
                target_index=target, boxes=norm.astype(np.float32), valid=valid, frame_mask=frame_mask,
                person_ids=arr["person_ids"].astype(np.int64), original_ids=arr["original_ids"].astype(np.int64),
                height=H, width=W, payload=payload, frames=frames)


def _frames_uint8(frames: np.ndarray, frame_mask: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 with invalid frames blanked. Floats are 0..1, or 0..255 when max > 1.5."""
    if frames.dtype != np.uint8:
        f = np.nan_to_num(frames.astype(np.float32))
        f = f if f.max(initial=0.0) > 1.5 else f * 255.0
        frames = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    return np.where(frame_mask[:, None, None, None], frames, 0).astype(np.uint8)


def read_clip(path, max_array_bytes: int = 2_000_000_000) -> Clip:
    """Validate and fully load a clip, frames included."""
    return inspect_clip(path, max_array_bytes, load_frames=True)
