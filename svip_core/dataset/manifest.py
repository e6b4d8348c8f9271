"""The prepare stage's products: a manifest with one verdict per file, and content-addressed shards.

A video's shard is a stable hash of its ``video_id``; a shard's key is the hash of its members' ids, splits
and content hashes. Adding or changing one video therefore changes exactly one shard key, and only that
shard's feature store has to be rebuilt. Member lists are also written to a folder shared by every prepare
run (``shared_shards``), so a store is found again whichever dataset listed the same clips.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pandas as pd

from svip_core.config import no_clips
from svip_core.dataset.clip import ClipError, inspect_clip
from svip_core.dataset.containers import (SPLITS, clip_digests, clip_hashes, is_hdf5, labelled, list_clips,
                                         split_address)
from svip_core.dataset.shards import UNLABELLED_SHARD, write_shared_shard
from svip_core.hashing import ContentHashes
from svip_core.logs import progress

MANIFEST_COLUMNS = ["path", "video_id", "split", "T", "N", "persons_present", "scene_category", "verdict",
                    "reason", "content_hash", "payload_hash", "shard"]
log = logging.getLogger(__name__)


class DatasetError(RuntimeError):
    """The dataset as a whole cannot be used (no clips, duplicate or leaking ids under the 'error' policy).
    ``problems``: one line each, naming what, where and the fix."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def unlisted_files(manifest: pd.DataFrame) -> pd.Series:
    """Rows that are a whole HDF5 file no clip could be listed from (truncated, not HDF5): a file that may hold
    many clips, counted apart from them."""
    return manifest.path.map(lambda p: is_hdf5(p) and split_address(p)[1] is None)


def _counted(manifest: pd.DataFrame) -> tuple[int, int, int]:
    """(clips, rejected clips, unreadable HDF5 files): the files apart, as they may hold many clips."""
    files = unlisted_files(manifest)
    clips = manifest[~files]
    return len(clips), int((clips.verdict == "rejected").sum()), int(files.sum())


def verdict_counts(manifest: pd.DataFrame) -> str:
    """'41 clips: 38 accepted, 3 rejected', with unreadable HDF5 files said apart ('; 1 file could not be read,
    its clips not counted')."""
    clips, rejected, files = _counted(manifest)
    line = f"{clips} clips: {clips - rejected} accepted, {rejected} rejected"
    if files:
        several = files > 1
        line += f"; {files} file{'s' if several else ''} could not be read, {'their' if several else 'its'} clips not counted"
    return line


def rejected_summary(manifest: pd.DataFrame) -> str:
    """'3 of 41 clips rejected' (and unreadable HDF5 files apart), or '' when nothing was rejected."""
    clips, rejected, files = _counted(manifest)
    parts = [f"{rejected} of {clips} clips rejected"] if rejected else []
    if files:
        parts.append(f"{files} file{'s' if files > 1 else ''} unreadable")
    return " and ".join(parts)


def shard_of(video_id: str, num_shards: int) -> int:
    return int(hashlib.sha256(video_id.encode()).hexdigest()[:8], 16) % num_shards


def validate_files(files: list[tuple[str, str]], max_array_bytes: int,
                   cache: ContentHashes | None = None) -> pd.DataFrame:
    """One manifest row per clip (``path`` is its address): the verdict and, for rejects, the reason naming the
    field. Content hashes come through ``cache`` (the one that planning filled), so no clip is read twice for
    them."""
    hashes = clip_hashes([p for _, p in files], cache, max_array_bytes)
    rows = []
    for split, path in progress(files, desc="validate", unit="clip", disable=len(files) < 50):
        row = dict.fromkeys(MANIFEST_COLUMNS)
        content, payload = hashes[str(path)]
        row.update(path=str(path), split=split, verdict="accepted", reason="", shard=-1, content_hash=content)
        try:
            clip = inspect_clip(path, max_array_bytes, labelled=labelled(split))
            if payload is None:     # a value the contract check does not read (pixels) is corrupt: say which
                clip_digests(path, max_array_bytes)
            row.update(video_id=clip.video_id, T=clip.num_frames, N=clip.num_slots,
                       persons_present=int(clip.present.sum()), scene_category=clip.scene_category,
                       payload_hash=payload)
        except ClipError as e:
            row.update(verdict="rejected", reason=f"{e.reason}. Fix: {e.fix}")
        rows.append(row)
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


# What makes two clips the same: the same id, or the same content (file bytes, or the same pixels, boxes and
# masks under another id, label or compression).
SAME_CLIP = {"video_id": "video_id", "content_hash": "content",
             "payload_hash": "frames, boxes and masks, whatever the labels"}


def resolve_duplicates(manifest: pd.DataFrame, policy: str) -> pd.DataFrame:
    """The same clip (by id or content, ``SAME_CLIP``) twice in a split is a duplicate, in two splits a leak.
    'error' stops naming both files; 'drop' keeps one copy: train first (so the evaluation side loses a
    leaking clip), then the smallest content hash."""
    manifest = manifest.copy()
    rank = manifest.split.map({s: i for i, s in enumerate(SPLITS)}).fillna(len(SPLITS))
    problems, seen = [], set()
    for column, what in SAME_CLIP.items():
        ok = manifest[(manifest.verdict == "accepted") & manifest[column].notna()]
        # Train first, then by content: which copy is kept must not depend on file names (train's identity
        # does not include them).
        ok = ok.assign(_rank=rank[ok.index]).sort_values(["_rank", "content_hash", "path"], kind="stable")
        for value, group in ok[ok.duplicated(column, keep=False)].groupby(column, sort=True):
            if frozenset(group.index) in seen:       # a plain copy repeats id, bytes and payload: say it once
                continue
            seen.add(frozenset(group.index))
            kind = "leak between splits " + "/".join(sorted(set(group.split))) if group.split.nunique() > 1 else "duplicate"
            label = f"video_id {value!r}" if column == "video_id" else f"the same {what}"
            problems.append(f"data.on_duplicate_id = \"error\": {label} ({kind}) in " + " and ".join(group.path)
                            + ". Fix: give every clip a unique video_id and keep one copy of every clip, or set "
                              "data.on_duplicate_id: drop")
            first = group.iloc[0]
            for i in group.index[1:]:
                kind = "leak" if first.split != manifest.at[i, "split"] else "duplicate"
                manifest.loc[i, ["verdict", "reason"]] = [
                    "rejected", f"{column}: {kind} of {first.path} (same {what}). Fix: keep one copy of every clip"]
    if problems and policy == "error":
        raise DatasetError(problems)
    return manifest


def assign_shards(manifest: pd.DataFrame, num_shards: int) -> dict[str, list[dict]]:
    """Fill the manifest's shard column; return {shard key: members} for the non-empty shards. Unlabelled clips
    lie in shards of their own, keyed ``unlabelled-<hash>`` (``shards.is_unlabelled_shard``): a training that does not
    self-train leaves their stores out, so adding them re-extracts and retrains nothing it reads."""
    ok = manifest.verdict == "accepted"
    manifest.loc[ok, "shard"] = [shard_of(v, num_shards) for v in manifest.loc[ok, "video_id"]]
    shards = {}
    for (unlabelled, _), group in manifest[ok].groupby([~manifest.split[ok].map(labelled), "shard"]):
        members = group.sort_values("video_id")[["video_id", "split", "path", "content_hash"]].to_dict("records")
        key_src = [(m["video_id"], m["split"], m["content_hash"]) for m in members]
        key = hashlib.sha256(json.dumps(key_src).encode()).hexdigest()[:16]
        shards[f"{UNLABELLED_SHARD}{key}" if unlabelled else key] = members
    return shards


def prepare_dataset(source, out_dir, num_shards: int, max_array_bytes: int, on_duplicate_id: str,
                    cache: ContentHashes | None = None, shared_shards=None) -> pd.DataFrame:
    """Validate every clip under ``source``; write ``manifest.parquet`` and ``shards/<key>.json`` (and the
    same member lists under ``shared_shards``, when given)."""
    out_dir = Path(out_dir)
    files = list_clips(source)
    if not files:
        raise DatasetError(no_clips(source))
    manifest = resolve_duplicates(validate_files(files, max_array_bytes, cache), on_duplicate_id)
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
        if shared_shards is not None:
            write_shared_shard(Path(shared_shards) / f"{key}.json", members)
    manifest.to_parquet(out_dir / "manifest.parquet", index=False)
    per_split = accepted.split.value_counts()
    log.info("%s (%s); %d shards", verdict_counts(manifest),
             ", ".join(f"{split} {per_split[split]}" for split in SPLITS if split in per_split), len(shards))
    return manifest
