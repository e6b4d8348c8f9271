"""Writing a file or a folder so that no reader ever takes a half-written one as complete.

Everything SVIP writes for others to read (clips, HDF5 files, feature stores, checkpoints, curves, shard lists,
the embedded backbone) is written under a temporary name beside its final path and renamed into place when it
is complete: a rename within one folder is atomic, so a reader sees the old result or the new one, never a
part. A writer killed before the rename leaves only its temporary, whose name is hidden (a leading dot, which
dataset scans and globs skip) and says ``.partial-``.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

PARTIAL = ".partial-"


def partial_name(path: Path) -> Path:
    """A unique temporary sibling of ``path``: hidden, marked partial, and ending in the same suffix (writers such
    as ``np.savez`` append theirs when it is missing)."""
    return path.with_name(f".{path.name}{PARTIAL}{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def stale_partials(path) -> list[Path]:
    """Temporaries of ``path`` left by writers that were killed (any process)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}{PARTIAL}*"))


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write a file or folder at; when the block ends without error it
    replaces ``path`` (a folder already there is removed first), otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir() and not path.is_symlink():
            # A folder cannot be renamed over a non-empty one; the old result goes first (a reader between the two
            # steps sees no result, never a partial one).
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def write_text(path, text: str) -> None:
    """``path.write_text(text)``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
