"""Training data: clips read from the Zarr feature stores as they are needed, never all held in RAM.

The step must never wait for the disk. Each process keeps its own array handles (a Zarr lookup per item costs
more than the read), targets and masks are read once for the whole split, visual features stay float16 until
they reach the model's device, and ``on_device`` copies the next batch to the GPU while the current one runs.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from svip_core.features.store import frame_strides, open_store


def _first_by_video_id(groups, rows: list[np.ndarray], first: int, split: str, paths, rest: bool = False) -> list[np.ndarray]:
    """Per store, the sorted rows of the ``first`` clips of the split by video id, across the stores (``rest``:
    of every clip after them)."""
    ids = [(str(vid), s, int(row)) for s, (g, r) in enumerate(zip(groups, rows)) for vid, row in
           zip(g["video_id"].get_orthogonal_selection((r,)) if len(r) else [], r)]
    if first > len(ids):
        raise ValueError(f"train.clips = {first}: the stores ({', '.join(paths)}) hold {len(ids)} {split} clips. "
                         f"Fix: set train.clips to at most {len(ids)}, or 0 for all of them")
    kept = sorted(ids)[first:] if rest else sorted(ids)[:first]
    return [np.array(sorted(row for _, t, row in kept if t == s), np.int64) for s in range(len(groups))]


class StoreClips(Dataset):
    """Every clip of ``split`` across the given stores. An item reads one chunk of visual and of geometry;
    masks and targets come from memory. For a model whose backbone's last k = ``tuned_blocks`` blocks are
    fine-tuned, an item holds the trunk's tokens in place of visual (the model makes its visual features)."""

    def __init__(self, store_paths: list[str], split: str | tuple[str, ...], tuned_blocks: int = 0, first: int = 0,
                 rest: bool = False):
        """``split``: one split, or several read as one set. ``first`` > 0: only the (first) split's first ``first``
        clips by video id (a learning curve's smaller training sets from one extraction: the synthetic benchmarks'
        n training clips are the first n of any larger set); with ``rest``, every clip after those (self-training
        learns from them as unlabelled, beside the unlabelled split's)."""
        self.paths = [str(p) for p in store_paths]
        groups = [open_store(path) for path in self.paths]
        for path, g in zip(self.paths, groups):
            if tuned_blocks and (g.attrs.get("tuned_blocks") != tuned_blocks or "tokens" not in g):
                raise ValueError(f"{path}: the store holds no tokens for train.finetune_blocks = {tuned_blocks} "
                                 f"(it was made for {g.attrs.get('tuned_blocks', 0)}). Fix: extract it again with "
                                 f"that setting (snakemake does, from the config), or set train.finetune_blocks: 0")
        self.visual_key = "tokens" if tuned_blocks else "visual"
        splits = (split,) if isinstance(split, str) else tuple(split)
        columns = [g["split"][:] for g in groups]
        rows = {name: [np.flatnonzero(column == name) for column in columns] for name in splits}    # per store
        if first:
            rows[splits[0]] = _first_by_video_id(groups, rows[splits[0]], first, splits[0], self.paths, rest)
        self.rows = [np.sort(np.concatenate([rows[name][s] for name in splits])) for s in range(len(groups))]
        # (store, row in the store, position in the split's part of that store)
        self.index = [(s, row, k) for s, rows in enumerate(self.rows) for k, row in enumerate(rows)]
        # Small arrays of the whole split, read once: (V, T, N) bool masks and (V,) targets.
        self._valid = [torch.from_numpy(g["person_mask"].get_orthogonal_selection((rows,))) if len(rows) else None
                       for g, rows in zip(groups, self.rows)]
        self._target = [torch.from_numpy(g["target_index"][:][rows].astype(np.int64)) for g, rows in
                        zip(groups, self.rows)]
        self._arrays: tuple[int, dict] | None = None

    def __len__(self):
        return len(self.index)

    def _store_arrays(self, s: int) -> dict:
        # Handles are opened once per process: a DataLoader worker (a fork or a spawn) opens its own.
        if self._arrays is None or self._arrays[0] != os.getpid():
            self._arrays = (os.getpid(), {})
        arrays = self._arrays[1]
        if s not in arrays:
            g = open_store(self.paths[s])
            arrays[s] = {name: g[name] for name in (self.visual_key, "geometry", "video_id", "scene_category")}
        return arrays[s]

    def __getstate__(self):
        # Open Zarr handles do not travel to spawned workers; each reopens its own.
        return {**self.__dict__, "_arrays": None}

    def __getitem__(self, i: int) -> dict:
        s, row, k = self.index[i]
        a = self._store_arrays(s)
        return {self.visual_key: torch.from_numpy(a[self.visual_key][row]),          # (T, N, D) or tokens, fp16
                "geometry": torch.from_numpy(a["geometry"][row]),                                # (T, N, G)
                "valid": self._valid[s][k],                                                     # (T, N)
                "target": self._target[s][k],
                "item": torch.tensor(i)}

    def describe(self, i: int) -> dict:
        s, row, _ = self.index[i]
        a = self._store_arrays(s)
        return {"video_id": str(a["video_id"][row]), "scene_category": str(a["scene_category"][row])}

    def _rows_evenly(self, limit: int) -> list[tuple[int, np.ndarray]]:
        """(store, sorted rows) of at most ``limit`` clips spread evenly over the split (every clip if fewer)."""
        pick = np.unique(np.linspace(0, len(self.index) - 1, min(limit, len(self.index))).round().astype(int))
        chosen = [self.index[i] for i in pick] if len(self.index) else []
        return [(s, np.array(sorted(r for t, r, _ in chosen if t == s), np.int64)) for s in range(len(self.paths))]

    def geometry_sample(self, limit: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw geometry (V, T, N, G) and valid (V, T, N) of up to ``limit`` clips spread over the split: enough
        for normalisation statistics without reading a large dataset whole."""
        geometry, valid = [], []
        for s, rows in self._rows_evenly(limit):
            if len(rows):
                geometry.append(torch.from_numpy(self._store_arrays(s)["geometry"].get_orthogonal_selection((rows,))))
                valid.append(self._valid[s][np.searchsorted(self.rows[s], rows)])
        return torch.cat(geometry), torch.cat(valid)

    def chance_top1(self) -> float:
        """Expected top-1 of a random ranking on this split: the mean over clips of 1 / people present."""
        people = torch.cat([v.any(1).sum(-1) for v in self._valid if v is not None]) if self.index else torch.ones(1)
        return float(torch.mean(1.0 / people.clamp(min=1).double()))

    def frame_stride(self) -> float:
        """Median sampling stride (source frames between samples) over this split's clips in every store."""
        strides = np.concatenate([frame_strides(open_store(self.paths[s]))[rows] for s, rows in enumerate(self.rows)])
        return float(np.median(strides)) if len(strides) else 1.0

    def provenance(self) -> dict:
        """The first store's attributes: how its features were made (backbone, feature config, ...)."""
        return dict(open_store(self.paths[0]).attrs)

    def dims(self) -> tuple[int, int]:
        """(visual dim D, geometry dim G)."""
        g = open_store(self.paths[self.index[0][0]] if self.index else self.paths[0])
        return g["visual"].shape[-1], g["geometry"].shape[-1]


def loader_workers(setting: int | str, device: torch.device, processes_per_node: int = 1) -> int:
    """DataLoader workers per process: ``setting`` as given, or for "auto" on a GPU the cores this process's
    share leaves after its own (at most 4: a clip is one chunk read, a few readers keep up with any step).
    On the CPU "auto" is 0: a clip reads in milliseconds against a step of a tenth of a second or more, and a
    worker would only take a core from the step's own threads."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores // max(1, processes_per_node) - 1))


def clip_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device,
                sampler: Sampler | Iterable | None = None) -> DataLoader:
    """Batches of ``dataset`` in ``sampler``'s order (the dataset's order without one). Workers persist across
    epochs (no re-fork, no re-opened stores each epoch) and, on a GPU, fill pinned memory for fast copies.
    The loader's own generator is seeded, so worker seeds, and the numbers, do not depend on ``workers``."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                      prefetch_factor=4 if workers else None, generator=torch.Generator().manual_seed(0))


def on_device(batches: Iterable[dict], device: torch.device) -> Iterator[dict]:
    """Each batch's tensors on ``device``. On a GPU the next batch is copied on a side stream while the
    current one is used, so the step never waits for a host-to-device copy."""
    if device.type != "cuda":
        yield from batches
        return
    stream = torch.cuda.Stream(device)

    def copy(batch: dict) -> dict:
        with torch.cuda.stream(stream):
            return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    pending = None
    for batch in batches:
        ready = copy(batch)
        if pending is not None:
            yield pending
        torch.cuda.current_stream(device).wait_stream(stream)
        for v in ready.values():
            v.record_stream(torch.cuda.current_stream(device))
        pending = ready
    if pending is not None:
        yield pending


def waited_for(batches: Iterable[dict], totals: dict) -> Iterator[dict]:
    """``batches`` as they come, adding the seconds spent waiting for each to ``totals["data_wait"]``: the time
    the step stood idle for want of data (with workers, what they could not prefetch in time)."""
    batches = iter(batches)
    while True:
        start = time.perf_counter()
        batch = next(batches, None)
        totals["data_wait"] = totals.get("data_wait", 0.0) + time.perf_counter() - start
        if batch is None:
            return
        yield batch
