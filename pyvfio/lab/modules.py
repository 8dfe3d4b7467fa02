"""Kernel modules for the guest: find them, resolve their dependencies and
stage them for busybox ``modprobe``.

Debian ships modules compressed (``.ko.xz``); busybox cannot load those, so
they are staged decompressed, together with the index files busybox reads:
``modules.dep`` (each module's dependencies, listed in *reverse* load order,
since modprobe loads them from the end of the list), ``modules.alias`` (so
``modprobe vfio-pci`` and ``devname:`` aliases resolve) and
``modules.builtin``.  busybox ignores soft dependencies: "pre" ones become
ordinary dependencies here, "post" ones (``vfio`` -> ``vfio_iommu_type1``)
go to ``modules.softdep-post``, which the guest's ``modprobe`` wrapper loads
after the module.
"""
from __future__ import annotations

import gzip
import lzma
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Set, Tuple

from pyvfio.lab.errors import LabError, ToolMissingError

__all__ = ["ModuleInfo", "ModuleTree", "ModuleNotFound", "modinfo", "read_module",
           "builtin_from_modinfo", "canonical"]


class ModuleNotFound(LabError):
    """A requested kernel module is neither a module file nor built in."""


def canonical(name: str) -> str:
    """Module names treat ``-`` and ``_`` alike; the kernel uses ``_``."""
    return name.replace("-", "_")


def read_module(path: Path) -> bytes:
    """The ELF bytes of a module file, decompressing ``.xz``/``.gz``/``.zst``."""
    suffix = path.suffix
    if suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    if suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    if suffix == ".zst":
        try:
            return subprocess.run(["zstd", "-dcq", str(path)], check=True,
                                  stdout=subprocess.PIPE).stdout
        except FileNotFoundError as exc:
            raise ToolMissingError("zstd not found: cannot read " + str(path),
                                   remedy="apt-get install zstd") from exc
    return path.read_bytes()


def _elf_section(blob: bytes, wanted: bytes) -> bytes:
    """Contents of section ``wanted`` of a little-endian ELF64 object (b"" if absent)."""
    if blob[:4] != b"\x7fELF" or blob[4] != 2 or blob[5] != 1:
        raise ValueError("not a little-endian ELF64 object")
    shoff, = struct.unpack_from("<Q", blob, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", blob, 0x3A)

    def header(i: int) -> Tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", blob, shoff + i * shentsize)
        return name, offset, size

    _, str_off, _ = header(shstrndx)
    for i in range(shnum):
        name, offset, size = header(i)
        end = blob.index(b"\0", str_off + name)
        if blob[str_off + name:end] == wanted:
            return blob[offset:offset + size]
    return b""


def modinfo(blob: bytes) -> List[Tuple[str, str]]:
    """The ``key=value`` pairs of a module's ``.modinfo`` section, in order."""
    pairs = []
    for item in _elf_section(blob, b".modinfo").split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep:
            pairs.append((key, value))
    return pairs


@dataclass
class ModuleInfo:
    """What the lab needs to know about one module file."""
    name: str
    path: Path
    blob: bytes
    depends: List[str] = field(default_factory=list)
    softdep_pre: List[str] = field(default_factory=list)
    softdep_post: List[str] = field(default_factory=list)
    aliases: List[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> ModuleInfo:
        """Read and parse a (possibly compressed) module file."""
        blob = read_module(path)
        info = cls(name=canonical(path.name.split(".ko")[0]), path=path, blob=blob)
        for key, value in modinfo(blob):
            if key == "name":
                info.name = canonical(value)
            elif key == "depends":
                info.depends += [canonical(d) for d in value.split(",") if d]
            elif key == "alias":
                info.aliases.append(value)
            elif key == "softdep":
                target = None
                for word in value.split():
                    if word in ("pre:", "post:"):
                        target = info.softdep_pre if word == "pre:" else info.softdep_post
                    elif target is not None:
                        target.append(canonical(word))
        return info


class ModuleTree:
    """The modules of one kernel: ``lib/modules/<release>`` plus out-of-tree ``.ko`` dirs.

    Out-of-tree modules win over in-tree ones of the same name and are staged
    under ``extra/``.
    """

    def __init__(self, moddir: Path, extra_dirs: Sequence[Path] = ()) -> None:
        self.moddir = moddir
        self.files: Dict[str, Path] = {}
        self.relpath: Dict[str, str] = {}
        kernel = moddir / "kernel"
        if kernel.is_dir():
            for dirpath, _dirs, names in os.walk(kernel):
                for n in names:
                    if ".ko" in n:
                        path = Path(dirpath) / n
                        name = canonical(n.split(".ko")[0])
                        self.files[name] = path
                        self.relpath[name] = str(path.relative_to(moddir)).split(".ko")[0] + ".ko"
        for d in extra_dirs:
            for path in sorted(Path(d).glob("*.ko")):
                name = canonical(path.name[:-3])
                self.files[name] = path
                self.relpath[name] = f"extra/{path.name}"
        self.builtin: Set[str] = set()
        builtin = moddir / "modules.builtin"
        if builtin.exists():
            for line in builtin.read_text().split():
                self.builtin.add(canonical(os.path.basename(line).split(".ko")[0]))
        self._info: Dict[str, ModuleInfo] = {}

    def info(self, name: str) -> ModuleInfo:
        """Parsed module ``name`` (cached)."""
        if name not in self._info:
            self._info[name] = ModuleInfo.load(self.files[name])
        return self._info[name]

    def resolve(self, wanted: Iterable[str]) -> Tuple[List[str], List[str]]:
        """Load order (dependencies first) of ``wanted`` and everything they need.

        A name starting with ``?`` is optional.  Returns ``(order, skipped)``:
        ``skipped`` lists optional modules this kernel has neither as a file
        nor built in.  A missing required module raises :class:`ModuleNotFound`.
        """
        order: List[str] = []
        seen: Set[str] = set()
        skipped: List[str] = []

        def visit(name: str, chain: Tuple[str, ...], optional: bool) -> None:
            if name in seen:
                return
            seen.add(name)
            if name not in self.files:
                if name in self.builtin:
                    return
                if optional:
                    skipped.append(name)
                    return
                via = f" (needed by {' -> '.join(chain)})" if chain else ""
                raise ModuleNotFound(f"kernel module {name} not found in {self.moddir}{via}")
            mod = self.info(name)
            for dep in mod.depends:
                visit(dep, chain + (name,), False)
            for dep in mod.softdep_pre:
                visit(dep, chain + (name,), True)
            order.append(name)
            for dep in mod.softdep_post:
                visit(dep, chain + (name,), True)

        for w in wanted:
            visit(canonical(w.lstrip("?")), (), w.startswith("?"))
        return order, [s for s in skipped if s not in order]

    def _closure(self, name: str, staged: Set[str]) -> List[str]:
        """Staged modules ``name`` needs loaded first (hard + pre-soft deps), transitively."""
        out: List[str] = []
        stack = [name]
        while stack:
            mod = self.info(stack.pop())
            for dep in mod.depends + mod.softdep_pre:
                if dep in staged and dep not in out:
                    out.append(dep)
                    stack.append(dep)
        return out

    def stage(self, order: Sequence[str], dest: Path) -> None:
        """Write ``order``'s modules, decompressed, and index files to ``dest``
        (the guest's ``/lib/modules/<release>``)."""
        dest.mkdir(parents=True, exist_ok=True)
        staged = set(order)
        pos = {n: i for i, n in enumerate(order)}
        dep_lines, alias_lines, post_lines = [], [], []
        for name in order:
            rel = self.relpath[name]
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.info(name).blob)
            deps = sorted(self._closure(name, staged), key=lambda d: -pos[d])
            dep_lines.append(f"{rel}: {' '.join(self.relpath[d] for d in deps)}".rstrip())
            alias_lines += [f"alias {a} {name}" for a in self.info(name).aliases]
            post = self._post_softdeps(name, staged)
            if post:
                post_lines.append(f"{name}: {' '.join(post)}")
        (dest / "modules.dep").write_text("".join(line + "\n" for line in dep_lines))
        (dest / "modules.alias").write_text("".join(line + "\n" for line in alias_lines))
        (dest / "modules.softdep-post").write_text("".join(line + "\n" for line in post_lines))
        for extra in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
            if (self.moddir / extra).exists():
                shutil.copyfile(self.moddir / extra, dest / extra)

    def _post_softdeps(self, name: str, staged: Set[str]) -> List[str]:
        """"post" soft dependencies of ``name`` and of what it depends on, if staged."""
        before = self._closure(name, staged)
        post: List[str] = []
        for mod in [name, *before]:
            post += [p for p in self.info(mod).softdep_post
                     if p in staged and p != name and p not in before and p not in post]
        return post


def builtin_from_modinfo(modinfo_file: Path) -> List[str]:
    """``modules.builtin`` lines derived from a ``modules.builtin.modinfo`` file
    (kernels built without module support do not write ``modules.builtin``)."""
    files: List[str] = []
    for item in modinfo_file.read_bytes().split(b"\0"):
        key, _, value = item.decode("utf-8", "replace").partition("=")
        if key.endswith(".file"):
            for path in value.split():
                line = f"kernel/{path}.ko"
                if line not in files:
                    files.append(line)
    return files

