"""Training data: clips read from the Zarr feature stores as they are needed, never all held in RAM."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from svip_core.features.store import frame_strides, open_store


class StoreClips(Dataset):
    """Every clip of ``split`` across the given stores. An item is one chunk read per array."""

    def __init__(self, store_paths: list[str], split: str):
        self.paths = [str(p) for p in store_paths]
        self.rows = [np.flatnonzero(open_store(path)["split"][:] == split) for path in self.paths]   # per store
        self.index = [(s, row) for s, rows in enumerate(self.rows) for row in rows]
        self._groups: dict[int, object] = {}

    def __len__(self):
        return len(self.index)

    def _group(self, s: int):
        # Opened lazily so each DataLoader worker holds its own handle.
        if s not in self._groups:
            self._groups[s] = open_store(self.paths[s])
        return self._groups[s]

    def __getitem__(self, i: int) -> dict:
        s, row = self.index[i]
        g = self._group(s)
        return {"visual": torch.from_numpy(g["visual"][row].astype(np.float32)),       # (T, N, D)
                "geometry": torch.from_numpy(g["geometry"][row]),                        # (T, N, G)
                "valid": torch.from_numpy(g["person_mask"][row]),                        # (T, N)
                "target": torch.tensor(int(g["target_index"][row])),
                "item": torch.tensor(i)}

    def describe(self, i: int) -> dict:
        s, row = self.index[i]
        g = self._group(s)
        return {"video_id": str(g["video_id"][row]), "scene_category": str(g["scene_category"][row])}

    def _rows_evenly(self, limit: int) -> list[tuple[int, np.ndarray]]:
        """(store, sorted rows) of at most ``limit`` clips spread evenly over the split (every clip if fewer)."""
        pick = np.unique(np.linspace(0, len(self.index) - 1, min(limit, len(self.index))).round().astype(int))
        chosen = [self.index[i] for i in pick] if len(self.index) else []
        return [(s, np.array(sorted(r for t, r in chosen if t == s), np.int64)) for s in range(len(self.paths))]

    def geometry_sample(self, limit: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw geometry (V, T, N, G) and valid (V, T, N) of up to ``limit`` clips spread over the split: enough
        for normalisation statistics without reading a large dataset whole."""
        geometry, valid = [], []
        for s, rows in self._rows_evenly(limit):
            if len(rows):
                g = self._group(s)
                geometry.append(g["geometry"].get_orthogonal_selection((rows,)))
                valid.append(g["person_mask"].get_orthogonal_selection((rows,)))
        return torch.from_numpy(np.concatenate(geometry)), torch.from_numpy(np.concatenate(valid))

    def chance_top1(self) -> float:
        """Expected top-1 of a random ranking on this split: the mean over clips of 1 / people present."""
        people = np.concatenate([self._group(s)["person_mask"].get_orthogonal_selection((rows,)).any(1).sum(-1)
                                 for s, rows in enumerate(self.rows) if len(rows)]) if self.index else np.ones(1)
        return float(np.mean(1.0 / np.maximum(people, 1)))

    def frame_stride(self) -> float:
        """Median sampling stride (source frames between samples) over this split's clips in every store."""
        strides = np.concatenate([frame_strides(self._group(s))[rows] for s, rows in enumerate(self.rows)])
        return float(np.median(strides)) if len(strides) else 1.0

    def provenance(self) -> dict:
        """The first store's attributes: how its features were made (backbone, feature config, ...)."""
        return dict(open_store(self.paths[0]).attrs)

    def dims(self) -> tuple[int, int]:
        """(visual dim D, geometry dim G)."""
        g = self._group(self.index[0][0]) if self.index else open_store(self.paths[0])
        return g["visual"].shape[-1], g["geometry"].shape[-1]
