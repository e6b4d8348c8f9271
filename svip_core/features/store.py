"""Zarr v3 feature stores, one per shard, readable by plain ``zarr`` (and ``xarray``) without SVIP.

Arrays (V clips, T frames, N person slots): visual (V,T,N,D) float16, geometry (V,T,N,G) float32,
person_mask (V,T,N) bool (already ANDed with frame_mask), frame_mask (V,T) bool, target_index (V,) int64 (-1 in
the unlabelled split), frame_stride (V,) float32 (source frames between consecutive samples of the clip, on
average), video_id, scene_category, split (V,) str; attrs["frame_stride"] is the shard's median stride. One clip
is one chunk.
A store made for fine-tuning the backbone's last k blocks (attrs["tuned_blocks"] = k > 0) also holds tokens: what
enters block L-k, float16, zstd-compressed, (V,T,S,D) per frame in roi mode or (V,T,N,S,D) per person's crop in
crop mode (S: leading tokens and patches; zeros where a frame or person is absent).
Stores written before frame_stride existed lack both; ``frame_strides`` reads them as 1.0. A store is
written under a temporary name and renamed when complete, so a killed job never leaves a store that looks
finished.
"""
from __future__ import annotations

import contextlib
import shutil

import numpy as np
import zarr

from svip_core.atomic import atomic_path, stale_partials


@contextlib.contextmanager
def writing_store(path, attrs: dict):
    """Yield a fresh zarr group at a temporary path; on success stamp ``complete`` and rename it into place."""
    # Snakemake runs one job per store, so a temporary of this store is a killed job's.
    for stale in stale_partials(path):
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_path(path) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        group.attrs.update({**attrs, "complete": False})
        yield group
        group.attrs["complete"] = True


def create_arrays(group, V: int, T: int, N: int, D: int, G: int) -> None:
    # Dimension names let xarray open the store as a Dataset.
    spec = {"visual": ((V, T, N, D), "float16", ("clip", "frame", "person", "feature")),
            "geometry": ((V, T, N, G), "float32", ("clip", "frame", "person", "geometry_field")),
            "person_mask": ((V, T, N), "bool", ("clip", "frame", "person")),
            "frame_mask": ((V, T), "bool", ("clip", "frame")),
            "target_index": ((V,), "int64", ("clip",)), "frame_stride": ((V,), "float32", ("clip",)),
            "video_id": ((V,), str, ("clip",)),
            "scene_category": ((V,), str, ("clip",)), "split": ((V,), str, ("clip",))}
    for name, (shape, dtype, dims) in spec.items():
        chunks = (1,) + shape[1:] if len(shape) > 1 else (max(V, 1),)
        # Visual is stored raw: the training loader must deliver a batch per GPU step, and decoding cost more
        # than reading. Measured per T=120, N=20, D=768 clip: 1.5 ms raw, 2.2 ms Blosc-LZ4, 5.9 ms zstd; the
        # loader's clips/s with LZ4 was two thirds of raw. The price is disk: zstd's files are 0.54 of raw
        # with half the slots empty (absent people are zeros), 0.77 with a fifth; features alone barely shrink.
        compressors = None if name == "visual" else "auto"
        group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, dimension_names=dims,
                           compressors=compressors)


def create_tokens(group, V: int, token_shape: tuple[int, ...]) -> None:
    """The tokens array for the tuned blocks: (V, *token_shape), one clip per chunk. Compressed, unlike visual:
    at 30 to 80 times visual's size per clip, disk is what they cost (zstd keeps about 0.9 of them)."""
    dims = ("clip", "frame", "token", "feature") if len(token_shape) == 3 else \
        ("clip", "frame", "person", "token", "feature")
    group.create_array("tokens", shape=(V, *token_shape), chunks=(1, *token_shape), dtype="float16",
                       dimension_names=dims, compressors=zarr.codecs.ZstdCodec(level=3))


def open_store(path):
    """Open a finished store read-only; refuse one that was never completed."""
    group = zarr.open_group(path, mode="r")
    if not group.attrs.get("complete", False):
        raise RuntimeError(f"{path}: feature store is incomplete (its writer was interrupted); re-run extract")
    return group


def frame_strides(group) -> np.ndarray:
    """(V,) float32 sampling stride of every clip; 1.0 for a store written before strides were recorded."""
    if "frame_stride" in group:
        return group["frame_stride"][:]
    return np.ones(group["target_index"].shape[0], np.float32)
