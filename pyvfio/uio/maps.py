"""A UIO device's memory maps and port regions, with bounds-checked typed access.

Memory map N is mapped from ``/dev/uioN`` at offset ``N * page size`` (the
UIO convention: the offset selects the map).  Loads and stores of 1, 2, 4
and 8 bytes are single accesses of that width through the mapping
(:mod:`pyvfio.core.mmio`, shared with VFIO regions), checked against the
map's size first, so a bad offset raises
:class:`~pyvfio.errors.OutOfBoundsError` instead of a SIGBUS.

Port regions are I/O-port ranges; user space reaches them with in/out
instructions after ioperm(2) (root, x86), one access of the given width
per call.
"""
from __future__ import annotations

import mmap as _mmap
from typing import Any, Optional

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.mmio import MmioAccess, Window
from pyvfio.core.uapi import lib
from pyvfio.uio.sysfs import UioMapInfo, UioPortInfo

__all__ = ["UioMemoryMap", "UioPortRegion", "PAGE_SIZE"]

PAGE_SIZE = _mmap.PAGESIZE
_INS = {1: lib.pyvfio_inb, 2: lib.pyvfio_inw, 4: lib.pyvfio_inl}
_OUTS = {1: lib.pyvfio_outb, 2: lib.pyvfio_outw, 4: lib.pyvfio_outl}


class UioMemoryMap(MmioAccess):
    """Memory map ``info.index`` of an open UIO device, mapped into the process.

    Offsets count from the start of the area the driver describes (the
    map's ``offset`` into its first page is added here).  ``bar`` is the PCI
    BAR the map shows, when it is one.  The typed accessors are
    :class:`pyvfio.core.mmio.MmioAccess`'s: each one load or store of its width.
    """

    def __init__(self, device: Any, info: UioMapInfo, bar: Optional[int] = None) -> None:
        self.device = device
        self.info = info
        self.index = info.index
        self.bar = bar
        self.size = max(0, info.size - info.offset)
        self._closed = False
        self._mmio_init()
        self._mmio_size = self.size
        self._mmio_device = device.name
        if not self.size:
            raise errors.NotFoundError(f"map {self.index} is empty", device=device.name)
        length = (info.offset + self.size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
        mapping = syscalls.mmap(device.fd, length, self.index * PAGE_SIZE, device=device.name,
                                what=f"{device.name} map {self.index}")
        # the window's offsets count from the area's start, ``offset`` bytes into the page
        self._window: Optional[Window] = Window(-info.offset, length, mapping)
        self._mmio_whole = self._window if info.offset == 0 else None

    # -- what MmioAccess needs ---------------------------------------------------------
    def _where(self) -> str:
        return f"map {self.index} ({self.info.name or 'unnamed'}, {self.size:#x} bytes)"

    def _mmio_check(self, off: int, size: int, write: bool) -> None:
        if self._closed:
            raise errors.ClosedError(f"{self.device.name} map {self.index}",
                                     device=self.device.name)
        self.device._check_open()
        if type(off) is not int or off < 0 or size < 0 or off + size > self.size:
            raise errors.OutOfBoundsError(
                f"access of {size} bytes at {off!r} is outside {self._where()}",
                device=self.device.name, remedy=f"use offsets below {self.size:#x}")

    def _mmio_window(self, off: int, size: int) -> Optional[Window]:
        return self._window

    def _mmio_pread(self, off: int, size: int) -> bytes:    # pragma: no cover - always mapped
        raise errors.NotSupportedError("UIO maps are only reachable mapped",
                                       device=self.device.name)

    _mmio_pwrite = _mmio_pread                                  # type: ignore[assignment]

    # -- lifetime ----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._mmio_whole = None
        window, self._window = self._window, None
        if window is not None:
            window.release()
            syscalls.munmap(window.mapping)

    def __repr__(self) -> str:
        bar = f" BAR{self.bar}" if self.bar is not None else ""
        return f"<UioMemoryMap {self.index}{bar} of {self.device.name}: {self.size:#x} bytes>"


class UioPortRegion:
    """I/O-port region ``info.index`` of a UIO device, reached with in/out instructions.

    The first access opens the range to the calling thread with ioperm(2)
    (root, x86; the permission is per thread); :meth:`close` gives it back.
    """

    def __init__(self, device: Any, info: UioPortInfo) -> None:
        self.device = device
        self.info = info
        self.index = info.index
        self.size = info.size
        self._open = False

    def _port(self, off: int, size: int) -> int:
        self.device._check_open()
        if size not in _INS:
            raise errors.InvalidArgumentError(f"port accesses are 1, 2 or 4 bytes, not {size!r}",
                                              device=self.device.name)
        if type(off) is not int or off < 0 or off + size > self.size:
            raise errors.OutOfBoundsError(
                f"port access of {size} bytes at {off!r} is outside port region {self.index} "
                f"({self.size:#x} ports)", device=self.device.name,
                remedy=f"use offsets below {self.size:#x}")
        if off % size:
            raise errors.InvalidArgumentError(f"{size * 8}-bit port access at {off:#x} is not "
                                              "naturally aligned", device=self.device.name)
        if not self._open:
            syscalls.ioperm(self.info.start, self.size, True, device=self.device.name)
            self._open = True
        return self.info.start + off

    def read(self, off: int, size: int) -> int:
        """One ``in`` of ``size`` (1, 2 or 4) bytes at port ``start + off``."""
        return int(_INS[size](self._port(off, size)))

    def write(self, off: int, size: int, value: int) -> None:
        """One ``out`` of ``size`` bytes at port ``start + off``."""
        port = self._port(off, size)
        if type(value) is not int or not 0 <= value < 1 << (8 * size):
            raise errors.InvalidArgumentError(f"{value!r} does not fit {size * 8} bits",
                                              device=self.device.name)
        _OUTS[size](port, value)

    def close(self) -> None:
        if self._open:
            self._open = False
            syscalls.ioperm(self.info.start, self.size, False, device=self.device.name)

    def __repr__(self) -> str:
        return (f"<UioPortRegion {self.index} of {self.device.name}: ports "
                f"{self.info.start:#x}+{self.size:#x}>")
