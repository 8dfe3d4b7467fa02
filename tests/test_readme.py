"""README.md cannot drift from the code.

Every ```python block of README.md must compile, and every name it imports from
pyvfio must exist.  Blocks preceded by the line ``<!-- runs on the host -->``
need no device and no root: they are executed here (against the mock kernel
where they need one), and must finish without error.
"""
from __future__ import annotations

import ast
import importlib
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN_MARK = "<!-- runs on the host -->"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks() -> list[tuple[int, str, bool]]:
    """(line number, source, marked to run) of every python block."""
    text = README.read_text()
    found = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append((line, m.group(1), before.strip() == RUN_MARK))
    return found


BLOCKS = blocks()
IDS = [f"README.md:{line}" for line, _, _ in BLOCKS]


def pyvfio_imports(tree: ast.AST) -> list[tuple[str, str | None]]:
    """(module, name) for every import of pyvfio in the block; name None for `import x`."""
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "pyvfio":
            out += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.split(".")[0] == "pyvfio"]
    return out


def test_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 8
    assert any(run for _, _, run in BLOCKS)


@pytest.mark.parametrize("line,source,run", BLOCKS, ids=IDS)
def test_block_compiles_and_imports_exist(line: int, source: str, run: bool) -> None:
    tree = ast.parse(source, f"README.md:{line}")
    compile(tree, f"README.md:{line}", "exec")
    for module, name in pyvfio_imports(tree):
        mod = importlib.import_module(module)
        if name is not None and not hasattr(mod, name):
            importlib.import_module(f"{module}.{name}")  # a submodule: `from pyvfio import pci`


@pytest.mark.parametrize("line,source", [(line, src) for line, src, run in BLOCKS if run],
                         ids=[i for i, (_, _, run) in zip(IDS, BLOCKS) if run])
def test_host_block_runs(line: int, source: str) -> None:
    # A fresh interpreter: the block may register mock families or print.
    proc = subprocess.run([sys.executable, "-c", source], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"README.md:{line} failed:\n{proc.stderr}"
