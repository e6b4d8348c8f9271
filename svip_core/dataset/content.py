"""What a dataset folder holds, as planning sees it: the content of its clips, and where each lies.

Planning reads it at every Snakemake parse, so it costs one stat per file when nothing changed (no pandas,
no clip opened twice).
"""
from __future__ import annotations

import array
import hashlib
import os

from svip_core.dataset.containers import DIGEST_SCHEME, clip_hashes, container_clips, labelled, scan_containers
from svip_core.hashing import ContentHashes, digest

# What a remembered listing holds: a new field makes every listing be read again.
LISTING_FIELDS = "clips,labelled,files,count"


def data_content(source, cache: ContentHashes | None = None, max_array_bytes: int = 2_000_000_000) -> dict:
    """What a dataset folder holds: ``clips`` hashes the (split, content) of every clip, ``labelled`` those of
    every split but the unlabelled one (what a training that does not self-train reads), ``files`` also where
    each lies (file, and group in an HDF5 file). Content is the clip's values (``containers.clip_digests``), so
    the same clips in ``.npz`` files or in HDF5 files hold the same ``clips``. Reads only files the cache does
    not know at their current size, mtime, inode and ctime; an unchanged listing costs one stat per file and
    one lookup."""
    cache = cache or ContentHashes()
    root = os.path.abspath(source)
    files = scan_containers(source)
    stats = [entry.stat() for _, _, entry in files]
    # The stamp of the listing: names, then sizes, mtimes and inodes as one int64 array (fast at 100,000 clips).
    numbers = array.array("q")
    for st in stats:
        numbers.extend((st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
    names = "\n".join([DIGEST_SCHEME, LISTING_FIELDS, str(max_array_bytes), root]
                      + [os.path.relpath(path, root) for _, path, _ in files])
    stamp = hashlib.sha256(names.encode() + numbers.tobytes()).hexdigest()
    known = cache.listing(stamp)
    if known is not None:
        return known
    clips = [(split, address) for split, path, _ in files for address in container_clips(path)]
    hashes = clip_hashes([a for _, a in clips], cache, max_array_bytes)
    value = {"clips": digest(sorted((split, hashes[a][0]) for split, a in clips), 32),
             "labelled": digest(sorted((split, hashes[a][0]) for split, a in clips if labelled(split)), 32),
             "files": digest([(split, os.path.relpath(a, root), hashes[a][0]) for split, a in clips], 32),
             "count": len(clips)}
    if not any(cache.is_racy(st) for st in stats):
        cache.remember(stamp, value)
    return value
