"""Where clips live: one ``.npz`` file per clip, or one group per clip in an HDF5 file (README, "Dataset layouts").

A clip's *address* is its ``.npz`` path, or ``<file>.h5::<group>`` for a clip inside an HDF5 file. This module
lists a dataset's clips, opens one with every safety check done before anything is read (no pickle, no size
a header merely claims, no link, external storage or virtual dataset that would make HDF5 open another file),
reads fields or only some frames, and computes the clip's content digests: hashes of the nine fields' values,
so a clip has the same digest in either container, compressed or not.

It sits above ``hashing`` and under ``stages`` (planning lists and digests clips) and ``io.clip`` (which checks
the contract).
"""
from __future__ import annotations

import hashlib
import operator
import os
import zipfile
from collections.abc import Iterator

import numpy as np

from svip_core.hashing import ContentHashes, file_hashes

# Unlabelled clips (no VIP named) feed self-training only; ``target_index`` there is absent or -1 (NO_LABEL).
UNLABELLED = "unlabelled"
SPLITS = ("train", "val", "test", UNLABELLED)
NO_LABEL = -1
REQUIRED_FIELDS = ("frames", "bboxes", "person_mask", "frame_mask", "person_ids", "original_ids",
                   "target_index", "video_id", "scene_category")
STRING_FIELDS = ("video_id", "scene_category")
# The members that make a clip what it is; the ids, names and label do not (a copy under another id is the same
# clip, and so is a copy whose label was dropped for the unlabelled split or changed).
PAYLOAD_FIELDS = ("frames", "bboxes", "person_mask", "frame_mask")
HDF5_SUFFIXES = (".h5", ".hdf5")
SEPARATOR = "::"
# Deflate cannot compress better than about 1032:1, so a member claiming more is lying about its size.
MAX_DEFLATE_RATIO = 1032
HASH_BLOCK = 16 << 20
# HDF5's built-in filters and h5py's lzf: any other id would make HDF5 look for a plugin library.
KNOWN_FILTERS = {1, 2, 3, 4, 5, 6, 32000}


class ClipError(ValueError):
    """A clip breaks the contract. ``field`` is the offending array (or ``file``)."""

    def __init__(self, path, field: str, problem: str, fix: str):
        self.path, self.field, self.problem, self.fix = str(path), field, problem, fix
        super().__init__(f"{path}: field '{field}': {problem}. Fix: {fix}")

    @property
    def reason(self) -> str:
        return f"{self.field}: {self.problem}"


def labelled(split: str) -> bool:
    """Whether a split's clips name their VIP (all but the unlabelled split)."""
    return split != UNLABELLED


# ---- addresses and listing ----------------------------------------------------------------------------------

def is_hdf5(path) -> bool:
    return str(path).endswith(HDF5_SUFFIXES)


def split_address(address) -> tuple[str, str | None]:
    """``file.h5::group`` -> (file, group); an ``.npz`` path (or a bare HDF5 file) -> (path, None)."""
    text = str(address)
    for suffix in HDF5_SUFFIXES:
        at = text.find(suffix + SEPARATOR)
        if at >= 0:
            return text[:at + len(suffix)], text[at + len(suffix) + len(SEPARATOR):]
    return text, None


def scan_containers(source) -> list[tuple[str, str, os.DirEntry]]:
    """(split, absolute path, directory entry) of every clip file of a dataset folder, in a stable order:
    ``<split>.h5`` (or ``.hdf5``) and ``<split>/*.npz``, ``<split>/*.h5``; hidden names (a leading dot: a killed
    writer's temporary, ``svip_core.atomic``, or a copy tool's metadata file) are not clips. Paths are made
    absolute without resolving links: one string join per file, no syscall (planning 100,000 clips)."""
    root = os.path.abspath(source)
    if not os.path.isdir(root):
        return []
    with os.scandir(root) as it:
        top = {e.name: e for e in it if e.is_file() and is_hdf5(e.name)}
    out = []
    for split in SPLITS:
        entries = [top[split + s] for s in HDF5_SUFFIXES if split + s in top]
        folder = os.path.join(root, split)
        if os.path.isdir(folder):
            with os.scandir(folder) as it:
                clips = (e for e in it if e.name.endswith((".npz",) + HDF5_SUFFIXES) and not e.name.startswith(".")
                         and e.is_file())
                entries += sorted(clips, key=operator.attrgetter("name"))
        out += [(split, e.path, e) for e in entries]
    return out


def container_clips(path) -> list[str]:
    """The addresses of the clips in one file: the ``.npz`` itself, or every top-level member of an HDF5 file in
    name order. A file that cannot be listed is returned as one address, which validation then refuses with the
    reason. Links are listed, never followed (opening the clip refuses them)."""
    path = str(path)
    if not is_hdf5(path):
        return [path]
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:
            names = sorted(f.keys())
    except Exception:
        return [path]
    return [f"{path}{SEPARATOR}{name}" for name in names]


def list_clips(source) -> list[tuple[str, str]]:
    """(split, address) of every clip of a dataset folder, in a stable order."""
    return [(split, address) for split, path, _ in scan_containers(source) for address in container_clips(path)]


# ---- opening --------------------------------------------------------------------------------------------------

def _refuse_size(address, field: str, shape, dtype: np.dtype, stored: int, compressed: bool,
                 max_array_bytes: int) -> None:
    """Refuse a field bigger than the limit, or than its stored bytes can inflate to, before allocating it."""
    nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if nbytes > max_array_bytes or nbytes > stored * (MAX_DEFLATE_RATIO if compressed else 1) + 1024:
        raise ClipError(address, field, f"header claims {nbytes:,} bytes for shape {tuple(shape)}, more than the "
                                        f"file holds or the limit data.max_array_bytes={max_array_bytes:,}",
                        "re-export the clip; raise data.max_array_bytes only for genuinely large clips")


def _little_endian(arr: np.ndarray) -> np.ndarray:
    """C-ordered, little-endian: the one byte layout a field is hashed in, whatever the container stored."""
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else None)


def _as_text(value) -> str:
    """A string field as text (undecodable bytes replaced); a non-scalar one (refused by the contract) as its
    list's repr, so it still hashes."""
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else repr(value.tolist())
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _unreadable(address, field: str, error: Exception, fix: str) -> ClipError:
    """The error for values that fail to decode (zlib, CRC, HDF5 filter errors), naming the field."""
    return ClipError(address, field, f"data unreadable ({type(error).__name__}: {error})", fix)


class _OpenClip:
    """A clip's open file, closed when the ``with`` block ends."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class NpzClip(_OpenClip):
    """A clip in an ``.npz`` file. ``fields``: {name: (shape, dtype)} of every member, read from the headers."""

    def __init__(self, path, max_array_bytes: int):
        self.address = str(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise ClipError(path, "file", f"not a readable .npz (zip) file ({e})",
                            "write clips with numpy.savez or numpy.savez_compressed") from None
        try:
            self.fields = self._headers(max_array_bytes)
        except ClipError:
            self.close()
            raise
        except Exception as e:  # truncated or corrupt members fail in many ways (zlib, EOF, struct, ...)
            self.close()
            raise ClipError(path, "file", f"corrupt or truncated archive ({type(e).__name__}: {e})",
                            "re-export the clip") from None

    def _headers(self, max_array_bytes: int) -> dict[str, tuple]:
        fields = {}
        for info in self._zip.infolist():
            if not info.filename.endswith(".npy"):
                continue
            field = info.filename[:-4]
            with self._zip.open(info) as f:
                shape, _, dtype = self._header(f, field)
            if dtype.hasobject:
                raise ClipError(self.address, field, "object array (would need pickle, refused)",
                                "store strings as fixed-width unicode (np.array(str)), numbers as numeric arrays")
            compressed = info.compress_type != zipfile.ZIP_STORED
            _refuse_size(self.address, field, shape, dtype, info.compress_size if compressed else info.file_size,
                         compressed, max_array_bytes)
            fields[field] = (tuple(shape), dtype)
        return fields

    def _header(self, f, field: str):
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return read(f, max_header_size=10000)
        except ValueError as e:
            raise ClipError(self.address, field, f"unreadable .npy header ({e})",
                            "re-save the clip with numpy.savez / savez_compressed") from None

    def read(self, field: str) -> np.ndarray:
        try:
            with self._zip.open(field + ".npy") as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except Exception as e:  # np refuses pickles with ValueError; corrupt data raises zlib/EOF errors
            raise _unreadable(self.address, field, e, "re-save the clip with numpy.savez") from None

    def read_frames(self, index: np.ndarray) -> np.ndarray:
        """(K,) frame indices -> (K, H, W, 3). A zip member cannot be read in parts: every frame is inflated."""
        return self.read("frames")[index]

    def peak(self, field: str) -> float:
        """The largest value of a numeric field, NaN read as 0 (float frames' scale)."""
        return float(np.nan_to_num(self.read(field).astype(np.float32)).max(initial=0.0))

    def blocks(self, field: str) -> Iterator[bytes]:
        """The field's values as C-ordered little-endian bytes, streamed when the stored layout already is."""
        with self._zip.open(field + ".npy") as f:
            shape, fortran, dtype = self._header(f, field)
            if not fortran and dtype.byteorder != ">" and dtype.kind not in "US":
                while block := f.read(HASH_BLOCK):
                    yield block
                return
        arr = self.read(field)
        yield _as_text(arr).encode() if arr.dtype.kind in "US" else _little_endian(arr).tobytes()

    def close(self) -> None:
        self._zip.close()


class H5Clip(_OpenClip):
    """A clip stored as a group of an HDF5 file. ``fields``: {name: (shape, dtype)}; string fields report a
    bytes dtype (fixed-length or variable-length strings are both read as text)."""

    def __init__(self, file: str, group: str | None, max_array_bytes: int):
        import h5py

        self.address = f"{file}{SEPARATOR}{group}" if group is not None else file
        try:
            self._file = h5py.File(file, "r", locking=False)
        except Exception as e:
            raise ClipError(file, "file", f"not a readable HDF5 file ({type(e).__name__}: {e})",
                            "re-export the dataset (svip convert), or copy the file again if it was truncated") from None
        try:
            if group is None:
                raise ClipError(file, "file", "is an HDF5 file, not one clip of it",
                                f"address a clip as {file}{SEPARATOR}<group>")
            self._group = self._member(self._file, group, "file", h5py.Group, "a group holding the clip's fields")
            self._datasets = {name: self._member(self._group, name, name, h5py.Dataset, "a dataset")
                              for name in sorted(self._group.keys())}
            self.fields = {name: self._check(name, ds, max_array_bytes) for name, ds in self._datasets.items()}
        except ClipError:
            self.close()
            raise
        except Exception as e:   # a damaged object header fails inside HDF5 in many ways
            self.close()
            raise ClipError(self.address, "file", f"damaged HDF5 structure ({type(e).__name__}: {e})",
                            "re-export the dataset (svip convert)") from None

    def _member(self, parent, name: str, field: str, kind, what: str):
        import h5py

        link = parent.get(name, getlink=True)
        if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)) or not isinstance(link, h5py.HardLink):
            target = f" to {link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else ""
            raise ClipError(self.address, field, f"is a {type(link).__name__}{target} (links are never followed)",
                            "store the data itself in the clip's group (svip convert writes no links)")
        obj = parent[name]
        if not isinstance(obj, kind):
            raise ClipError(self.address, field, f"is a {type(obj).__name__}, expected {what}",
                            "give each clip one group holding one dataset per field")
        return obj

    def _check(self, name: str, ds, max_array_bytes: int) -> tuple:
        import h5py

        if ds.is_virtual:
            raise ClipError(self.address, name, "is a virtual dataset (it reads other files)",
                            "store the data itself in the clip's group")
        if ds.external:
            raise ClipError(self.address, name, f"keeps its data in external files ({ds.external[0][0]}, ...)",
                            "store the data itself in the HDF5 file")
        if ds.shape is None:
            raise ClipError(self.address, name, "has no data (an empty dataspace)", "store the field's values")
        plist = ds.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        unknown = sorted(set(filters) - KNOWN_FILTERS)
        if unknown:
            raise ClipError(self.address, name, f"uses HDF5 filter {unknown[0]}, which is not built in",
                            "store it with gzip (svip convert does), lzf or no compression")
        # What the file's metadata says is stored, but never more than the file holds.
        stored = min(ds.id.get_storage_size(), os.path.getsize(self._file.filename))
        string = h5py.check_string_dtype(ds.dtype)
        if string is not None:
            if ds.shape != ():
                raise ClipError(self.address, name, f"is an array of strings with shape {ds.shape}",
                                "store one scalar string")
            if string.length is not None:   # a variable-length string's bytes lie in the file, uncompressed
                _refuse_size(self.address, name, (), np.dtype(f"S{string.length}"), stored, bool(filters),
                             max_array_bytes)
            return (), np.dtype(f"S{string.length or 1}")
        dtype = ds.dtype
        if h5py.check_vlen_dtype(dtype) is not None or dtype.hasobject or dtype.kind not in "biuf":
            raise ClipError(self.address, name, f"has dtype {dtype} (variable-length, object, compound, reference "
                                                f"or opaque data is refused)",
                            "store numbers as a plain numeric or bool array")
        _refuse_size(self.address, name, ds.shape, dtype, stored, bool(filters), max_array_bytes)
        return tuple(ds.shape), dtype

    def read(self, field: str) -> np.ndarray:
        ds = self._datasets[field]
        try:
            value = ds[()]
        except Exception as e:
            raise _unreadable(self.address, field, e, "re-export the dataset (svip convert)") from None
        return np.array(value if not isinstance(value, bytes) else np.bytes_(value))

    def read_frames(self, index: np.ndarray) -> np.ndarray:
        """(K,) frame indices -> (K, H, W, 3), reading only the chunks of those frames."""
        wanted, back = np.unique(np.asarray(index, dtype=np.int64), return_inverse=True)
        frames_ds = self._datasets["frames"]
        try:
            # One read per frame: h5py's list selection is slower than reading the whole clip (0.58 s vs 2 ms
            # for 16 of 120 frames at 192x336).
            frames = np.stack([frames_ds[int(t)] for t in wanted]) if len(wanted) else frames_ds[:0]
        except Exception as e:
            raise _unreadable(self.address, "frames", e, "re-export the dataset (svip convert)") from None
        return frames[back]

    def _rows(self, field: str) -> Iterator[np.ndarray]:
        """A dataset of one or more dimensions in blocks of whole rows, about HASH_BLOCK bytes each."""
        ds = self._datasets[field]
        row = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
        step = max(1, HASH_BLOCK // row)
        for start in range(0, ds.shape[0], step):
            yield ds[start:start + step]

    def peak(self, field: str) -> float:
        """The largest value of a numeric field, NaN read as 0, read in blocks (float frames' scale)."""
        if self._datasets[field].ndim == 0:
            return float(np.nan_to_num(self.read(field).astype(np.float32)))
        return max((float(np.nan_to_num(b.astype(np.float32)).max(initial=0.0)) for b in self._rows(field)),
                   default=0.0)

    def blocks(self, field: str) -> Iterator[bytes]:
        """The field's values as C-ordered little-endian bytes (text for strings), read in blocks of rows."""
        if self._datasets[field].ndim == 0:
            value = self.read(field)
            yield _as_text(value).encode() if value.dtype.kind in "US" else _little_endian(value).tobytes()
            return
        for block in self._rows(field):
            yield _little_endian(block).tobytes()

    def close(self) -> None:
        self._file.close()


def open_clip(address, max_array_bytes: int = 2_000_000_000) -> NpzClip | H5Clip:
    """Open a clip by address, checked (see the module docstring); use it as a context manager."""
    file, group = split_address(address)
    return H5Clip(file, group, max_array_bytes) if is_hdf5(file) else NpzClip(file, max_array_bytes)


# ---- content digests ---------------------------------------------------------------------------------------

def clip_digests(address, max_array_bytes: int = 2_000_000_000) -> tuple[str, str]:
    """(content, payload) hashes of a clip's values: content covers the nine fields, payload the pixels, boxes
    and masks only (the same clip under another id or label). Independent of the container, its compression and
    chunking, and of byte order. Raises ClipError for a clip that cannot be read."""
    with open_clip(address, max_array_bytes) as clip:
        parts = {}
        for field in REQUIRED_FIELDS:
            if field not in clip.fields:
                continue
            shape, dtype = clip.fields[field]
            kind = "text" if field in STRING_FIELDS and dtype.kind in "SU" else dtype.newbyteorder("<").str
            h = hashlib.sha256(f"{field}|{kind}|{shape if kind != 'text' else ()}|".encode())
            try:
                for block in clip.blocks(field):
                    h.update(block)
            except ClipError:
                raise
            except Exception as e:  # a corrupt block the header checks cannot see
                raise _unreadable(clip.address, field, e, "re-export the clip") from None
            parts[field] = h.hexdigest()
    content = hashlib.sha256(repr(sorted(parts.items())).encode()).hexdigest()
    payload = hashlib.sha256(repr([(f, parts[f]) for f in PAYLOAD_FIELDS if f in parts]).encode()).hexdigest()[:32]
    return content, payload


# The digest scheme's version: part of every cached digest's key and of planning's listing stamp, so a cache
# written by another scheme is never read as this one's.
DIGEST_SCHEME = "values-v2"


def clip_hashes(addresses, cache=None, max_array_bytes: int = 2_000_000_000) -> dict[str, tuple[str, str | None]]:
    """{address: (content, payload)} through ``cache`` (a ``ContentHashes``), keyed by each clip's address, its
    file's stat, the digest scheme and the size limit (over it a clip has no digest). A clip that cannot be
    read gets the file's SHA-256 with its address as content and no payload (validation rejects it; a change
    to the file still changes it), never remembered."""
    def compute(address):
        try:
            return " ".join(clip_digests(address, max_array_bytes))
        except ClipError:
            return None

    addresses = [str(a) for a in addresses]
    files = {a: split_address(a)[0] for a in addresses}
    file_stats = {file: os.stat(file) for file in set(files.values())}     # an HDF5 file holds many clips
    stats = {os.path.abspath(a): file_stats[files[a]] for a in addresses}
    cache = cache or ContentHashes(None)
    found = cache.derived(f"clip:{DIGEST_SCHEME}:{max_array_bytes}", stats, compute)
    unreadable = [a for a in addresses if found[os.path.abspath(a)] is None]
    file_digests = file_hashes({files[a] for a in unreadable}, cache)
    out = {}
    for address in addresses:
        value = found[os.path.abspath(address)]
        if value is None:
            out[address] = (hashlib.sha256(f"{address}|{file_digests[files[address]]}".encode()).hexdigest(), None)
        else:
            content, payload = value.split(" ")
            out[address] = (content, payload)
    return out
