"""The prepare stage's products: a manifest with one verdict per file, and content-addressed shards.

A video's shard is a stable hash of its ``video_id``; a shard's key is the hash of its members' ids, splits
and content hashes. Adding or changing one video therefore changes exactly one shard key, and only that
shard's feature store has to be rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from svip_core.io.clip import ClipError, content_hash, inspect_clip

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ["path", "video_id", "split", "T", "N", "persons_present", "scene_category", "verdict",
                    "reason", "content_hash", "shard"]
log = logging.getLogger(__name__)


class DatasetError(RuntimeError):
    """The dataset as a whole cannot be used (no clips, duplicate or leaking ids under the 'error' policy)."""


def list_clips(source) -> list[tuple[str, Path]]:
    """(split, path) of every ``<source>/<split>/*.npz``, in a stable order."""
    source = Path(source)
    return [(split, p) for split in SPLITS for p in sorted((source / split).glob("*.npz"))]


def shard_of(video_id: str, num_shards: int) -> int:
    return int(hashlib.sha256(video_id.encode()).hexdigest()[:8], 16) % num_shards


def validate_files(files: list[tuple[str, Path]], max_array_bytes: int) -> pd.DataFrame:
    """One manifest row per file: the verdict and, for rejects, the reason naming the field."""
    rows = []
    for split, path in tqdm(files, desc="validate", unit="clip", disable=len(files) < 50):
        row = dict.fromkeys(MANIFEST_COLUMNS)
        row.update(path=str(path), split=split, verdict="accepted", reason="", shard=-1)
        try:
            clip = inspect_clip(path, max_array_bytes)
            row.update(video_id=clip.video_id, T=clip.num_frames, N=clip.num_slots,
                       persons_present=int(clip.present.sum()), scene_category=clip.scene_category,
                       content_hash=content_hash(path))
        except ClipError as e:
            row.update(verdict="rejected", reason=f"{e.reason}. Fix: {e.fix}")
        rows.append(row)
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def resolve_duplicates(manifest: pd.DataFrame, policy: str) -> pd.DataFrame:
    """A video_id twice in a split is a duplicate, in two splits a leak. 'error' stops naming both files;
    'drop' rejects every copy after the first (train first, so the evaluation side loses a leaking clip)."""
    accepted = manifest[manifest.verdict == "accepted"]
    repeats = accepted[accepted.duplicated("video_id", keep=False)]
    if repeats.empty:
        return manifest
    problems = []
    for video_id, group in repeats.groupby("video_id", sort=True):
        kind = "leak between splits " + "/".join(sorted(set(group.split))) if group.split.nunique() > 1 else "duplicate"
        problems.append(f"video_id {video_id!r} ({kind}): " + " and ".join(group.path))
    if policy == "error":
        raise DatasetError("duplicate or leaking video_id values:\n  " + "\n  ".join(problems)
                           + "\nFix: give every clip a unique video_id, or set data.on_duplicate_id: drop")
    manifest = manifest.copy()
    later = repeats[repeats.duplicated("video_id", keep="first")].index
    for i in later:
        first = repeats[(repeats.video_id == manifest.at[i, "video_id"])].iloc[0]
        kind = "leak" if first.split != manifest.at[i, "split"] else "duplicate"
        manifest.loc[i, ["verdict", "reason"]] = ["rejected", f"video_id: {kind} of {first.path}. Fix: give "
                                                               f"every clip a unique video_id"]
    return manifest


def assign_shards(manifest: pd.DataFrame, num_shards: int) -> dict[str, list[dict]]:
    """Fill the manifest's shard column; return {shard key: members} for the non-empty shards."""
    ok = manifest.verdict == "accepted"
    manifest.loc[ok, "shard"] = [shard_of(v, num_shards) for v in manifest.loc[ok, "video_id"]]
    shards = {}
    for _, group in manifest[ok].groupby("shard"):
        members = group.sort_values("video_id")[["video_id", "split", "path", "content_hash"]].to_dict("records")
        key_src = [(m["video_id"], m["split"], m["content_hash"]) for m in members]
        shards[hashlib.sha256(json.dumps(key_src).encode()).hexdigest()[:16]] = members
    return shards


def prepare_dataset(source, out_dir, num_shards: int, max_array_bytes: int, on_duplicate_id: str) -> pd.DataFrame:
    """Validate every clip under ``source``; write ``manifest.parquet`` and ``shards/<key>.json``."""
    out_dir = Path(out_dir)
    files = list_clips(source)
    if not files:
        raise DatasetError(f"{source}: no clips found. Fix: put MSG_VIP .npz files under "
                           f"{source}/train, {source}/val and optionally {source}/test")
    manifest = resolve_duplicates(validate_files(files, max_array_bytes), on_duplicate_id)
    shards = assign_shards(manifest, num_shards)
    accepted = manifest[manifest.verdict == "accepted"]
    for split in ("train", "val"):
        if not (accepted.split == split).any():
            raise DatasetError(f"{source}/{split}: no accepted clip in the {split} split. Fix: see the reasons "
                               f"in {out_dir / 'manifest.parquet'}")
    for _, row in manifest[manifest.verdict == "rejected"].iterrows():
        log.warning("rejected %s: %s", row.path, row.reason)
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    for key, members in shards.items():
        (out_dir / "shards" / f"{key}.json").write_text(json.dumps(members, indent=1))
    manifest.to_parquet(out_dir / "manifest.parquet", index=False)
    log.info("%d clips: %d accepted in %d shards, %d rejected", len(manifest), len(accepted), len(shards),
             len(manifest) - len(accepted))
    return manifest


def read_shard(path) -> list[dict]:
    return json.loads(Path(path).read_text())
