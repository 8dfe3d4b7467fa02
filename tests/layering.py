"""The rules that keep pyvfio's folder tree its architecture, checked on the source.

- :func:`layer_violations`: a module imports only from its own package, from
  :mod:`pyvfio.errors`, and from packages of a lower layer (:data:`LAYERS`);
  ``__main__`` modules are entry points and may import anything.
  Every ``import`` counts, also those inside functions and under
  ``TYPE_CHECKING``: a lazy import reaches around a layer just the same.
- :func:`syscall_violations`: no module makes a system call except
  :mod:`pyvfio.core.syscalls` (:data:`SYSCALLS` lists the calls looked for).
  Exempt, and said so here: ``pyvfio/lab`` and ``pyvfio/cli`` (they run
  QEMU, apt and other programs: process handling of their own, not device
  access), ``pyvfio/mock`` (it *is* the kernel behind core.syscalls, so it
  uses the real one directly), and ``pyvfio/core/_build_uapi.py`` (it runs
  the C compiler at build time, never at run time).  Benchmarks live outside
  the package and are not checked.
- :func:`import_alone_failures`: every subpackage (and top-level module)
  imports in a fresh interpreter with nothing imported before it (no hidden
  import order).

Used by ``tests/test_layout.py``, which also shows each check failing on a
copy of the tree with a deliberate violation.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

#: Layer of each top-level part of the package: a module may import from a
#: strictly lower layer (and from its own part, and pyvfio.errors).  A new
#: family adds itself here.
LAYERS: Dict[str, int] = {
    "errors": 0, "core": 0,
    "pci": 1, "iommufd": 1, "virtio": 1,
    "vfio": 2, "vhost": 2, "uio": 2,
    "vdpa": 3, "kvm": 3,
    "drivers": 4,
    "mock": 5,
    "demo": 6, "lab": 6,
    "cli": 7,
    "__init__": 8,
}

#: (module, attribute) calls that are system calls; ``open`` alone is the builtin.
SYSCALLS: Tuple[Tuple[str, str], ...] = (
    ("os", "open"), ("os", "close"), ("os", "read"), ("os", "write"), ("os", "pread"),
    ("os", "pwrite"), ("os", "readv"), ("os", "writev"), ("os", "dup"), ("os", "dup2"),
    ("os", "memfd_create"), ("os", "ftruncate"), ("os", "eventfd"), ("os", "system"),
    ("os", "popen"), ("os", "fork"), ("os", "execv"), ("os", "execvp"),
    ("fcntl", "ioctl"), ("fcntl", "fcntl"), ("mmap", "mmap"),
    ("select", "poll"), ("select", "select"), ("select", "epoll"),
    ("socket", "socket"), ("subprocess", "run"), ("subprocess", "Popen"),
    ("subprocess", "call"), ("subprocess", "check_call"), ("subprocess", "check_output"),
    ("ctypes", "CDLL"), ("", "open"),
)

SYSCALL_EXEMPT = ("lab", "cli", "mock", "core/syscalls.py", "core/_build_uapi.py")


def modules(root: str) -> Iterator[Tuple[str, str]]:
    """(dotted name, path) of every module of the package at ``root`` (…/pyvfio)."""
    base = os.path.dirname(root)
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__" and
                         os.path.exists(os.path.join(d, x, "__init__.py")))
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, base)[:-3].replace(os.sep, ".")
                yield (rel[:-len(".__init__")] if rel.endswith(".__init__") else rel), path


def _part(module: str) -> str:
    """The top-level part a module belongs to: "core", "vfio", "__init__" ..."""
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def _imports(tree: ast.AST, module: str, is_pkg: bool) -> Iterator[Tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = module.split(".")
                if not is_pkg:
                    pkg = pkg[:-1]
                pkg = pkg[:len(pkg) - (node.level - 1)]
                target = ".".join(pkg + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:    # from pyvfio import pci: pyvfio.pci
                yield node.lineno, f"{target}.{alias.name}"


def layer_violations(root: str) -> List[str]:
    """Imports of a higher (or same-rank, other) layer; each as ``path:line: message``."""
    out: List[str] = []
    base = os.path.dirname(root)
    for module, path in modules(root):
        part = _part(module)
        rank = LAYERS.get(part)
        rel = os.path.relpath(path, base)
        if module.endswith("__main__"):
            continue            # an entry point (python -m ...) may start anything
        if rank is None:
            out.append(f"{rel}:1: pyvfio.{part} has no layer: add it to LAYERS in tests/layering.py")
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for line, target in _imports(tree, module, path.endswith("__init__.py")):
            if not (target == "pyvfio" or target.startswith("pyvfio.")):
                continue
            names = target.split(".")
            other = names[1] if len(names) > 1 else "__init__"
            if other == part or other == "errors":
                continue
            if part == "errors":
                out.append(f"{rel}:{line}: pyvfio.errors imports {target}: it must import nothing")
                continue
            other_rank = LAYERS.get(other)
            if other_rank is None or other_rank >= rank:
                out.append(f"{rel}:{line}: {module} (layer {part}, {rank}) imports {target} "
                           f"(layer {other}, {other_rank}): only lower layers may be imported")
    return out


def syscall_violations(root: str) -> List[str]:
    """System calls made outside core.syscalls (and the exempt parts); ``path:line: call``."""
    out: List[str] = []
    base = os.path.dirname(root)
    wanted = set(SYSCALLS)
    for module, path in modules(root):
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        if any(rel == e or rel.startswith(e + "/") for e in SYSCALL_EXEMPT):
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        aliases: Dict[str, object] = {}     # local name -> module, or (module, attr)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    aliases[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                for alias in node.names:
                    aliases[alias.asname or alias.name] = (node.module, alias.name)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                owner = aliases.get(func.value.id, func.value.id)
                if isinstance(owner, tuple):            # from pyvfio.core import syscalls
                    owner = ".".join(owner)
                name = (owner, func.attr)
            elif isinstance(func, ast.Name):
                bound = aliases.get(func.id)
                name = bound if isinstance(bound, tuple) else ("", func.id)
            else:
                continue
            if name in wanted:
                shown = f"{name[0]}.{name[1]}" if name[0] else f"{name[1]}()"
                out.append(f"{os.path.relpath(path, base)}:{node.lineno}: {shown} outside "
                           "pyvfio.core.syscalls: add a wrapper there and call it")
    return out


def import_alone_failures(root: str, names: Optional[Sequence[str]] = None) -> List[str]:
    """Subpackages (or ``names``) that fail to import in a fresh interpreter with only ``root``'s parent on the path."""
    base = os.path.dirname(root)
    if names is None:
        names = [m for m, path in modules(root)
                 if path.endswith("__init__.py") or m.count(".") == 1]
        names = [m for m in names if not m.endswith("__main__")]
    todo = list(names)
    env = dict(os.environ, PYTHONPATH=base, PYTHONDONTWRITEBYTECODE="1")

    def attempt(name: str) -> Optional[str]:
        proc = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {base!r}); "
                               f"import {name}"], capture_output=True, text=True, env=env,
                              cwd=base, check=False)
        if proc.returncode == 0:
            return None
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        return f"{name}: {last}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [r for r in pool.map(attempt, todo) if r is not None]
