"""Guards the install facts of this project: importing every halluscope module must not pull
torchvision, lpips, pytorch_lightning or torchmetrics' image metrics (they crash with the CPU
torch build), and the import arrows between subpackages point one way only."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import halluscope

SRC = Path(halluscope.__file__).parent
FORBIDDEN = ("torchvision", "lpips", "pytorch_lightning", "lightning", "torchmetrics.image")

# The top-level modules every subpackage may use; they import none of the subpackages.
BASE = {"errors", "io", "device", "validate", "deadline"}
# What each subpackage may import from halluscope (besides itself and BASE).
ALLOWED = {
    "data": set(),
    "tokenizers": {"data"},
    "gpt": {"data"},
    "probes": {"gpt", "tokenizers", "data"},
    "app": {"probes", "gpt", "tokenizers", "data"},
}


def all_modules() -> list[str]:
    names = (m.name for m in pkgutil.walk_packages([str(SRC)], prefix="halluscope."))
    return sorted(n for n in names if not n.endswith("__main__"))  # __main__ runs the CLI


def test_importing_every_module_pulls_no_forbidden_package():
    names = all_modules()
    assert "halluscope.cli" in names and "halluscope.data" in names
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} or m == 'torchmetrics.image']\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"forbidden modules imported: {out.stdout.strip()}"


def imported_halluscope_parts(path: Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        parts |= {n.split(".")[1] for n in names if n.startswith("halluscope.") and n.count(".") >= 1}
    return parts


def test_import_arrows_point_one_way():
    for part, allowed in ALLOWED.items():
        for path in (SRC / part).rglob("*.py"):
            wrong = imported_halluscope_parts(path) - allowed - {part} - BASE
            assert not wrong, f"{path.relative_to(SRC)} imports halluscope.{sorted(wrong)}"
    for name in BASE:
        wrong = imported_halluscope_parts(SRC / f"{name}.py") - BASE
        assert not wrong, f"{name}.py imports halluscope.{sorted(wrong)}"
