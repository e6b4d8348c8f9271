"""Shard member lists: JSON files naming each shard's clips (id, split, path, content hash).

Kept apart from the manifest code (pandas) because the workflow reads and refreshes them while planning.
"""
from __future__ import annotations

import json
from pathlib import Path

from svip_core.atomic import write_text

# The key prefix of a shard of unlabelled clips (manifest.assign_shards): planning tells their stores apart by name.
UNLABELLED_SHARD = "unlabelled-"


def is_unlabelled_shard(key: str) -> bool:
    """Whether a shard key (a store's name without .zarr) holds clips of the unlabelled split."""
    return key.startswith(UNLABELLED_SHARD)


def write_shared_shard(path: Path, members: list[dict]) -> None:
    """The member list extract reads for a shard key. Same key, same clips: only the paths can differ (another
    dataset holding them); those are refreshed, atomically, and an identical list is left untouched."""
    text = json.dumps(members, indent=1)
    if path.exists() and path.read_text() == text:
        return
    write_text(path, text)


def read_shard(path) -> list[dict]:
    return json.loads(Path(path).read_text())
