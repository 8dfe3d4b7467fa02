"""A UIO device's memory maps and port regions, with bounds-checked typed access.

Memory map N is mapped from ``/dev/uioN`` at offset ``N * page size`` (the
UIO convention: the offset selects the map).  Loads and stores of 1, 2, 4
and 8 bytes are single accesses of that width through the mapping, checked
against the map's size first, so a bad offset raises
:class:`~pyvfio.errors.OutOfBoundsError` instead of a SIGBUS.

Port regions are I/O-port ranges; user space reaches them through
``/dev/port`` (root), one access of the given width per call.
"""
from __future__ import annotations

import mmap as _mmap
import os
import struct
from typing import Any, Optional

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.sysfs import host
from pyvfio.core.uapi import ffi
from pyvfio.uio.sysfs import UioMapInfo, UioPortInfo

__all__ = ["UioMemoryMap", "UioPortRegion", "PAGE_SIZE"]

PAGE_SIZE = _mmap.PAGESIZE
_FMT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
_PTR = {1: "uint8_t *", 2: "uint16_t *", 4: "uint32_t *", 8: "uint64_t *"}


class UioMemoryMap:
    """Memory map ``info.index`` of an open UIO device, mapped into the process.

    Offsets count from the start of the area the driver describes (the
    map's ``offset`` into its first page is added here).  ``bar`` is the PCI
    BAR the map shows, when it is one.
    """

    def __init__(self, device: Any, info: UioMapInfo, bar: Optional[int] = None) -> None:
        self.device = device
        self.info = info
        self.index = info.index
        self.bar = bar
        self.size = max(0, info.size - info.offset)
        self._closed = False
        length = (info.offset + self.size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
        if not self.size:
            raise errors.NotFoundError(f"map {self.index} is empty", device=device.name)
        self._mapping = syscalls.mmap(device.fd, length, self.index * PAGE_SIZE,
                                      device=device.name,
                                      what=f"{device.name} map {self.index}")
        self._buf = ffi.from_buffer("char[]", self._mapping)
        self._base = self._buf + info.offset
        self._ptrs = {n: ffi.cast(t, self._base) for n, t in _PTR.items()}
        self._p32 = self._ptrs[4]
        self._last32 = self.size - 4

    # -- checks ---------------------------------------------------------------------
    def _where(self) -> str:
        return f"map {self.index} ({self.info.name or 'unnamed'}, {self.size:#x} bytes)"

    def _bounds(self, off: int, size: int, typed: bool) -> None:
        if self._closed:
            raise errors.ClosedError(f"{self.device.name} map {self.index}",
                                     device=self.device.name)
        self.device._check_open()
        if isinstance(off, bool) or not isinstance(off, int) or off < 0 or size < 0 \
                or off + size > self.size:
            raise errors.OutOfBoundsError(
                f"access of {size} bytes at {off!r} is outside {self._where()}",
                device=self.device.name, remedy=f"use offsets below {self.size:#x}")
        if typed and off % size:
            raise errors.InvalidArgumentError(
                f"{size * 8}-bit access at {off:#x} is not naturally aligned",
                device=self.device.name)

    # -- typed access ---------------------------------------------------------------------
    def _read(self, off: int, size: int) -> int:
        self._bounds(off, size, True)
        return int(self._ptrs[size][off // size])

    def _write(self, off: int, size: int, value: int) -> None:
        self._bounds(off, size, True)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 \
                or value >> (8 * size):
            raise errors.InvalidArgumentError(f"{value!r} does not fit {size * 8} bits",
                                              device=self.device.name)
        self._ptrs[size][off // size] = value

    def read8(self, off: int) -> int:
        return self._read(off, 1)

    def read16(self, off: int) -> int:
        return self._read(off, 2)

    def read32(self, off: int) -> int:
        """One 32-bit load at ``off``."""
        if not self._closed and isinstance(off, int) and not off & 3 and 0 <= off <= self._last32:
            return int(self._p32[off >> 2])
        return self._read(off, 4)

    def read64(self, off: int) -> int:
        return self._read(off, 8)

    def write8(self, off: int, value: int) -> None:
        self._write(off, 1, value)

    def write16(self, off: int, value: int) -> None:
        self._write(off, 2, value)

    def write32(self, off: int, value: int) -> None:
        """One 32-bit store at ``off``."""
        self._write(off, 4, value)

    def write64(self, off: int, value: int) -> None:
        self._write(off, 8, value)

    def read(self, off: int, size: int) -> bytes:
        """``size`` bytes at ``off`` (a memcpy from the mapping)."""
        self._bounds(off, size, False)
        return bytes(ffi.buffer(self._base + off, size))

    def write(self, off: int, data: bytes) -> None:
        """Copy ``data`` to ``off``."""
        self._bounds(off, len(data), False)
        ffi.memmove(self._base + off, data, len(data))

    # -- lifetime ----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ptrs = {}
        self._p32 = None
        self._base = None
        ffi.release(self._buf)
        syscalls.munmap(self._mapping)

    def __repr__(self) -> str:
        bar = f" BAR{self.bar}" if self.bar is not None else ""
        return f"<UioMemoryMap {self.index}{bar} of {self.device.name}: {self.size:#x} bytes>"


class UioPortRegion:
    """I/O-port region ``info.index`` of a UIO device, accessed through ``/dev/port``."""

    def __init__(self, device: Any, info: UioPortInfo) -> None:
        self.device = device
        self.info = info
        self.index = info.index
        self.size = info.size
        self._fd: Optional[int] = None

    def _port(self, off: int, size: int) -> int:
        self.device._check_open()
        if isinstance(off, bool) or not isinstance(off, int) or off < 0 \
                or off + size > self.size:
            raise errors.OutOfBoundsError(
                f"port access of {size} bytes at {off!r} is outside port region {self.index} "
                f"({self.size:#x} ports)", device=self.device.name,
                remedy=f"use offsets below {self.size:#x}")
        if self._fd is None:
            self._fd = syscalls.open(host().dev_path("port"), os.O_RDWR,
                                     device=self.device.name)
        return self.info.start + off

    def read(self, off: int, size: int) -> int:
        """An ``in`` of ``size`` (1, 2 or 4) bytes at port ``start + off``."""
        port = self._port(off, size)
        return struct.unpack(_FMT[size], syscalls.pread(self._fd, size, port,  # type: ignore
                                                        device=self.device.name))[0]

    def write(self, off: int, size: int, value: int) -> None:
        """An ``out`` of ``size`` bytes at port ``start + off``."""
        port = self._port(off, size)
        syscalls.pwrite(self._fd, struct.pack(_FMT[size], value), port,  # type: ignore
                        device=self.device.name)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            syscalls.close(fd)

    def __repr__(self) -> str:
        return (f"<UioPortRegion {self.index} of {self.device.name}: ports "
                f"{self.info.start:#x}+{self.size:#x}>")
