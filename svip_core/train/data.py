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
