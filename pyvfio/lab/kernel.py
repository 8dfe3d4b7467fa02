"""The guest kernels: Debian's ``stock`` one and the lab's ``full`` one.

``stock``
    Debian's ``linux-image-6.12.95+deb12-amd64`` from bookworm-backports,
    downloaded and unpacked into the cache, never installed.  It lacks
    IOMMUFD, VFIO cdev/no-IOMMU and vdpa_sim (see :mod:`pyvfio.lab.oot`).
``full``
    Built from Debian's ``linux-source-6.12``: tinyconfig + kvm_guest.config +
    the lab's fragment (``full.config``), everything built in.  Cached by
    source version and fragment hash.

Both are booted as an uncompressed ELF ``vmlinux`` through its PVH entry
point, which saves the kernel's self-decompression (seconds under TCG).
"""
from __future__ import annotations

import lzma
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, Iterable, List, Optional

from pyvfio.lab import debian
from pyvfio.lab._host import cache_dir, digest, info, locked, replace_dir, require_tool, run_tool, warn
from pyvfio.lab.errors import KernelBuildError, KernelConfigError, KernelPackageError, ToolMissingError
from pyvfio.lab.modules import builtin_from_modinfo

__all__ = ["Kernel", "FLAVOURS", "STOCK_ABI", "STOCK_VERSION", "SOURCE_PACKAGE",
           "FRAGMENT", "get_kernel", "stock_kernel", "full_kernel", "source_version",
           "extract_vmlinux", "read_fragment", "check_config", "foreign_kernel",
           "FOREIGN_FLAVOURS"]

FLAVOURS = ("stock", "full")
#: Debian ABI name and package version of the pinned stock kernel.
STOCK_ABI = "6.12.95+deb12"
STOCK_VERSION = "6.12.95-1~bpo12+1"
SOURCE_PACKAGE = "linux-source-6.12"
#: The lab's config fragment for the ``full`` kernel (applied after tinyconfig + kvm_guest.config).
FRAGMENT = Path(__file__).with_name("full.config")
# Part of the full kernel's cache key: change it when the build steps change.
_RECIPE = b"tinyconfig kvm_guest.config full.config vmlinux modules v2"
_BUILD_TOOLS_REMEDY = "apt-get install build-essential flex bison bc libelf-dev"


@dataclass(frozen=True)
class Kernel:
    """A guest kernel ready to boot."""
    flavour: str
    #: ``uname -r`` in the guest.
    release: str
    #: Debian version of the package the kernel (or its source) comes from.
    package_version: str
    #: Uncompressed ELF image, booted through PVH.
    vmlinux: Path
    #: ``lib/modules/<release>``: loadable modules (stock) or only ``modules.builtin`` (full).
    modules: Path
    #: The architecture it runs on (``uname -m``).
    arch: str = "x86_64"


def get_kernel(flavour: str) -> Kernel:
    """The kernel of ``flavour`` (``"stock"`` or ``"full"``), fetched or built on demand."""
    if flavour == "stock":
        return stock_kernel()
    if flavour == "full":
        return full_kernel()
    raise ValueError(f"unknown kernel flavour {flavour!r} (expected one of {FLAVOURS})")


# --------------------------------------------------------------------------- stock
def stock_kernel() -> Kernel:
    """Debian's pinned 6.12 image; the newest 6.12 one (with a warning) once the pin is gone."""
    image = f"linux-image-{STOCK_ABI}-amd64"
    try:
        return _prepare_stock(image, STOCK_VERSION)
    except KernelPackageError as pinned_error:
        newest = debian.candidates(r"linux-image-6\.12\.\d+\+deb12-amd64")
        version = debian.candidate_version(newest[-1]) if newest else None
        if not newest or version is None:
            raise pinned_error
        warn(f"{image} {STOCK_VERSION} is no longer in the archive; using {newest[-1]} "
             f"{version} instead (results may differ from the pinned kernel)")
        return _prepare_stock(newest[-1], version)


def _prepare_stock(package: str, version: str) -> Kernel:
    """The kernel of ``package`` ``version``: from the cache, else downloaded and unpacked."""
    root = cache_dir() / "stock" / f"{package}_{version}"
    if (root / "vmlinux").exists():
        return _stock_from(root, version)
    deb = debian.download(package, version)
    with locked(root):
        if not (root / "vmlinux").exists():
            pkg = debian.unpack(deb, root / "pkg")
            bzimage = next((pkg / "boot").glob("vmlinuz-*"), None)
            if bzimage is None:
                raise KernelPackageError(f"{deb.name} holds no boot/vmlinuz-*")
            info(f"extracting vmlinux from {bzimage.name}")
            tmp = root / "vmlinux.tmp"
            extract_vmlinux(bzimage, tmp)
            tmp.replace(root / "vmlinux")
    return _stock_from(root, version)


def _stock_from(root: Path, version: str) -> Kernel:
    moddirs = list((root / "pkg" / "lib" / "modules").iterdir())
    if len(moddirs) != 1:
        raise KernelPackageError(f"expected one lib/modules/<release> in {root / 'pkg'}")
    return Kernel("stock", moddirs[0].name, version, root / "vmlinux", moddirs[0])


def extract_vmlinux(bzimage: Path, dest: Path) -> None:
    """Write the ELF kernel inside ``bzimage`` (gzip, xz or zstd payload) to ``dest``."""
    data = bzimage.read_bytes()
    if data[0x202:0x206] != b"HdrS":
        raise KernelPackageError(f"{bzimage} is not a bzImage")
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    payload = data[(setup_sects + 1) * 512 + offset:][:length]
    if payload[:2] == b"\x1f\x8b":
        elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    elif payload[:6] == b"\xfd7zXZ\x00":
        elf = lzma.LZMADecompressor().decompress(payload)
    elif payload[:4] == b"\x28\xb5\x2f\xfd":
        zstd = require_tool("zstd", "apt-get install zstd")
        # the build appends the decompressed size (4 bytes) after the zstd frame
        elf = subprocess.run([zstd, "-dcq"], input=payload[:-4], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL).stdout
    else:
        raise KernelPackageError(f"{bzimage}: unknown compression {payload[:6].hex()}")
    if elf[:4] != b"\x7fELF":
        raise KernelPackageError(f"{bzimage}: payload is not an ELF image")
    dest.write_bytes(elf)


# --------------------------------------------------------------------------- other arches
#: Debian's kernel flavour for each architecture and page size (KiB).
FOREIGN_FLAVOURS = {
    "aarch64": {4: "arm64"},
    "ppc64le": {4: "powerpc64le", 64: "powerpc64le-64k"},
}


def foreign_kernel(arch: str, page_kib: int = 4) -> Kernel:
    """Debian's pinned 6.12 kernel of another architecture (``aarch64``, ``ppc64le``),
    fetched through a private apt for that architecture (never installed)."""
    from pyvfio.lab.cross import ForeignApt, arch as find_arch
    target = find_arch(arch)
    flavours = FOREIGN_FLAVOURS.get(target.name)
    if not flavours or page_kib not in flavours:
        have = ", ".join(f"{a} ({'/'.join(f'{k}K' for k in f)} pages)"
                         for a, f in FOREIGN_FLAVOURS.items())
        raise KernelPackageError(f"no Debian kernel for {arch} with {page_kib}K pages",
                                 remedy=f"the lab's other architectures: {have}")
    package = f"linux-image-{STOCK_ABI}-{flavours[page_kib]}"
    root = cache_dir() / "stock" / f"{package}_{STOCK_VERSION}"
    if not (root / "vmlinux").exists():
        apt = ForeignApt(target.debian or target.name)
        deb, = apt.download([(package, STOCK_VERSION)])
        with locked(root):
            if not (root / "vmlinux").exists():
                pkg = debian.unpack(deb, root / "pkg")
                images = sorted((pkg / "boot").glob("vmlinu[xz]-*"))
                if not images:
                    raise KernelPackageError(f"{deb.name} holds no boot/vmlinu[xz]-*")
                # arm64's vmlinuz is a plain Image and ppc64el's vmlinux an ELF: both boot as is
                (root / "vmlinux").symlink_to(images[0].relative_to(root))
    kernel = _stock_from(root, STOCK_VERSION)
    return Kernel("stock", kernel.release, kernel.package_version, kernel.vmlinux,
                  kernel.modules, target.name)


# --------------------------------------------------------------------------- source
def source_version() -> str:
    """Version of ``linux-source-6.12`` to use: the stock kernel's, else apt's newest."""
    try:
        debian.download(SOURCE_PACKAGE, STOCK_VERSION)
        return STOCK_VERSION
    except KernelPackageError:
        version = debian.candidate_version(SOURCE_PACKAGE)
        if version is None:
            raise
        warn(f"{SOURCE_PACKAGE} {STOCK_VERSION} is no longer in the archive; using {version}")
        return version


def source_tarball(version: str) -> Path:
    """``linux-source-6.12.tar.xz`` of ``version``, unpacked from its .deb in the cache."""
    deb = debian.download(SOURCE_PACKAGE, version)
    pkg = debian.unpack(deb, cache_dir() / "src" / f"{SOURCE_PACKAGE}_{version}")
    tarball = pkg / "usr" / "src" / f"{SOURCE_PACKAGE}.tar.xz"
    if not tarball.exists():
        raise KernelPackageError(f"{deb.name} holds no {tarball.name}")
    return tarball


def source_tree(version: str) -> Path:
    """The whole kernel source tree of ``version``, extracted once into the cache."""
    dest = cache_dir() / "src" / f"tree_{version}"
    tree = dest / SOURCE_PACKAGE
    if (tree / "Makefile").exists():
        return tree
    tarball = source_tarball(version)
    tar = require_tool("tar", "apt-get install tar xz-utils")
    with locked(dest):
        if not (tree / "Makefile").exists():
            info(f"extracting {tarball.name} (about a minute)")
            replace_dir(dest, lambda tmp: run_tool(
                [tar, "-C", str(tmp), "-xf", str(tarball)], error=KernelPackageError,
                what=f"tar -xf {tarball.name}"))
    return tree


def source_files(version: str, patterns: Iterable[str], dest: Path) -> List[Path]:
    """Copy the files of the source tree matching ``patterns`` (globs relative to
    the tree) into ``dest``: from the extracted tree if there is one, else from the tarball."""
    patterns = list(patterns)
    tree = cache_dir() / "src" / f"tree_{version}" / SOURCE_PACKAGE
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".src-") as tmp:
        if not (tree / "Makefile").exists():
            tar = require_tool("tar", "apt-get install tar xz-utils")
            run_tool([tar, "-C", tmp, "-xf", str(source_tarball(version)), "--wildcards",
                      *(f"{SOURCE_PACKAGE}/{p}" for p in patterns)],
                     error=KernelPackageError, what="tar -xf (module sources)")
            tree = Path(tmp) / SOURCE_PACKAGE
        copied = []
        for pattern in patterns:
            for src in sorted(tree.glob(pattern)):
                shutil.copyfile(src, dest / src.name)
                copied.append(dest / src.name)
    return copied


# --------------------------------------------------------------------------- full
def read_fragment(path: Path = FRAGMENT) -> Dict[str, str]:
    """Options of a config fragment: ``{"CONFIG_X": "y" | "n" | value}``."""
    wanted: Dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        m = re.fullmatch(r"# (CONFIG_\w+) is not set", line)
        if m:
            wanted[m.group(1)] = "n"
        elif line.startswith("CONFIG_"):
            key, _, value = line.partition("=")
            wanted[key] = value
    return wanted


def check_config(config: Path, wanted: Dict[str, str]) -> List[str]:
    """Lines describing each option of ``wanted`` that ``config`` does not have as asked."""
    have = read_fragment(config)
    return [f"{key}={value} (got {have.get(key, 'n')})"
            for key, value in wanted.items() if have.get(key, "n") != value]


def _merge_config(config: Path, wanted: Dict[str, str]) -> None:
    """Set ``wanted``'s options in ``config`` (before ``make olddefconfig`` resolves them)."""
    keep = []
    for line in config.read_text().splitlines():
        m = re.match(r"(?:# )?(CONFIG_\w+)[= ]", line)
        if not (m and m.group(1) in wanted):
            keep.append(line)
    keep += [f"# {key} is not set" if value == "n" else f"{key}={value}"
             for key, value in wanted.items()]
    config.write_text("\n".join(keep) + "\n")


def full_kernel(*, jobs: Optional[int] = None, progress_every: float = 20.0) -> Kernel:
    """The lab's all-built-in kernel, built (about 11 min on 2 cores) on first use."""
    version = source_version()
    fragment = FRAGMENT.read_bytes()
    out = cache_dir() / "full" / f"{version}-{digest(fragment, _RECIPE)}"
    if not (out / "vmlinux").exists():
        with locked(out):
            if not (out / "vmlinux").exists():
                _build_full(version, out, jobs or os.cpu_count() or 1, progress_every)
    release = (out / "release").read_text().strip()
    return Kernel("full", release, version, out / "vmlinux", out / "modules" / release)


def _build_full(version: str, out: Path, jobs: int, progress_every: float) -> None:
    make = require_tool("make", _BUILD_TOOLS_REMEDY)
    for tool in ("gcc", "flex", "bison", "bc"):
        require_tool(tool, _BUILD_TOOLS_REMEDY)
    if not Path("/usr/include/libelf.h").exists():
        raise ToolMissingError("libelf headers not found (the kernel's objtool needs them)",
                               remedy=_BUILD_TOOLS_REMEDY)
    tree = source_tree(version)
    obj = out / "obj"
    obj.mkdir(parents=True, exist_ok=True)
    kmake = [make, "-C", str(tree), f"O={obj}"]
    log = out / "build.log"
    info(f"configuring the full kernel ({SOURCE_PACKAGE} {version}) in {obj}")
    for target in ("tinyconfig", "kvm_guest.config"):
        run_tool(kmake + [target], error=KernelBuildError, what=f"make {target}")
    wanted = read_fragment()
    _merge_config(obj / ".config", wanted)
    run_tool(kmake + ["olddefconfig"], error=KernelBuildError, what="make olddefconfig")
    missing = check_config(obj / ".config", wanted)
    if missing:
        raise KernelConfigError(
            "the kernel configuration lacks options the lab asks for:\n  " + "\n  ".join(missing),
            path=str(obj / ".config"),
            remedy=f"fix {FRAGMENT} (an option's dependencies are probably unset)")
    info(f"building the full kernel with {jobs} jobs (about 11 min on 2 cores; log: {log})")
    # "modules" also writes Module.symvers, which out-of-tree modules link against
    _make_with_progress(kmake + [f"-j{jobs}", "vmlinux", "modules"], log, progress_every)
    release = (obj / "include" / "config" / "kernel.release").read_text().strip()
    moddir = out / "modules" / release
    moddir.mkdir(parents=True, exist_ok=True)
    modinfo = obj / "modules.builtin.modinfo"
    if modinfo.exists():
        shutil.copyfile(modinfo, moddir / "modules.builtin.modinfo")
        (moddir / "modules.builtin").write_text(
            "".join(f"{line}\n" for line in builtin_from_modinfo(modinfo)))
    shutil.copyfile(obj / ".config", out / "config")
    (out / "release").write_text(release + "\n")
    shutil.copyfile(obj / "vmlinux", out / "vmlinux.tmp")
    (out / "vmlinux.tmp").replace(out / "vmlinux")


def _make_with_progress(cmd: List[str], log: Path, every: float) -> None:
    """Run make into ``log``; print the number of compiled files every ``every`` s."""
    start = time.monotonic()
    with open(log, "wb") as out, open(log, "rb") as reader:
        counter = _CompileCounter(reader)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while True:
                try:
                    proc.wait(timeout=every)
                    break
                except subprocess.TimeoutExpired:
                    info(f"building full kernel: {counter.update()} files compiled, "
                         f"{_mmss(time.monotonic() - start)} elapsed")
        finally:
            if proc.poll() is None:  # interrupted: stop make and its compilers
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
        compiled = counter.update()
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise KernelBuildError(f"kernel build failed (exit {proc.returncode}):\n{tail}",
                               path=str(log), remedy=f"see the whole log in {log}")
    info(f"full kernel built: {compiled} files compiled in {_mmss(time.monotonic() - start)}")


class _CompileCounter:
    """Counts the ``CC``/``AS`` lines make has written to its log so far."""

    def __init__(self, reader: BinaryIO) -> None:
        self.reader = reader
        self.partial = b""
        self.count = 0

    def update(self) -> int:
        """Read what make wrote since the last call; return the running count."""
        data = self.partial + self.reader.read()
        complete, _, self.partial = data.rpartition(b"\n")
        self.count += len(re.findall(rb"^  (?:CC|AS) ", complete, re.M))
        return self.count


def _mmss(seconds: float) -> str:
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"
