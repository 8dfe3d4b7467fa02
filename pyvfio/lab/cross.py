"""Other architectures on this host: their uAPI headers, a Python userland
unpacked from Debian's packages, pyvfio's binding cross-built for them, and
qemu-user to run their programs.

Nothing foreign is installed on the host.  Debian packages of another
architecture are fetched through a private apt configuration (its own
sources, state and cache under ``<cache>/apt/<arch>-<suite>``, an empty dpkg
status, ``APT::Architecture`` set to the target) and unpacked with
``dpkg-deb -x``: the host's dpkg database is never touched, so installing,
say, ``python3-cffi-backend:arm64`` cannot remove the host's ``python3-dev``.

The uAPI headers come from the host's ``linux-libc-dev`` (6.12 from
bookworm-backports), which is architecture-independent and ships every
architecture's ``asm/`` under ``/usr/lib/linux/uapi/<kernel arch>/``.  Each
target gets an include directory of its own holding only those headers, given
to the compiler before its own: Debian's cross compilers otherwise mix their
``linux-libc-dev-*-cross`` 6.1 headers with the host's 6.12 ones.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from pyvfio.lab._host import cache_dir, digest, info, locked, replace_dir, run_tool, warn
from pyvfio.lab.errors import KernelPackageError, LabError, ToolMissingError

__all__ = ["Arch", "ARCHES", "arch", "host_arch", "CrossError", "ForeignApt", "uapi_include",
           "userland", "Userland", "build_binding", "run_user", "USERLAND_PACKAGES"]

#: The project's own headers (``uio_msi.h``), next to the package.
PROJECT_HEADERS = Path(__file__).resolve().parents[2] / "kernel_headers"
BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "core" / "_build_uapi.py"
#: ``pyvfio.core._mmio``'s source and the header it shares with the binding.
MMIO_SOURCES = (BUILD_SCRIPT.with_name("_mmio.c"), BUILD_SCRIPT.with_name("mmio_access.h"))
#: What a target's Python userland holds (their dependencies come along).
USERLAND_PACKAGES = ("python3", "python3-cffi-backend", "python3-cffi", "python3-pytest",
                     "python3-pyroute2",
                     "libpython3-dev", "dash", "busybox-static")
#: The uAPI directories of linux-libc-dev besides ``asm/``.
_UAPI_DIRS = ("linux", "asm-generic", "misc", "mtd", "rdma", "scsi", "sound", "video", "xen",
              "drm")


class CrossError(LabError):
    """A cross compiler, qemu-user or a foreign package is missing or failed."""
    default_remedy = "run ./run setup (it installs the cross compilers and qemu-user-static)"


@dataclass(frozen=True)
class Arch:
    """One target architecture."""
    #: ``uname -m`` on the target.
    name: str
    #: Debian's name for it (None: Debian has no port in the releases used here).
    debian: Optional[str]
    #: GNU triplet (``/usr/include/<triplet>``, extension suffixes).
    triplet: str
    #: The kernel's name (``arch/<kernel>/``, ``/usr/lib/linux/uapi/<kernel>/asm``).
    kernel: str
    #: qemu-user program running its binaries here (None: the host runs them).
    qemu_user: Optional[str]
    #: The C compiler command for it.
    compiler: Tuple[str, ...]
    #: Debian release whose packages give it a Python (None: none does).
    suite: Optional[str]
    big_endian: bool = False
    #: How the compiler was chosen, for reports.
    compiler_note: str = ""

    @property
    def native(self) -> bool:
        return self.qemu_user is None


ARCHES: Dict[str, Arch] = {a.name: a for a in (
    Arch("x86_64", "amd64", "x86_64-linux-gnu", "x86", None, ("gcc",), None,
         compiler_note="host gcc"),
    Arch("aarch64", "arm64", "aarch64-linux-gnu", "arm64", "qemu-aarch64-static",
         ("aarch64-linux-gnu-gcc",), "bookworm", compiler_note="Debian cross gcc"),
    Arch("ppc64le", "ppc64el", "powerpc64le-linux-gnu", "powerpc", "qemu-ppc64le-static",
         ("powerpc64le-linux-gnu-gcc",), "bookworm", compiler_note="Debian cross gcc"),
    Arch("s390x", "s390x", "s390x-linux-gnu", "s390", "qemu-s390x-static",
         ("s390x-linux-gnu-gcc",), "bookworm", big_endian=True,
         compiler_note="Debian cross gcc"),
    # riscv64 is a release architecture from Debian 13 on: its Python comes from trixie
    Arch("riscv64", "riscv64", "riscv64-linux-gnu", "riscv", "qemu-riscv64-static",
         ("riscv64-linux-gnu-gcc",), "trixie", compiler_note="Debian cross gcc"),
    # no Debian release here has loong64: zig (PyPI's ziglang) compiles the C side
    Arch("loongarch64", None, "loongarch64-linux-gnu", "loongarch", "qemu-loongarch64-static",
         (sys.executable, "-m", "ziglang", "cc", "-target", "loongarch64-linux-musl",
          "-fno-sanitize=undefined"), None,
         compiler_note="zig cc (PyPI ziglang), musl"),
)}


def arch(name: str) -> Arch:
    """The :class:`Arch` called ``name`` (``uname -m`` spelling; ``arm64``/``ppc64el`` too)."""
    for a in ARCHES.values():
        if name in (a.name, a.debian):
            return a
    raise CrossError(f"unknown architecture {name!r}", remedy=f"use one of {', '.join(ARCHES)}")


def host_arch() -> Arch:
    return arch(os.uname().machine)


# --------------------------------------------------------------------------- uAPI headers
def _libc_dev_version() -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "linux-libc-dev"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def uapi_include(target: Arch, root: Path = Path("/")) -> Path:
    """A directory holding only ``target``'s uAPI headers (symlinks into ``root``'s
    linux-libc-dev), for ``-isystem`` ahead of the compiler's own."""
    asm = root / "usr/lib/linux/uapi" / target.kernel / "asm"
    if not asm.is_dir():
        asm = root / "usr/include" / target.triplet / "asm"
    if not asm.is_dir():
        raise CrossError(f"no uAPI asm/ headers for {target.name} (looked in "
                         f"/usr/lib/linux/uapi/{target.kernel}/asm)",
                         remedy="apt-get install -t bookworm-backports linux-libc-dev")
    dest = cache_dir() / "uapi" / f"{target.name}-{digest(_libc_dev_version().encode(), str(asm).encode())}"
    if (dest / "asm").exists():
        return dest

    def fill(tmp: Path) -> None:
        (tmp / "asm").symlink_to(asm)
        for d in _UAPI_DIRS:
            if (root / "usr/include" / d).is_dir():
                (tmp / d).symlink_to(root / "usr/include" / d)
    with locked(dest):
        if not (dest / "asm").exists():
            replace_dir(dest, fill)
    return dest


# --------------------------------------------------------------------------- foreign apt
def _debian_mirror() -> str:
    """The Debian archive the host's apt uses for bookworm."""
    texts = []
    for f in ["/etc/apt/sources.list", *glob.glob("/etc/apt/sources.list.d/*")]:
        try:
            texts.append(Path(f).read_text())
        except OSError:
            pass
    for text in texts:
        for m in re.finditer(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M):
            return m.group(1).rstrip("/")
        for block in re.split(r"\n\s*\n", text):
            uri = re.search(r"^URIs:\s*(\S+)", block, re.M)
            suites = re.search(r"^Suites:\s*(.*)$", block, re.M)
            if uri and suites and "bookworm" in suites.group(1).split():
                return uri.group(1).rstrip("/")
    raise CrossError("no bookworm Debian archive in the host's apt sources",
                     remedy="add the bookworm archive to /etc/apt/sources.list(.d), as the "
                            "foreign userlands come from the same archive")


_SUITES = {"bookworm": ("bookworm", "bookworm-updates", "bookworm-backports"),
           "trixie": ("trixie",)}
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class ForeignApt:
    """apt-get for another Debian architecture, with state of its own (see module doc)."""

    def __init__(self, debian_arch: str, suite: str = "bookworm") -> None:
        self.arch, self.suite = debian_arch, suite
        self.dir = cache_dir() / "apt" / f"{debian_arch}-{suite}"
        self.debs = cache_dir() / "debs" / debian_arch

    def options(self) -> List[str]:
        d = self.dir
        opts = {
            "APT::Architecture": self.arch, "APT::Architectures": self.arch,
            "Dir::State": str(d / "state"), "Dir::State::status": str(d / "status"),
            "Dir::Cache": str(d / "cache"), "Dir::Etc::SourceList": str(d / "sources.list"),
            "Dir::Etc::SourceParts": str(d / "sources.list.d"),
            "Dir::Etc::Preferences": str(d / "preferences"),
            "Dir::Etc::PreferencesParts": str(d / "preferences.d"),
            "Debug::NoLocking": "1", "APT::Sandbox::User": "root",
            "Acquire::Languages": "none", "APT::Get::AllowUnauthenticated": "false",
        }
        return [x for k, v in opts.items() for x in ("-o", f"{k}={v}")]

    def _setup(self) -> None:
        d = self.dir
        for sub in ("state/lists/partial", "cache/archives/partial", "sources.list.d",
                    "preferences.d"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "status").touch()
        (d / "preferences").touch()
        mirror = _debian_mirror()
        (d / "sources.list").write_text("".join(
            f"deb [signed-by={_KEYRING}] {mirror} {s} main\n" for s in _SUITES[self.suite]))

    def _apt(self, *args: str, cwd: Optional[Path] = None, tool: str = "apt-get") -> str:
        apt_get = shutil.which(tool)
        if apt_get is None:
            raise CrossError("apt-get not found: cannot fetch foreign Debian packages",
                             remedy="run on Debian or Ubuntu")
        return run_tool([apt_get, "-q", *self.options(), *args], error=KernelPackageError,
                        what=f"apt-get ({self.arch}) {' '.join(args[:2])}", cwd=cwd)

    def update(self, force: bool = False) -> None:
        """Fetch the package indexes (once; ``force`` fetches them again)."""
        stamp = self.dir / "updated"
        if stamp.exists() and not force:
            return
        with locked(self.dir):
            if stamp.exists() and not force:
                return
            self._setup()
            info(f"fetching the {self.arch} package lists of {self.suite}")
            try:
                self._apt("update")
            except KernelPackageError as exc:
                # a mirror mid-sync fails one index; the others are still good
                if not list((self.dir / "state/lists").glob(f"*_dists_{self.suite}_main_*Packages*")):
                    raise
                warn(f"some {self.arch} package lists could not be fetched: "
                     f"{str(exc).splitlines()[-1]}")
            stamp.touch()

    def closure(self, packages: Iterable[str]) -> List[Tuple[str, str]]:
        """``(package, version)`` of ``packages`` and everything they depend on
        (no recommends), as apt would install them on an empty system."""
        self.update()
        out = self._apt("-s", "install", "--no-install-recommends", *packages)
        found = re.findall(r"^Inst (\S+) \((\S+) ", out, re.M)
        if not found:
            raise KernelPackageError(f"apt found nothing to install for {' '.join(packages)}")
        return found

    def download(self, pinned: Iterable[Tuple[str, str]]) -> List[Path]:
        """The ``.deb`` of each ``(package, version)``, from the cache or downloaded."""
        self.debs.mkdir(parents=True, exist_ok=True)
        wanted = list(pinned)
        paths: Dict[str, Path] = {}
        missing = []
        for name, version in wanted:
            hit = sorted(self.debs.glob(f"{name}_{version.replace(':', '%3a')}_*.deb"))
            if hit:
                paths[name] = hit[0]
            else:
                missing.append(f"{name}={version}")
        if missing:
            self.update()
            with locked(self.debs / ".download"), \
                    tempfile.TemporaryDirectory(dir=self.debs, prefix=".dl-") as tmp:
                info(f"downloading {len(missing)} {self.arch} packages")
                self._apt("download", *missing, cwd=Path(tmp))
                for f in Path(tmp).glob("*.deb"):
                    f.replace(self.debs / f.name)
            for name, version in wanted:
                hit = sorted(self.debs.glob(f"{name}_{version.replace(':', '%3a')}_*.deb"))
                if not hit:
                    raise KernelPackageError(f"apt-get download {name}={version} gave no .deb")
                paths[name] = hit[0]
        return [paths[n] for n, _ in wanted]

    def candidate(self, package: str) -> Optional[str]:
        """The version apt would take for ``package`` (None: unknown)."""
        self.update()
        out = self._apt("policy", package, tool="apt-cache")
        m = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M)
        return m.group(1) if m and m.group(1) != "(none)" else None


def unpack_debs(debs: Sequence[Path], dest: Path) -> None:
    """``dpkg-deb -x`` every package into ``dest`` (no maintainer scripts run)."""
    dpkg_deb = shutil.which("dpkg-deb")
    if dpkg_deb is None:
        raise ToolMissingError("dpkg-deb not found", remedy="apt-get install dpkg")
    for deb in debs:
        run_tool([dpkg_deb, "-x", str(deb), str(dest)], error=KernelPackageError,
                 what=f"dpkg-deb -x {deb.name}")


# --------------------------------------------------------------------------- userland
@dataclass(frozen=True)
class Userland:
    """A target's root file system: Debian's Python and the test tools, unpacked."""
    arch: Arch
    root: Path
    #: ``python3.11`` etc., relative to ``root``.
    python: str
    #: The target's extension suffix (``.cpython-311-aarch64-linux-gnu.so``).
    ext_suffix: str
    #: Python include directories (``Python.h``, ``pyconfig.h``).
    include: Tuple[Path, ...]
    packages: Tuple[Tuple[str, str], ...] = ()


_TRIM = ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info",
         "usr/share/lintian", "usr/lib/python3.*/test", "usr/lib/python3.*/idlelib",
         "usr/lib/python3.*/tkinter", "usr/lib/python3.*/lib2to3/tests",
         "usr/lib/*/gconv", "usr/lib/python3.*/config-*")


def userland(target: Arch, extra: Sequence[str] = ()) -> Userland:
    """``target``'s Python userland, unpacked and cached (see :data:`USERLAND_PACKAGES`)."""
    if target.suite is None or target.debian is None:
        raise CrossError(f"Debian has no Python for {target.name} in the releases used here",
                         remedy="the ABI check runs the binding built by the host compiler "
                                "over that architecture's headers instead")
    apt = ForeignApt(target.debian, target.suite)
    pinned = apt.closure([*USERLAND_PACKAGES, *extra])
    pinned = [(n, v) for n, v in pinned if n not in ("dpkg", "tar", "perl-base")]
    key = digest(*(f"{n}={v}".encode() for n, v in sorted(pinned)), b"userland v1")
    dest = cache_dir() / "userland" / f"{target.name}-{key}"
    if not (dest / ".complete").exists():
        debs = apt.download(pinned)
        with locked(dest):
            if not (dest / ".complete").exists():
                info(f"unpacking the {target.name} userland ({len(debs)} packages)")
                replace_dir(dest, lambda tmp: _make_userland(tmp, debs))
    return _describe(target, dest, tuple(pinned))


def _make_userland(root: Path, debs: Sequence[Path]) -> None:
    unpack_debs(debs, root)
    for pattern in _TRIM:
        for p in glob.glob(str(root / pattern)):
            shutil.rmtree(p, ignore_errors=True)
    # merged /usr (trixie's packages ship only /usr/...)
    for d in ("bin", "sbin", "lib", "lib64"):
        if not (root / d).exists() and (root / "usr" / d).is_dir():
            (root / d).symlink_to(f"usr/{d}")
    if not (root / "bin/sh").exists():
        (root / "bin/sh").symlink_to("dash")
    _relative_links(root)
    _link_loader(root)
    for d in ("proc", "sys", "dev", "run", "tmp", "root", "mnt", "etc"):
        (root / d).mkdir(exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (root / "etc/hostname").write_text("pyvfio-lab\n")
    (root / ".complete").write_text("")


def _interp(path: Path) -> Optional[str]:
    """The PT_INTERP (dynamic loader path) of an ELF64 file, either byte order."""
    import struct
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return None
    e = "<" if data[5] == 1 else ">"
    phoff, = struct.unpack_from(e + "Q", data, 0x20)
    phentsize, phnum = struct.unpack_from(e + "HH", data, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(e + "IIQQQQ", data,
                                                                 phoff + i * phentsize)
        if p_type == 3:
            return data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
    return None


def _relative_links(root: Path) -> None:
    """Make absolute symlinks relative, so that they resolve inside ``root`` under
    qemu-user (``-L root``) as they do in the guest, where ``root`` is ``/``."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                target = os.readlink(p)
                if target.startswith("/"):
                    p.unlink()
                    p.symlink_to(os.path.relpath(root / target.lstrip("/"), p.parent))


def _link_loader(root: Path) -> None:
    """Create the dynamic loader's path when the packages leave it to a maintainer
    script (ppc64el's ``/lib64/ld64.so.2``)."""
    pythons = sorted((root / "usr/bin").glob("python3.*"))
    interp = _interp(pythons[0].resolve()) if pythons else None
    if not interp or os.path.lexists(root / interp.lstrip("/")):
        return
    name = os.path.basename(interp)
    for cand in [*root.glob(f"lib/*/{name}"), *root.glob(f"usr/lib/*/{name}")]:
        link = root / interp.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(cand, link.parent))
        return


def _describe(target: Arch, root: Path, pinned: Tuple[Tuple[str, str], ...]) -> Userland:
    pythons = sorted((root / "usr/bin").glob("python3.[0-9]*"))
    pythons = [p for p in pythons if re.fullmatch(r"python3\.\d+", p.name)]
    if not pythons:
        raise CrossError(f"the {target.name} userland has no python3.X in {root}/usr/bin")
    python = pythons[-1].name
    # Debian's pyconfig.h includes <TRIPLET/pythonX.Y/pyconfig.h>: a directory holding only
    # that path (all of usr/include would put the userland's own linux/ headers first)
    shim = root / ".pyinclude"
    arch_inc = root / "usr/include" / target.triplet / python
    if arch_inc.is_dir() and not (shim / target.triplet / python).exists():
        (shim / target.triplet).mkdir(parents=True, exist_ok=True)
        (shim / target.triplet / python).symlink_to(arch_inc)
    include = [root / "usr/include" / python, shim]
    suffix = f".cpython-{python[6:].replace('.', '')}-{target.triplet}.so"
    return Userland(target, root, f"usr/bin/{python}", suffix,
                    tuple(p for p in include if p.is_dir()), pinned)


def precompile(land: Userland) -> None:
    """Compile the userland's ``.py`` files with the host's Python when its bytecode is
    the same version (a TCG guest would otherwise compile the stdlib at each boot)."""
    host = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    stamp = land.root / ".precompiled"
    if stamp.exists() or not land.python.endswith(host):
        return
    with locked(stamp):
        if stamp.exists():
            return
        info(f"precompiling the {land.arch.name} userland's Python files")
        for d in (land.root / "usr/lib" / host, land.root / "usr/lib/python3/dist-packages"):
            subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0",
                            "--invalidation-mode", "unchecked-hash", str(d)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stamp.write_text("")


# --------------------------------------------------------------------------- binding
def compiler(target: Arch) -> List[str]:
    """``target``'s compiler command, or :class:`CrossError` naming the package."""
    cmd = list(target.compiler)
    if cmd[0] == sys.executable:
        try:
            import ziglang  # noqa: F401
        except ImportError as exc:
            raise CrossError(f"no C compiler for {target.name}: PyPI's ziglang is not installed",
                             remedy="pip install ziglang (./run setup installs the test "
                                    "extras)") from exc
        return cmd
    if shutil.which(cmd[0]) is None:
        pkg = f"gcc-{target.triplet}"
        raise CrossError(f"{cmd[0]} not found", remedy=f"apt-get install {pkg} "
                         f"libc6-dev-{target.debian}-cross (./run setup does)")
    return cmd


def build_binding(target: Arch, land: Optional[Userland] = None) -> Path:
    """pyvfio's ``_uapi`` extension built for ``target`` from its uAPI headers; cached.

    ``land`` is the target's Python (headers, extension suffix); None builds for
    the host's Python (``x86_64``, or LoongArch headers compiled by the host).
    """
    if land is None:
        cc = ["gcc"]
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        pyinc = [sysconfig.get_paths()["include"]]
    else:
        cc = compiler(target)
        suffix, pyinc = land.ext_suffix, [str(p) for p in land.include]
        if not pyinc:
            raise CrossError(f"the {target.name} userland has no Python headers")
    include = uapi_include(target)
    import cffi
    parts = [BUILD_SCRIPT.read_bytes(), " ".join(cc).encode(), suffix.encode(),
             " ".join(pyinc).encode(), _libc_dev_version().encode(), cffi.__version__.encode()]
    parts += [p.read_bytes() for p in sorted(PROJECT_HEADERS.glob("*.h"))]
    parts += [p.read_bytes() for p in MMIO_SOURCES if p.exists()]
    out = cache_dir() / "binding" / f"{target.name}-{digest(*parts)}"
    so = out / f"_uapi{suffix}"
    if so.exists():
        return so
    env = dict(os.environ, PYVFIO_UAPI_CC=" ".join(cc), PYVFIO_UAPI_INCLUDE=str(include),
               PYVFIO_UAPI_PYTHON_INCLUDE=":".join(pyinc), PYVFIO_UAPI_EXT_SUFFIX=suffix)
    with locked(out):
        if not so.exists():
            info(f"cross-building the binding for {target.name}")
            proc = subprocess.run([sys.executable, str(BUILD_SCRIPT), "--outdir", str(out)],
                                  env=env, capture_output=True, text=True)
            if proc.returncode:
                raise CrossError(f"building the binding for {target.name} failed:\n"
                                 + proc.stderr[-3000:])
            if land is not None and MMIO_SOURCES[0].exists():
                _build_mmio(cc, pyinc, out / f"_mmio{suffix}")
    return so


def _build_mmio(cc: Sequence[str], pyinc: Sequence[str], dest: Path) -> None:
    """``pyvfio.core._mmio`` (the CPython MMIO accessors) for the target, next to ``_uapi``."""
    src = MMIO_SOURCES[0]
    args = [*cc, "-shared", "-fPIC", "-O2", "-w", *(f"-I{d}" for d in pyinc),
            f"-I{src.parent}", str(src), "-o", str(dest)]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode:
        raise CrossError(f"building pyvfio.core._mmio failed:\n{proc.stderr[-3000:]}")


def install_binding(so: Path, package_dir: Path) -> Path:
    """Copy a cross-built extension (and the ``_mmio`` one built with it) into
    ``package_dir`` (``pyvfio/core``) under its own suffix, next to the host's;
    only when it changed."""
    for built in [so, *so.parent.glob("_mmio*.so")]:
        dest = package_dir / built.name
        if not dest.exists() or dest.read_bytes() != built.read_bytes():
            tmp = dest.with_name(dest.name + ".tmp")
            shutil.copyfile(built, tmp)
            tmp.replace(dest)
    return package_dir / so.name


# --------------------------------------------------------------------------- qemu-user
def run_user(target: Arch, argv: Sequence[str], *, root: Optional[Path] = None,
             env: Optional[Dict[str, str]] = None, timeout: float = 600) -> str:
    """Run a ``target`` program here (under qemu-user unless native); return its stdout.

    ``root`` is the userland its dynamic loader and libraries come from.
    """
    cmd = list(argv)
    if not target.native:
        qemu = shutil.which(target.qemu_user or "")
        if qemu is None:
            raise CrossError(f"{target.qemu_user} not found",
                             remedy="apt-get install -t bookworm-backports qemu-user-static")
        cmd = [qemu, *(["-L", str(root)] if root else []), *cmd]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise CrossError(f"{' '.join(cmd[:3])} ... exited with {proc.returncode}:\n"
                         + (proc.stderr or proc.stdout)[-3000:])
    return proc.stdout
