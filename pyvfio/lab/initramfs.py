"""The guest's initramfs: a static busybox, the lab's init scripts and the
kernel modules staged for the guest (see :mod:`pyvfio.lab.modules`).

The archive is an uncompressed ``newc`` cpio written here directly (no
``cpio`` or compressor needed; the kernel unpacks it faster than a gzipped
one under TCG) and cached by the hash of everything it contains.
"""
from __future__ import annotations

import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable, List, Optional, Sequence

from pyvfio.lab._host import cache_dir, digest, info, locked, warn
from pyvfio.lab.errors import ToolMissingError
from pyvfio.lab.kernel import Kernel
from pyvfio.lab.modules import ModuleTree

__all__ = ["BOOT_MODULES", "GUEST_MODULES", "build_initramfs", "find_busybox",
           "write_cpio", "GUEST_DIR"]

GUEST_DIR = Path(__file__).with_name("guest")
#: Modules stage 1 loads to mount its root (built into the ``full`` kernel).
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
#: Modules staged for ``modprobe`` in the guest, when the kernel has them.
#: More boot modules on other architectures (arm64's command output is a virtio console).
ARCH_BOOT_MODULES = {"aarch64": ("virtio_console",)}
GUEST_MODULES = (
    "vfio", "vfio_pci", "vfio_iommu_type1", "vfio_iommu_spapr_tce", "arm_smmu_v3", "mdev",
    "iommufd",
    "vhost", "vhost_net", "vhost_vsock", "vhost_scsi", "vhost_vdpa", "vhost_iotlb",
    "vdpa", "vduse", "vdpa_sim", "vdpa_sim_net", "vdpa_sim_blk", "vringh",
    "uio", "uio_pci_generic", "configfs",
    "tun", "tap", "macvtap", "veth", "vsock_loopback",
    "nvme", "e1000e", "igb", "kvm", "kvm_intel", "kvm_amd",
)
_BUSYBOX_REMEDY = "apt-get install busybox-static"


def find_busybox() -> Path:
    """A statically linked busybox (it must run before the root file system exists)."""
    for candidate in (os.environ.get("PYVFIO_LAB_BUSYBOX"), "/bin/busybox",
                      "/usr/bin/busybox", shutil.which("busybox")):
        if candidate and os.path.isfile(candidate) and _is_static_elf(Path(candidate)):
            return Path(candidate)
    raise ToolMissingError("no statically linked busybox found", remedy=_BUSYBOX_REMEDY)


def _is_static_elf(path: Path) -> bool:
    """True for an ELF64 executable without a PT_INTERP (dynamic loader) header."""
    with open(path, "rb") as fh:
        head = fh.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        fh.seek(phoff)
        table = fh.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def write_cpio(out: BinaryIO, root: Path) -> None:
    """Write the tree under ``root`` to ``out`` as a ``newc`` cpio archive owned by root."""
    entries = sorted(root.rglob("*"))
    for ino, path in enumerate(entries, start=1):
        st = path.lstat()
        if path.is_symlink():
            data = os.readlink(path).encode()
        elif path.is_file():
            data = path.read_bytes()
        else:
            data = b""
        _cpio_entry(out, str(path.relative_to(root)), ino, st.st_mode, st.st_mtime, data)
    _cpio_entry(out, "TRAILER!!!", 0, 0, 0, b"")


def _cpio_entry(out: BinaryIO, name: str, ino: int, mode: int, mtime: float,
                data: bytes) -> None:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, int(mtime), len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08x" % f for f in fields)
    out.write(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
    out.write(data + b"\0" * (-len(data) % 4))


def build_initramfs(kernel: Kernel, extra_module_dirs: Sequence[Path] = (),
                    modules: Iterable[str] = GUEST_MODULES,
                    busybox: Optional[Path] = None) -> Path:
    """The initramfs for ``kernel`` with ``modules`` (those it has) and every
    module of ``extra_module_dirs`` staged; cached.  ``busybox`` is a static one
    for the kernel's architecture (default: the host's)."""
    busybox = busybox or find_busybox()
    tree = ModuleTree(kernel.modules, extra_module_dirs)
    boot_wanted = (*BOOT_MODULES, *ARCH_BOOT_MODULES.get(kernel.arch, ()))
    boot, _ = tree.resolve(boot_wanted)
    extras = [p.name[:-3] for d in extra_module_dirs for p in sorted(Path(d).glob("*.ko"))]
    order, skipped = tree.resolve([*boot_wanted, *(f"?{m}" for m in modules), *extras])
    key_parts: List[bytes] = [kernel.release.encode(), kernel.package_version.encode(),
                              busybox.read_bytes(), " ".join(order).encode()]
    key_parts += [p.read_bytes() for p in sorted(GUEST_DIR.iterdir())]
    key_parts += [tree.files[n].read_bytes() for n in order
                  if tree.relpath[n].startswith("extra/")]
    out = cache_dir() / "initramfs" / f"{kernel.release}-{digest(*key_parts)}.cpio"
    if out.exists():
        return out
    with locked(out):
        if not out.exists():
            _write_initramfs(out, tree, boot, order, busybox)
            missing = [m for m in skipped if m not in _EXPECTED_MISSING]
            if missing:
                warn(f"kernel {kernel.release} lacks modules: {' '.join(missing)}")
    return out


# modules some kernels never have; not worth a warning
_EXPECTED_MISSING = {"vfio_iommu_spapr_tce", "arm_smmu_v3", "vfio_iommu_type1", "kvm_intel",
                     "kvm_amd", "iommufd", "vdpa_sim", "vdpa_sim_net",
                     "vdpa_sim_blk", "vringh", "mdev"}


def _write_initramfs(out: Path, tree: ModuleTree, boot: List[str], order: List[str],
                     busybox: Path) -> None:
    info(f"building initramfs {out.name} ({len(order)} modules)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".initramfs-") as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "dev", "proc", "sys", "mnt", "newroot", "etc/lab", "lab"):
            (root / d).mkdir(parents=True)
        shutil.copyfile(busybox, root / "bin" / "busybox")
        (root / "bin" / "busybox").chmod(0o755)
        (root / "bin" / "sh").symlink_to("busybox")
        for script in ("stage2", "modprobe"):
            shutil.copyfile(GUEST_DIR / script, root / "lab" / script)
            (root / "lab" / script).chmod(0o755)
        shutil.copyfile(GUEST_DIR / "init", root / "init")
        (root / "init").chmod(0o755)
        (root / "etc" / "lab" / "boot-modules").write_text("".join(f"{m}\n" for m in boot))
        tree.stage(order, root / "lib" / "modules" / tree.moddir.name)
        partial = Path(tmp) / "initramfs.cpio"
        with open(partial, "wb") as fh:
            write_cpio(fh, root)
        partial.replace(out)
