"""The two dataset layouts and ``svip convert`` between them, losslessly.

- npz: ``<root>/<split>/<name>.npz``, one clip per file (``shared/spec/clip-format.md``).
- HDF5: ``<root>/<split>.h5``, one group ``<name>`` per clip holding the same nine fields as datasets. Frames are
  chunked one frame per chunk and compressed, so extraction reads only the frames it samples; strings are
  fixed-length UTF-8 scalars.

A clip keeps its name (file stem or group) and every field its values, dtype and shape, so converting back
gives the same arrays, and the same content digests in either layout (``containers.clip_digests``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from svip_core.atomic import atomic_path
from svip_core.config import no_clips
from svip_core.dataset.clip import inspect_clip
from svip_core.dataset.containers import (
    REQUIRED_FIELDS,
    STRING_FIELDS,
    ClipError,
    container_clips,
    is_hdf5,
    labelled,
    open_clip,
    scan_containers,
    split_address,
)
from svip_core.logs import progress

FRAME_COMPRESSION = {"compression": "gzip", "compression_opts": 4}


def clip_arrays(address, max_array_bytes: int = 2_000_000_000) -> dict[str, np.ndarray]:
    """The nine fields of a clip exactly as stored (strings as 0-d unicode arrays, or bytes that are not UTF-8);
    an unlabelled clip's target only when it has one."""
    with open_clip(address, max_array_bytes) as clip:
        arrays = {field: clip.read(field) for field in REQUIRED_FIELDS if field in clip.fields}
    for field in STRING_FIELDS:
        value = arrays[field].item()
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:      # kept as bytes, so nothing is lost
                pass
        arrays[field] = np.array(value)
    return arrays


def write_h5_clip(h5file, name: str, arrays: dict[str, np.ndarray]) -> None:
    """One clip as group ``name`` of an open, writable ``h5py.File``."""
    import h5py

    group = h5file.create_group(name)
    for field, arr in arrays.items():
        if field in STRING_FIELDS:
            value = arr.item()
            text = value if isinstance(value, bytes) else str(value).encode("utf-8")
            group.create_dataset(field, data=text, dtype=h5py.string_dtype("utf-8", max(1, len(text))))
        elif field == "frames" and arr.ndim == 4 and arr.shape[0] > 0:
            group.create_dataset(field, data=arr, chunks=(1, *arr.shape[1:]), **FRAME_COMPRESSION)
        else:
            group.create_dataset(field, data=arr)


def _clip_name(address: str) -> str:
    file, group = split_address(address)
    return group if group is not None else Path(file).stem


def convert_dataset(src, dst, to: str | None = None, max_array_bytes: int = 2_000_000_000) -> dict:
    """Write every valid clip of dataset folder ``src`` to ``dst`` in layout ``to`` ("h5" or "npz"; default:
    the other one). Returns {"converted": n, "refused": [(address, reason)]}: clips that break the contract
    (``io.clip.inspect_clip``) are not copied and are named with the reason. Files appear complete or not at all."""
    files = scan_containers(src)
    have = {"h5" if is_hdf5(path) else "npz" for _, path, _ in files}
    if not have:
        raise ValueError(no_clips(src))
    if to is None:
        if len(have) > 1:
            raise ValueError(f"{src} holds both .npz and HDF5 clips. Fix: say which layout to write with --to h5|npz")
        to = "npz" if have == {"h5"} else "h5"
    dst = Path(dst)
    converted, refused = 0, []
    by_split: dict[str, list[str]] = {}
    for split, path, _ in files:
        by_split.setdefault(split, []).extend(container_clips(path))

    def valid_clips(addresses, split):
        """(name, arrays) of each clip that passes the contract and reads whole; the others go to ``refused``."""
        for address in progress(addresses, desc="convert", unit="clip", disable=len(addresses) < 50):
            try:
                inspect_clip(address, max_array_bytes, labelled=labelled(split))
                yield _clip_name(address), clip_arrays(address, max_array_bytes)
            except ClipError as e:
                refused.append((address, f"{e.reason}. Fix: {e.fix}"))

    for split, addresses in by_split.items():
        names = [_clip_name(a) for a in addresses]
        if len(set(names)) != len(names):
            raise ValueError(f"{src}/{split}: two clips share a name; rename one so each clip keeps its own")
        if to == "h5":
            converted += _write_h5_split(dst / f"{split}.h5", valid_clips(addresses, split))
        else:
            for name, arrays in valid_clips(addresses, split):
                _write_npz(dst / split / f"{name}.npz", arrays)
                converted += 1
    return {"converted": converted, "refused": refused, "layout": to}


def _write_h5_split(out: Path, clips) -> int:
    """Write (name, arrays) pairs as one HDF5 file, under a temporary name until complete."""
    import h5py

    count = 0
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        for name, arrays in clips:
            write_h5_clip(f, name, arrays)
            count += 1
    return count


def _write_npz(out: Path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(out) as tmp:
        np.savez_compressed(tmp, **arrays)
