"""The house keeps its layout: data flows one way through svip_core, each folder holds one kind of thing, no two
modules share a name, one helper writes atomically, and `snakemake --lint` is clean."""
from __future__ import annotations

import ast
import subprocess
from collections import Counter
from pathlib import Path

from conftest import BIN, ROOT

PACKAGE = ROOT / "svip_core"
# svip_core in the order data flows: a module may import from earlier layers and from its own folder only.
# The synthetic benchmarks and video-to-tracks lie beside the dataset contract, and none of the three imports
# another.
LAYERS = (
    ("hashing", "atomic"),
    ("logs",),
    ("interrupt",),
    ("config",),
    ("dataset", "synthetic", "video"),
    ("features",),
    ("model",),
    ("train",),
    ("evaluate",),
    ("report",),
    ("stages",),
    ("predict",),
    ("devices", "launch"),
    ("cli",),
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def modules() -> dict[str, Path]:
    """{dotted name: file} of every svip_core module."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(path: Path) -> set[str]:
    """svip_core modules (or their members) a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("svip_core."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("svip_core."):
            found.add(node.module)
    return found


def top(module: str) -> str:
    """The folder or root module a dotted name belongs to: svip_core.dataset.clip -> dataset."""
    return module.split(".")[1]


def test_every_module_belongs_to_a_layer():
    unplaced = sorted({top(m) for m in modules() if m != "svip_core"} - set(RANK))
    assert not unplaced, f"place {unplaced} in LAYERS (tests/test_layout.py) and the README's layout"


def test_data_flows_one_way_through_svip_core():
    wrong = []
    for module, path in modules().items():
        if module == "svip_core":
            continue
        for target in imported(path):
            if top(target) == top(module):
                continue
            if RANK[top(target)] >= RANK[top(module)]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the flow (see LAYERS):\n" + "\n".join(sorted(wrong))


def test_no_two_modules_share_a_name():
    names = Counter(path.stem for path in PACKAGE.rglob("*.py") if path.stem != "__init__")
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    shared = sorted(name for name, n in names.items() if n > 1) + sorted(folders & set(names))
    assert not shared, f"module names used twice: {shared}"


def _renames(path: Path) -> list[int]:
    """Lines of a file that rename a path: os.replace / os.rename, or a one-argument .replace() / .rename() (a
    Path's; str.replace takes two)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("replace", "rename"):
            on_os = isinstance(node.func.value, ast.Name) and node.func.value.id == "os"
            if on_os or (len(node.args) == 1 and not node.keywords):
                lines.append(node.lineno)
    return lines


def test_only_the_atomic_helper_renames_files_into_place():
    found = {str(path.relative_to(ROOT)): _renames(path) for path in modules().values()}
    found.pop("svip_core/atomic.py")
    assert not {k: v for k, v in found.items() if v}, "write through svip_core.atomic.atomic_path instead"


def test_snakemake_lint_is_clean():
    result = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
