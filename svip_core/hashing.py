"""Hashing helpers under every other module: stable digests of objects, file contents and code.

- ``digest``: short hash of a JSON-serialisable object, independent of dict key order.
- ``ContentHashes``: SHA-256 of files (and values derived from a file, such as a clip's digests), cached in
  SQLite by (path, size, mtime, inode, ctime) as git does, so only new or changed files are read again.
- ``code_digest``: hash of the Python modules a stage runs, parsed to an AST without docstrings, so edits
  to comments, docstrings and layout do not count as code changes while any edit to what runs does.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

HASH_LEN = 12
PACKAGE_ROOT = Path(__file__).resolve().parent
PACKAGE = PACKAGE_ROOT.name
DEFAULT_CACHE = Path("results") / ".cache" / "content_hashes.sqlite"
# A file changed within this many seconds of being hashed could change again within the same mtime tick
# ("racily clean" in git's words): such a hash is used but never cached.
RACY_SECONDS = 2.0


def digest(obj, length: int = HASH_LEN) -> str:
    """Stable short hash of a JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def file_sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    # ctime too: a rewrite that restores size and mtime (rsync --inplace -a) still changes it.
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


class ContentHashes:
    """SHA-256 of files, remembered in a SQLite file keyed by absolute path and (size, mtime, inode, ctime).

    ``path=None`` keeps nothing on disk (every file is read). The cache is only an accelerator: deleting it
    costs one more read of every file, never a wrong hash (as long as no tool rewrites a file and restores
    its size, mtime, inode and ctime)."""

    def __init__(self, path: str | os.PathLike | None = DEFAULT_CACHE):
        self.path = Path(path) if path is not None else None
        self._db = None

    def _connect(self):
        if self._db is None and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Several Snakemake jobs may parse the workflow at once (SLURM): wait for a writer's lock.
            self._db = sqlite3.connect(self.path, timeout=120)
            self._db.execute("CREATE TABLE IF NOT EXISTS file_hashes (path TEXT PRIMARY KEY, size INTEGER, "
                             "mtime_ns INTEGER, inode INTEGER, ctime_ns INTEGER, sha256 TEXT)")
            self._db.execute("CREATE TABLE IF NOT EXISTS listings (stamp TEXT PRIMARY KEY, value TEXT)")
        return self._db

    def hashes(self, stats: dict[str, os.stat_result]) -> dict[str, str]:
        """{absolute path: sha256} for files whose stat results are given; reads only unknown or changed ones."""
        return self.derived("", stats, file_sha256)

    def derived(self, kind: str, stats: dict[str, os.stat_result], compute) -> dict[str, str]:
        """{key: compute(key)} for keys whose source file has the given stat result, remembered under ``kind``
        (a clip inside an HDF5 file is keyed by its address and the file's stat). A None from ``compute`` is
        returned but never remembered."""
        db = self._connect()
        keyed = {f"{kind}\0{k}" if kind else k: k for k in stats}
        known = {}
        if db is not None and stats:
            columns = "path, size, mtime_ns, inode, ctime_ns, sha256"
            rows = db.execute(f"SELECT {columns} FROM file_hashes").fetchall() if len(stats) > 500 else \
                [row for p in keyed for row in db.execute(f"SELECT {columns} FROM file_hashes WHERE path = ?", (p,))]
            known = {keyed[r[0]]: (tuple(r[1:5]), r[5]) for r in rows if r[0] in keyed}
        out, fresh = {}, []
        for (row_key, key), st in zip(keyed.items(), stats.values()):
            hit = known.get(key)
            if hit is not None and hit[0] == _stamp(st):
                out[key] = hit[1]
                continue
            out[key] = compute(key)
            if out[key] is not None and not self.is_racy(st):
                fresh.append((row_key, *_stamp(st), out[key]))
        if db is not None and fresh:
            with db:
                db.executemany("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?, ?, ?)", fresh)
        return out

    @staticmethod
    def is_racy(st: os.stat_result) -> bool:
        """Modified so recently that a further change could keep the same mtime: never cache its hash."""
        return time.time_ns() - st.st_mtime_ns < RACY_SECONDS * 1e9

    def listing(self, stamp: str):
        """A value remembered for a whole listing's stamp (see ``remember``), else None."""
        db = self._connect()
        if db is None:
            return None
        row = db.execute("SELECT value FROM listings WHERE stamp = ?", (stamp,)).fetchone()
        return json.loads(row[0]) if row else None

    def remember(self, stamp: str, value) -> None:
        db = self._connect()
        if db is not None:
            with db:
                db.execute("INSERT OR REPLACE INTO listings VALUES (?, ?)", (stamp, json.dumps(value)))


def file_hashes(paths, cache: ContentHashes | None = None) -> dict[str, str]:
    """{str(path): sha256} for ``paths`` (through ``cache`` when given). The cache is keyed by the absolute path
    without resolving links, as planning (``containers.scan_containers``) keys it."""
    stats = {os.path.abspath(p): os.stat(p) for p in paths}
    by_abs = (cache or ContentHashes(None)).hashes(stats)
    return {str(p): by_abs[os.path.abspath(p)] for p in paths}


# ---- code ---------------------------------------------------------------------------------------------------

def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _parsed(path: str) -> tuple[str, tuple[str, ...]]:
    """(digest of the docstring-free AST, svip_core modules it imports) of one source file."""
    tree = ast.parse(Path(path).read_text(), filename=path)
    try:       # the package a relative import starts from (a file outside svip_core has none)
        package = list(Path(path).resolve().relative_to(PACKAGE_ROOT.parent).parts[:-1])
    except ValueError:
        package = None
    imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            module = node.module
            if node.level and package is not None:
                module = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            if (node.level and package is None) or not module or module.split(".")[0] != PACKAGE:
                continue
            imports.add(module)
            # `from svip_core.features import extract` imports a module, not a name.
            imports.update(f"{module}.{a.name}" for a in node.names)
    text = ast.dump(_strip_docstrings(tree), annotate_fields=False)
    return hashlib.sha256(text.encode()).hexdigest(), tuple(sorted(imports))


def module_file(module: str) -> Path | None:
    """The source file of a svip_core module (None when the dotted name is not a module, e.g. a function)."""
    rel = Path(*module.split(".")[1:])
    for candidate in (PACKAGE_ROOT / rel.with_suffix(".py"), PACKAGE_ROOT / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


_SOURCES: dict[tuple, tuple[str, tuple[str, ...]]] = {}
_CODE_CACHE: list = []          # the results folder's ContentHashes, opened on first use


def _source(path: Path) -> tuple[str, tuple[str, ...]]:
    """``_parsed`` of one file, memoised in the process and, when the working directory has a results folder,
    in its cache: parsing every module at every plan would cost a few tenths of a second."""
    st = path.stat()
    key = (str(path), *_stamp(st))
    if key in _SOURCES:
        return _SOURCES[key]
    if not _CODE_CACHE:
        _CODE_CACHE.append(ContentHashes() if DEFAULT_CACHE.parent.parent.is_dir() else None)
    cache, stamp = _CODE_CACHE[0], "code:" + json.dumps(key)
    known = cache.listing(stamp) if cache is not None else None
    if known is not None:
        value = (known[0], tuple(known[1]))
    else:
        value = _parsed(str(path))
        if cache is not None and not ContentHashes.is_racy(st):
            cache.remember(stamp, [value[0], list(value[1])])
    _SOURCES[key] = value
    return value


def code_closure(roots: tuple[str, ...], exclude: frozenset[str] = frozenset()) -> list[str]:
    """The svip_core modules ``roots`` import, directly or not (imports inside functions included)."""
    seen, todo = set(), list(roots)
    while todo:
        module = todo.pop()
        if module in seen or module in exclude:
            continue
        path = module_file(module)
        if path is None:
            continue
        seen.add(module)
        todo.extend(_source(path)[1])
    return sorted(seen)


def imported_modules(path) -> tuple[str, ...]:
    """The svip_core names a source file imports (modules or their members; ``code_closure`` keeps the modules)."""
    return _source(Path(path))[1]


def code_digest(roots: tuple[str, ...], exclude: frozenset[str] = frozenset(), files: tuple = ()) -> dict:
    """{module or file: digest} of the code ``roots`` run, plus extra source ``files`` (scripts)."""
    out = {m: _source(module_file(m))[0][:HASH_LEN] for m in code_closure(roots, exclude)}
    for f in files:
        out[Path(f).name] = _source(Path(f))[0][:HASH_LEN]
    return out
