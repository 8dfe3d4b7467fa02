"""UIO in the mock kernel: ``uio_pci_generic`` and the project's ``uio_msi``.

Family ``uio`` (configuration: ``uio={bdf: driver}``).  A function bound to
a UIO driver gets ``/sys/class/uio/uioN`` (name, version, event, maps, the ``device``
link), the node ``/dev/uioN`` and a ``config`` attribute whose reads and
writes reach the model, as sysfs does.

The semantics follow the kernel's drivers (checked against the real ones in
the lab's guests by the same tests):

* ``uio_pci_generic``: INTx only; the handler masks the line with the
  command register's INTX_DISABLE bit and counts; there is no irqcontrol
  (a write gives ENOSYS); maps are the 32-bit non-prefetchable memory BARs,
  named after the device.
* ``uio_msi``: maps every memory BAR (``BAR<n>``); min(MSI-X table size, 64)
  vectors, MSI-X enabled on first open and freed on last close; without
  MSI-X one INTx vector, masked by the handler and unmasked by a write of 1;
  ``UIO_MSI_IRQ_SET`` with ERANGE, fd -1 and replacement; other ioctls
  EOPNOTSUPP; the user taint on first open.

The mock cannot trap loads and stores: a map is a shared memory copy of the
BAR whose changed words are replayed to the model, in address order, at
the next system call, after which the model's registers are copied back.
No-IOMMU DMA goes to the mock's physical memory (``/proc/self/pagemap``).
"""
from __future__ import annotations

import dataclasses
import errno
import mmap as _mmap
import os
from typing import Any, Dict, List, Optional

from pyvfio.core.uapi import ffi, lib
from pyvfio.mock.core.family import Family, MockFile, register
from pyvfio.mock.core.uaccess import PAGE_SIZE, fail, user_range_ok
from pyvfio.mock.pci import BarSpec, PciFunction

__all__ = ["Uio", "MsixModel", "MockUioDevice", "UIO_DRIVERS"]

PCI_COMMAND = lib.PCI_COMMAND
PCI_COMMAND_INTX_DISABLE = lib.PCI_COMMAND_INTX_DISABLE

UIO_DRIVERS = ("uio_pci_generic", "uio_msi")
MAX_VECTORS = 64
PCI_CAP_ID_MSIX = 0x11
PCI_MSIX_FLAGS = 2
PCI_MSIX_FLAGS_ENABLE = 0x8000
#: Register windows copied back from the model after each replay, per (vendor, device).
_REGISTER_WINDOW = {(0x1234, 0x11E8): 0xA0}
#: 64-bit registers (replayed as one 8-byte write), per (vendor, device).
_WIDE = {(0x1234, 0x11E8): (0x80, 0xA0)}


class MsixModel(PciFunction):
    """A test function with an MSI-X table of ``vectors`` entries and a 4 KiB BAR 0.

    Writing ``v`` to register 0x0 sends MSI-X vector ``v`` (nothing when MSI-X
    is off or bus mastering is off); register 0x4 reads the vector count.
    """

    vendor_id = 0x1B36
    device_id = 0x00FE
    class_code = 0xFF0000

    def __init__(self, bdf: str = "0000:00:12.0", group: int = 7, *, vectors: int = 8) -> None:
        super().__init__(bdf, group)
        self.vectors = vectors
        self._add_bar(BarSpec(0, 0x1000, 0xFD000000 + (self.slot << 16)))
        self._add_cap(0x50, PCI_CAP_ID_MSIX)
        self._set(0x50 + PCI_MSIX_FLAGS, 2, vectors - 1)
        self._setmask(0x50 + PCI_MSIX_FLAGS, 2, PCI_MSIX_FLAGS_ENABLE | 0x4000)
        self._set(0x54, 4, 0x800)            # table in BAR 0 at 0x800
        self._set(0x58, 4, 0xC00)            # PBA in BAR 0 at 0xC00
        self.msix_cap = 0x50
        self._snapshot_pristine()

    @property
    def msix_enabled(self) -> bool:
        return bool(self._get(0x50 + PCI_MSIX_FLAGS, 2) & PCI_MSIX_FLAGS_ENABLE)

    def mmio_read(self, bar: int, offset: int, size: int) -> int:
        return {0x4: self.vectors}.get(offset, 0) if size == 4 else 0

    def mmio_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4 and self.msix_enabled and self.bus_master \
                and self.host is not None and value < self.vectors:
            self.host.msix(value)


def _msix_table_size(model: PciFunction) -> int:
    pos = model.config_read(0x34, 1) & 0xFC
    seen = set()
    while pos and pos not in seen:
        seen.add(pos)
        if model.config_read(pos, 1) == PCI_CAP_ID_MSIX:
            return (model.config_read(pos + PCI_MSIX_FLAGS, 2) & 0x7FF) + 1
        pos = model.config_read(pos + 1, 1) & 0xFC
    return 0


class _Shadow:
    """Map ``index``: memory standing in for BAR ``bar``, replayed to the model."""

    def __init__(self, dev: "MockUioDevice", index: int, bar: int, spec: BarSpec) -> None:
        self.dev = dev
        self.index = index
        self.bar = bar
        self.spec = spec
        self.length = (spec.size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
        self.fd = os.memfd_create(f"uio-{dev.model.bdf}-bar{bar}", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.length)
        self.mem = _mmap.mmap(self.fd, self.length)
        ids = (dev.model.vendor_id, dev.model.device_id)
        self.window = min(_REGISTER_WINDOW.get(ids, 0x100), spec.size)
        self.wide = _WIDE.get(ids, (0, 0))
        self.refresh()

    def refresh(self) -> None:
        m = self.dev.model
        off = 0
        while off < self.window:
            if self.wide[0] <= off < self.wide[1] and off % 8 == 0:
                self.mem[off:off + 8] = m.mmio_read(self.bar, off, 8).to_bytes(8, "little")
                off += 8
            else:
                self.mem[off:off + 4] = m.mmio_read(self.bar, off, 4).to_bytes(4, "little")
                off += 4
        self.last = bytes(self.mem)

    def replay(self) -> None:
        cur = bytes(self.mem)
        if cur == self.last:
            return
        m = self.dev.model
        for page in range(0, self.length, PAGE_SIZE):
            if cur[page:page + PAGE_SIZE] == self.last[page:page + PAGE_SIZE]:
                continue
            off = page
            while off < page + PAGE_SIZE:
                wide = self.wide[0] <= off < self.wide[1] and off % 8 == 0
                n = 8 if wide else 4
                if cur[off:off + n] != self.last[off:off + n]:
                    m.mmio_write(self.bar, off, n, int.from_bytes(cur[off:off + n], "little"))
                off += n
        self.refresh()

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)


class MockUioDevice:
    """One PCI function bound to a UIO driver: its node and the driver's state."""

    def __init__(self, uio: "Uio", model: PciFunction, driver: str, minor: int) -> None:
        self.uio = uio
        self.kernel = uio.kernel
        self.model = model
        self.driver = driver
        self.minor = minor
        self.node = f"uio{minor}"
        self.event = 0
        self.opens = 0
        self.files: List["UioFile"] = []
        self.has_msix = driver == "uio_msi" and _msix_table_size(model) > 0
        if driver == "uio_msi":
            self.nvec = min(_msix_table_size(model), MAX_VECTORS) if self.has_msix else \
                (1 if model.interrupt_pin else 0)
        else:
            self.nvec = 0
        self.has_intx = bool(model.interrupt_pin) and not self.has_msix
        self.triggers: Dict[int, int] = {}          # vector -> dup of the eventfd
        self.msix_on = False
        self.shadows: List[_Shadow] = []
        model.host = self
        index = 0
        for bar in sorted(model.bars):
            spec = model.bars[bar]
            if driver == "uio_pci_generic" and (spec.mem64 or spec.prefetch):
                continue
            if getattr(spec, "io", False) or index >= 5:
                continue
            self.shadows.append(_Shadow(self, index, bar, spec))
            index += 1
        # pci_enable_device (and bus mastering for uio_msi, as the driver does)
        cmd = model.config_read(PCI_COMMAND, 2) | 0x2
        model.config_write(PCI_COMMAND, 2, cmd | (0x4 if driver == "uio_msi" else 0))

    # -- the model's host interface -------------------------------------------------------
    def intx_changed(self) -> None:
        """The handler of the shared INTx line: check-and-mask, count, signal."""
        m = self.model
        if not self.has_intx or not m.intx_output:
            return
        cmd = m.config_read(PCI_COMMAND, 2)
        m.config_write(PCI_COMMAND, 2, cmd | PCI_COMMAND_INTX_DISABLE)
        if self.driver == "uio_msi":
            self._signal(0)
        self._count()

    def msi(self, vector: int) -> None:
        """MSI is never enabled by the UIO drivers: nothing to deliver."""

    def msix(self, vector: int) -> None:
        if self.msix_on and vector in self.triggers:
            self._signal(vector)
            self._count()

    def _signal(self, vector: int) -> None:
        fd = self.triggers.get(vector)
        if fd is not None:
            os.write(fd, (1).to_bytes(8, "little"))

    def _count(self) -> None:
        self.event += 1
        for f in self.files:
            f.wake()

    def dma_read(self, addr: int, length: int) -> bytes:
        return bytes(self._dma(addr, length, None))

    def dma_write(self, addr: int, data: bytes) -> None:
        self._dma(addr, len(data), data)

    def _dma(self, addr: int, length: int, data: Optional[bytes]) -> bytearray:
        """No IOMMU: bus addresses are the mock's physical addresses."""
        out = bytearray(length if data is None else 0)
        pos = 0
        while pos < length:
            phys = addr + pos
            n = min(PAGE_SIZE - phys % PAGE_SIZE, length - pos)
            vaddr = self.kernel.process.physmem.virt(phys)
            if vaddr is None or not user_range_ok(vaddr, n, write=data is not None):
                self.model._fault(phys, n, data is not None, "no memory at this physical address")
            elif data is None:
                out[pos:pos + n] = ffi.buffer(ffi.cast("char *", vaddr), n)[:]
            else:
                ffi.memmove(ffi.cast("char *", vaddr), data[pos:pos + n], n)
            pos += n
        return out

    # -- driver -------------------------------------------------------------------------------
    def first_open(self) -> None:
        if self.driver == "uio_msi":
            self.uio.tainted = True
            if self.has_msix:
                m = self.model
                flags = m.config_read(m.msix_cap + PCI_MSIX_FLAGS, 2)   # type: ignore
                m.config_write(m.msix_cap + PCI_MSIX_FLAGS, 2,        # type: ignore
                               flags | PCI_MSIX_FLAGS_ENABLE)
                self.msix_on = True

    def last_close(self) -> None:
        for v in list(self.triggers):
            os.close(self.triggers.pop(v))
        if self.msix_on:
            m = self.model
            flags = m.config_read(m.msix_cap + PCI_MSIX_FLAGS, 2)       # type: ignore
            m.config_write(m.msix_cap + PCI_MSIX_FLAGS, 2,            # type: ignore
                           flags & ~PCI_MSIX_FLAGS_ENABLE)
            self.msix_on = False

    def irq_set(self, vec: int, fd: int) -> int:
        if vec >= self.nvec:
            raise fail(errno.ERANGE)
        new = None
        if fd >= 0:
            if self.kernel.is_mock_fd(fd):
                raise fail(errno.EINVAL)           # a mock node is not an eventfd
            try:
                if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:[eventfd]":
                    raise fail(errno.EINVAL)
            except OSError:
                raise fail(errno.EBADF) from None
            new = os.dup(fd)
        elif fd != -1:
            raise fail(errno.EINVAL)
        old = self.triggers.pop(vec, None)
        if old is not None:
            os.close(old)
        if new is not None:
            self.triggers[vec] = new
        return 0

    def irq_lines(self) -> List[str]:
        """What /proc/interrupts would list for the device's requested MSI-X vectors."""
        if not self.has_msix:
            return []
        return [f"uio_msi[{v}]({self.model.bdf})" for v in sorted(self.triggers)]

    def service(self) -> None:
        for s in self.shadows:
            s.replay()

    def close(self) -> None:
        for s in self.shadows:
            s.close()
        self.shadows = []
        for v in list(self.triggers):
            os.close(self.triggers.pop(v))


class UioFile(MockFile):
    """An open ``/dev/uioN``: a real eventfd carries its readiness for poll."""

    kind = "uio"

    def __init__(self, dev: MockUioDevice, path: str) -> None:
        super().__init__(dev.kernel, path)
        self.dev = dev
        self.efd = -1
        self.event_count = dev.event
        if dev.opens == 0:
            dev.first_open()
        dev.opens += 1
        dev.files.append(self)

    def open_fd(self) -> int:
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        if self.dev.event != self.event_count:
            self.wake()
        return self.efd

    def wake(self) -> None:
        if self.efd >= 0:
            os.write(self.efd, (1).to_bytes(8, "little"))

    def release(self) -> None:
        self.dev.files.remove(self)
        self.dev.opens -= 1
        if self.dev.opens == 0:
            self.dev.last_close()

    def rw(self, offset: Optional[int], size: int, data: Optional[bytes]) -> Any:
        dev = self.dev
        if offset is not None:
            raise fail(errno.EINVAL)               # the node is not seekable data
        if size != 4:
            raise fail(errno.EINVAL)
        if data is None:                           # read: the count, once it moved
            if dev.driver == "uio_pci_generic" and not dev.has_intx or \
                    dev.driver == "uio_msi" and not dev.nvec:
                raise fail(errno.EIO)
            if dev.event == self.event_count:
                self._drain()
                raise fail(errno.EAGAIN)
            self.event_count = dev.event
            self._drain()
            return (dev.event & 0xFFFFFFFF).to_bytes(4, "little")
        if dev.driver == "uio_pci_generic" or dev.has_msix or not dev.nvec:
            raise fail(errno.ENOSYS)               # no irqcontrol
        dev.service()                              # stores made before the write land first
        on = int.from_bytes(data, "little", signed=True)
        m = dev.model
        cmd = m.config_read(PCI_COMMAND, 2)
        m.config_write(PCI_COMMAND, 2, (cmd & ~PCI_COMMAND_INTX_DISABLE) if on
                       else (cmd | PCI_COMMAND_INTX_DISABLE))
        return 4

    def _drain(self) -> None:
        try:
            os.read(self.efd, 8)
        except BlockingIOError:
            pass

    def ioctl(self, cmd: int, addr: int) -> int:
        if self.dev.driver != "uio_msi":
            raise fail(errno.ENOTTY)               # the UIO core has no ioctl
        if cmd != lib.UIO_MSI_IRQ_SET:
            raise fail(errno.EOPNOTSUPP)
        arg = ffi.cast("struct uio_msi_irq_set *", addr)
        return self.dev.irq_set(arg.vec, arg.fd)

    def mmap(self, length: int, prot: int, flags: int, offset: int) -> Any:
        index = offset // PAGE_SIZE
        shadow = next((s for s in self.dev.shadows if s.index == index), None)
        if shadow is None or offset % PAGE_SIZE or length > shadow.length:
            raise fail(errno.EINVAL)
        return _mmap.mmap(shadow.fd, length, flags=flags, prot=prot)


class EventFile(MockFile):
    """``/sys/class/uio/uioN/event``: the interrupt count, live."""

    kind = "uio-event"

    def __init__(self, dev: MockUioDevice, path: str) -> None:
        super().__init__(dev.kernel, path)
        self.dev = dev

    def rw(self, offset: Optional[int], size: int, data: Optional[bytes]) -> Any:
        if data is not None:
            raise fail(errno.EACCES)
        text = f"{self.dev.event}\n".encode()
        pos = offset or 0
        return text[pos:pos + size]


class ConfigFile(MockFile):
    """``<device>/config`` of a UIO-bound function: reads and writes reach the model."""

    kind = "pci-config"

    def __init__(self, kernel: Any, model: PciFunction, path: str) -> None:
        super().__init__(kernel, path)
        self.model = model

    def rw(self, offset: Optional[int], size: int, data: Optional[bytes]) -> Any:
        m = self.model
        if offset is None or offset >= m.cfg_size:
            return b"" if data is None else 0
        size = min(size, m.cfg_size - offset)
        out = bytearray()
        pos = offset
        while pos < offset + size:
            n = 4 if pos % 4 == 0 and offset + size - pos >= 4 else \
                2 if pos % 2 == 0 and offset + size - pos >= 2 else 1
            if data is None:
                out += m.config_read(pos, n).to_bytes(n, "little")
            else:
                rel = pos - offset
                m.config_write(pos, n, int.from_bytes(data[rel:rel + n], "little"))
            pos += n
        return bytes(out) if data is None else size


@register
class Uio(Family):
    """UIO: ``uio_pci_generic`` and ``uio_msi`` for the functions ``uio=`` names."""

    name = "uio"
    requires = ("process", "pci", "vfio")

    @dataclasses.dataclass
    class Config:
        #: PCI address -> ``uio_pci_generic`` or ``uio_msi``: those functions are bound
        #: to UIO instead of vfio-pci.
        uio: Optional[Dict[str, str]] = None

    def __init__(self, kernel: Any, config: "Uio.Config") -> None:
        super().__init__(kernel, config)
        self.devices: List[MockUioDevice] = []
        #: Set by uio_msi's first open (TAINT_USER), as the real module does.
        self.tainted = False
        bindings = {k.lower(): v for k, v in (config.uio or {}).items()}
        vfio = kernel.vfio
        for minor, (bdf, driver) in enumerate(sorted(bindings.items())):
            if driver not in UIO_DRIVERS:
                raise ValueError(f"unknown UIO driver {driver!r} (one of {UIO_DRIVERS})")
            vdev = vfio.vfio_device(bdf)
            if vdev is not None:            # a function has one driver: take it from vfio-pci
                vfio.devices.remove(vdev)
                vdev.group.devices.remove(vdev)
            self.devices.append(MockUioDevice(self, kernel.pci.model(bdf), driver, minor))

    def setup(self) -> None:
        _build(self)

    def device(self, which: str) -> MockUioDevice:
        for d in self.devices:
            if which in (d.node, d.model.bdf):
                return d
        raise KeyError(which)

    def service(self) -> None:
        for d in self.devices:
            if d.opens:
                d.service()

    def irq_lines(self) -> List[str]:
        """What /proc/interrupts would list for the requested uio_msi MSI-X vectors."""
        return [line for d in self.devices for line in d.irq_lines()]

    def shutdown(self) -> None:
        for d in self.devices:
            d.close()


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _relink(target: str, link: str) -> None:
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.islink(link):
        os.unlink(link)
    os.symlink(target, link)


def _build(uio: Uio) -> None:
    """sysfs entries, ``/dev/uioN`` and the ``config`` nodes of the UIO-bound functions."""
    kernel = uio.kernel
    sysfs = kernel.host.sysfs
    drivers = os.path.join(sysfs, "bus", "pci", "drivers")
    for name in UIO_DRIVERS:
        for attr in ("bind", "unbind", "new_id", "remove_id"):
            _write(os.path.join(drivers, name, attr), "")
    for dev in uio.devices:
        m = dev.model
        ddir = os.path.realpath(os.path.join(sysfs, "bus", "pci", "devices", m.bdf))
        for stale in (os.path.join(drivers, "vfio-pci", m.bdf),):
            if os.path.islink(stale):
                os.unlink(stale)
        _relink(os.path.join(drivers, dev.driver), os.path.join(ddir, "driver"))
        _relink(ddir, os.path.join(drivers, dev.driver, m.bdf))
        udir = os.path.join(ddir, "uio", dev.node)
        _write(os.path.join(udir, "name"), dev.driver + "\n")
        _write(os.path.join(udir, "version"), ("0.01.0" if dev.driver == "uio_pci_generic"
                                               else "1.0") + "\n")
        _write(os.path.join(udir, "dev"), f"243:{dev.minor}\n")
        _relink(ddir, os.path.join(udir, "device"))
        _relink(udir, os.path.join(sysfs, "class", "uio", dev.node))
        for s in dev.shadows:
            mdir = os.path.join(udir, "maps", f"map{s.index}")
            start = s.spec.address
            _write(os.path.join(mdir, "name"),
                   (m.bdf if dev.driver == "uio_pci_generic" else f"BAR{s.bar}") + "\n")
            _write(os.path.join(mdir, "addr"), f"0x{start & ~(PAGE_SIZE - 1):016x}\n")
            _write(os.path.join(mdir, "offset"), f"0x{start & (PAGE_SIZE - 1):x}\n")
            _write(os.path.join(mdir, "size"), f"0x{s.length:016x}\n")
        _write(os.path.join(udir, "event"), "0\n")
        for base in (udir, os.path.join(sysfs, "class", "uio", dev.node)):
            kernel.add_node(os.path.join(base, "event"), (lambda d: lambda p: EventFile(d, p))(dev))
        _write(kernel.host.dev_path(dev.node), "")
        kernel.add_node(kernel.host.dev_path(dev.node), (lambda d: lambda p: UioFile(d, p))(dev))
        for cfg in (os.path.join(ddir, "config"),
                    os.path.join(sysfs, "bus", "pci", "devices", m.bdf, "config")):
            kernel.add_node(cfg, (lambda mm: lambda p: ConfigFile(kernel, mm, p))(m))
