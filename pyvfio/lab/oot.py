"""Out-of-tree kernel modules for the lab's kernels.

Debian does not build some modules the tests need (``vdpa_sim`` and
``vringh``), and no kernel has the modules the project writes itself
(``uio_msi``, in ``pyvfio/lab/kmod``).  For the ``stock`` kernel they are
built against Debian's ``linux-headers`` and ``linux-kbuild`` packages of the
very same kernel, downloaded and unpacked into the cache (never installed),
with the kernel's own compiler (gcc-12); for the ``full`` kernel against its
build tree (``obj``, which has ``Module.symvers``) with the compiler that
built it.  Sources come from Debian's ``linux-source`` package or from a
directory of the project.  Unsigned out-of-tree modules load with a taint:
neither kernel enforces module signatures.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from pyvfio.lab import debian
from pyvfio.lab._host import cache_dir, digest, info, locked, replace_dir, require_tool
from pyvfio.lab.errors import ModuleBuildError
from pyvfio.lab.kernel import Kernel, source_files

__all__ = ["OotModules", "VDPA_SIM", "UIO_MSI", "STOCK_EXTRAS", "FULL_EXTRAS", "extras_for",
           "headers_tree", "build_modules", "kernel_compiler", "KMOD_DIR"]

#: The kernel modules the project writes, one directory each.
KMOD_DIR = Path(__file__).with_name("kmod")
#: The project's uAPI headers (for modules that implement them).
PROJECT_HEADERS = Path(__file__).resolve().parents[2] / "kernel_headers"


@dataclass(frozen=True)
class OotModules:
    """A set of modules built together in one kbuild ``M=`` directory."""
    name: str
    #: Files of the kernel source tree to build (globs relative to the tree).
    kernel_sources: Tuple[str, ...] = ()
    #: A directory with module sources (and, unless ``objects`` is given, its Kbuild file).
    source_dir: Optional[Path] = None
    #: ``obj-m`` entries of the Kbuild file written for the sources.
    objects: Tuple[str, ...] = ()
    #: Header files copied into the build's ``include/`` (the Kbuild file adds it to the path).
    headers: Tuple[Path, ...] = ()


#: The vDPA simulators, with vringh (which Debian does not build either).
VDPA_SIM = OotModules(
    "vdpa_sim",
    kernel_sources=("drivers/vdpa/vdpa_sim/*.[ch]", "drivers/vhost/vringh.c"),
    objects=("vringh.o", "vdpa_sim.o", "vdpa_sim_net.o", "vdpa_sim_blk.o"))
#: uio_msi: the UIO driver whose vectors are connected to eventfds (the project's own).
UIO_MSI = OotModules("uio_msi", source_dir=KMOD_DIR / "uio_msi",
                     headers=(PROJECT_HEADERS / "uio_msi.h",))
#: The out-of-tree module sets staged in the stock guest.
STOCK_EXTRAS: Tuple[OotModules, ...] = (VDPA_SIM, UIO_MSI)
#: The out-of-tree module sets staged in the full guest (it builds vdpa_sim in).
FULL_EXTRAS: Tuple[OotModules, ...] = (UIO_MSI,)


def extras_for(flavour: str) -> Tuple[OotModules, ...]:
    """The out-of-tree module sets the guest of ``flavour`` gets."""
    return STOCK_EXTRAS if flavour == "stock" else FULL_EXTRAS


def headers_tree(kernel: Kernel) -> Path:
    """Debian's kbuild tree for ``kernel`` (``linux-headers-<release>``), unpacked in the cache."""
    abi = kernel.release.rsplit("-", 1)[0]           # 6.12.95+deb12-amd64 -> 6.12.95+deb12
    root = cache_dir() / "headers" / f"{kernel.release}_{kernel.package_version}"
    tree = root / "usr" / "src" / f"linux-headers-{kernel.release}"
    if (tree / ".pyvfio-ready").exists():
        return tree
    debs = [debian.download(p, kernel.package_version) for p in (
        f"linux-headers-{kernel.release}", f"linux-headers-{abi}-common", f"linux-kbuild-{abi}")]
    dpkg = require_tool("dpkg", "run on Debian or Ubuntu")

    def fill(tmp: Path) -> None:
        for deb in debs:
            subprocess.run([dpkg, "-x", str(deb), str(tmp)], check=True)
        makefile = tmp / "usr" / "src" / f"linux-headers-{kernel.release}" / "Makefile"
        # Debian's stub Makefile includes the common tree by absolute path
        makefile.write_text(makefile.read_text().replace(
            "include /usr/src/", f"include {root}/usr/src/"))
        (makefile.parent / ".pyvfio-ready").touch()

    with locked(root):
        if not (tree / ".pyvfio-ready").exists():
            info(f"unpacking kernel headers for {kernel.release}")
            replace_dir(root, fill)
    return tree


def kernel_compiler(headers: Path) -> str:
    """The compiler the kernel was built with (``gcc-12``), from its configuration."""
    config = (headers / ".config").read_text()
    m = re.search(r'^CONFIG_CC_VERSION_TEXT="(\S+)', config, re.M)
    return m.group(1) if m else "gcc"


def full_tree(kernel: Kernel) -> Path:
    """The full kernel's build tree (``make O=``), where ``Module.symvers`` is."""
    obj = kernel.vmlinux.parent / "obj"
    if not (obj / "Module.symvers").exists():
        raise ModuleBuildError(
            f"the full kernel's build tree {obj} has no Module.symvers",
            path=str(obj), remedy="rebuild the full kernel: remove "
            f"{kernel.vmlinux.parent} and run `pyvfio lab run --kernel full true`")
    return obj


def build_modules(kernel: Kernel, modules: OotModules = VDPA_SIM, *,
                  into: Optional[Path] = None) -> Path:
    """Build ``modules`` for ``kernel``; return the directory of the ``.ko`` files.

    The stock kernel builds against Debian's headers packages, the full
    kernel against its own build tree.  The result is cached under the
    lab's cache (``oot/``), or under ``into`` (e.g. an empty directory, to
    check that the modules build from nothing).
    """
    if kernel.flavour == "full" and modules.kernel_sources:
        raise ValueError("the full kernel builds the kernel's own modules in")
    sources = _source_bytes(modules)
    # the full kernel's cache directory name carries the hash of its configuration
    build_id = kernel.package_version if kernel.flavour == "stock" else \
        kernel.vmlinux.parent.name
    key = digest(kernel.release.encode(), build_id.encode(),
                 " ".join(modules.objects).encode(), *sources)
    out = (into or cache_dir() / "oot") / f"{modules.name}-{kernel.release}-{key}"
    if list(out.glob("*.ko")):
        return out
    with locked(out):
        if not list(out.glob("*.ko")):
            if kernel.flavour == "stock":
                headers = headers_tree(kernel)
                cc = kernel_compiler(headers)
            else:
                headers, cc = full_tree(kernel), "gcc"
            require_tool(cc, f"apt-get install {cc} make")
            make = require_tool("make", "apt-get install make")
            replace_dir(out, lambda tmp: _build(kernel, modules, headers, make, cc, tmp))
    return out


def _source_bytes(modules: OotModules) -> Tuple[bytes, ...]:
    """Contents of a project source directory (for the cache key)."""
    if modules.source_dir is None:
        return tuple(p.encode() for p in modules.kernel_sources)
    files = sorted(p for p in modules.source_dir.rglob("*") if p.is_file())
    return tuple(str(p.relative_to(modules.source_dir)).encode() + b"\0" + p.read_bytes()
                 for p in files) + tuple(h.name.encode() + b"\0" + h.read_bytes()
                                         for h in modules.headers)


def _build(kernel: Kernel, modules: OotModules, headers: Path, make: str, cc: str,
           out: Path) -> None:
    build = out / "build"
    if modules.kernel_sources:
        source_files(kernel.package_version, modules.kernel_sources, build)
    if modules.source_dir is not None:
        shutil.copytree(modules.source_dir, build, dirs_exist_ok=True)
    if modules.headers:
        (build / "include").mkdir(parents=True, exist_ok=True)
        for header in modules.headers:
            shutil.copyfile(header, build / "include" / header.name)
    if modules.objects:
        (build / "Kbuild").write_text(f"obj-m := {' '.join(modules.objects)}\n")
    info(f"building out-of-tree modules {modules.name} for {kernel.release}")
    log = out / "build.log"
    # no pahole on an ordinary machine: skip the modules' BTF
    cmd = [make, "-C", str(headers), f"M={build}", f"CC={cc}",
           "CONFIG_DEBUG_INFO_BTF_MODULES=", "modules"]
    with open(log, "wb") as fh:
        rc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=fh,
                            stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        saved = cache_dir() / "oot" / f"{modules.name}-{kernel.release}-failed.log"
        shutil.copyfile(log, saved)
        raise ModuleBuildError(f"building {modules.name} failed (make exit {rc}):\n{tail}",
                               path=str(saved), remedy=f"see the whole log in {saved}")
    for ko in build.glob("*.ko"):
        shutil.copyfile(ko, out / ko.name)
