"""A VFIO device region: a BAR, the PCI config space, the ROM, or a device-specific area.

``VFIO_DEVICE_GET_REGION_INFO`` gives each region's size, flags and the
offset at which it appears in the device fd.  A region may be accessed with
pread/pwrite at that offset, and, when the kernel allows (the MMAP flag),
mapped into the process.  Where only parts may be mapped (the sparse-mmap
capability, e.g. around an MSI-X table) only those parts are mapped and the
rest goes through pread/pwrite.

Accesses are checked against the region's size before they reach the device,
so a bad offset raises :class:`~pyvfio.errors.OutOfBoundsError` instead of a
SIGBUS.  Typed accesses are single loads and stores of their width.
"""
from __future__ import annotations

import mmap as _mmap
import struct
from typing import Any, List, NamedTuple, Optional, Tuple

from pyvfio import errors
from pyvfio.core import args, argsz
from pyvfio.core import syscalls
from pyvfio.core.handle import Handle
from pyvfio.core.uapi import ffi, lib

__all__ = ["Region", "RegionInfo"]

_FMT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
_PTR = {1: "uint8_t *", 2: "uint16_t *", 4: "uint32_t *", 8: "uint64_t *"}


class RegionInfo(NamedTuple):
    """``VFIO_DEVICE_GET_REGION_INFO`` with its capabilities decoded."""
    index: int
    flags: int
    size: int
    offset: int
    sparse_areas: Optional[List[Tuple[int, int]]]     # (offset, size) or None
    type: Optional[Tuple[int, int]]                  # (type, subtype)
    msix_mappable: bool


def region_info(fd: int, index: int, device: Optional[str] = None) -> RegionInfo:
    """Ask the kernel about region ``index`` of device fd ``fd``."""
    info = argsz.get_info(fd, lib.VFIO_DEVICE_GET_REGION_INFO, "struct vfio_region_info",
                          index=index, device=device)
    sparse = rtype = None
    msix = False
    if info.flags & lib.VFIO_REGION_INFO_FLAG_CAPS and info.cap_offset:
        for cap in argsz.caps(info, info.cap_offset, argsz.REGION_CAPS):
            if cap.id == lib.VFIO_REGION_INFO_CAP_SPARSE_MMAP:
                sparse = [(cap.data.areas[i].offset, cap.data.areas[i].size)
                          for i in range(cap.data.nr_areas)]
            elif cap.id == lib.VFIO_REGION_INFO_CAP_TYPE:
                rtype = (cap.data.type, cap.data.subtype)
            elif cap.id == lib.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE:
                msix = True
    return RegionInfo(index, info.flags, info.size, info.offset, sparse, rtype, msix)


class _Area:
    """One mmap'ed window of a region with typed pointers into it."""

    __slots__ = ("start", "end", "mapping", "base", "p8", "p16", "p32", "p64")

    def __init__(self, start: int, size: int, mapping: Any) -> None:
        self.start = start
        self.end = start + size
        self.mapping = mapping
        self.base = ffi.from_buffer("char[]", mapping)
        self.p8 = ffi.cast("uint8_t *", self.base)
        self.p16 = ffi.cast("uint16_t *", self.base)
        self.p32 = ffi.cast("uint32_t *", self.base)
        self.p64 = ffi.cast("uint64_t *", self.base)

    def release(self) -> None:
        ffi.release(self.base)
        syscalls.munmap(self.mapping)


class Region(Handle):
    """One region of an open VFIO device."""

    def __init__(self, device: Any, index: int, info: Optional[RegionInfo] = None) -> None:
        self.device = device
        self._owner = device
        self.index = index
        self.name = f"{device.name} region {index}"
        self.info = info or region_info(device.fd, index, device.name)
        self.size = self.info.size
        self.offset = self.info.offset
        self.flags = self.info.flags
        self._areas: List[_Area] = []
        self._whole: Optional[_Area] = None      # fast path: one area covering the region
        self._last32 = self.size - 4
        self._closed = False

    # -- properties -------------------------------------------------------
    @property
    def readable(self) -> bool:
        return bool(self.flags & lib.VFIO_REGION_INFO_FLAG_READ)

    @property
    def writable(self) -> bool:
        return bool(self.flags & lib.VFIO_REGION_INFO_FLAG_WRITE)

    @property
    def mmappable(self) -> bool:
        return bool(self.flags & lib.VFIO_REGION_INFO_FLAG_MMAP)

    @property
    def mapped(self) -> List[Tuple[int, int]]:
        """The (offset, size) windows now mapped into the process."""
        return [(a.start, a.end - a.start) for a in self._areas]

    def _where(self) -> str:
        return f"{self.device.name} region {self.index}"

    def _check(self) -> None:
        if self._closed:
            raise errors.ClosedError(self._where(), device=self.device.name)
        self.device._check_open()

    @property
    def closed(self) -> bool:
        return self._closed or self.device.closed

    # -- mapping -----------------------------------------------------------------
    def mmap(self) -> "Region":
        """Map what the kernel lets us map: the whole region, or its sparse areas.

        Accesses outside the mapped windows still work, through pread/pwrite.
        """
        self._check()
        if self._areas or not self.mmappable or not self.size:
            return self
        windows = self.info.sparse_areas if self.info.sparse_areas is not None \
            else [(0, self.size)]
        prot = (_mmap.PROT_READ if self.readable else 0) | (_mmap.PROT_WRITE if self.writable else 0)
        try:
            for off, size in windows:
                if not size:
                    continue
                m = syscalls.mmap(self.device.fd, size, self.offset + off, prot=prot,
                                  device=self.device.name, what=self._where())
                self._areas.append(_Area(off, size, m))
        except BaseException:
            self.munmap()
            raise
        if len(self._areas) == 1 and self._areas[0].start == 0 and self._areas[0].end == self.size:
            self._whole = self._areas[0]
        return self

    def munmap(self) -> None:
        """Remove the mappings; accesses go through pread/pwrite afterwards."""
        self._whole = None
        areas, self._areas = self._areas, []
        for a in areas:
            a.release()

    def _area(self, off: int, size: int) -> Optional[_Area]:
        for a in self._areas:
            if a.start <= off and off + size <= a.end:
                return a
        return None

    # -- bounds ------------------------------------------------------------------
    def _bounds(self, off: int, size: int, op: str) -> Tuple[int, int]:
        self._check()
        off = args.integer(off, "offset", device=self.device.name, lo=None, hi=None)
        size = args.integer(size, "size", device=self.device.name, lo=None, hi=None)
        if off < 0 or size < 0 or off + size > self.size:
            raise errors.OutOfBoundsError(
                f"{op} of {size} bytes at {off:#x} is outside region {self.index} "
                f"({self.size:#x} bytes)", device=self.device.name,
                remedy=f"use offsets below {self.size:#x}")
        if op != "access" and size in _PTR and off % size:
            raise errors.InvalidArgumentError(
                f"{size * 8}-bit {op} at {off:#x} is not naturally aligned",
                device=self.device.name)
        if op == "read" and not self.readable or op == "write" and not self.writable:
            raise errors.PermissionDeniedError(f"region {self.index} is not {op}able",
                                               device=self.device.name, remedy=None)
        return off, size

    # -- typed access ---------------------------------------------------------------
    def _read(self, off: int, size: int) -> int:
        off, size = self._bounds(off, size, "read")
        a = self._area(off, size)
        if a is not None:
            return getattr(a, f"p{size * 8}")[(off - a.start) // size]
        data = syscalls.pread(self.device.fd, size, self.offset + off, device=self.device.name)
        return struct.unpack(_FMT[size], data)[0]

    def _write(self, off: int, size: int, value: int) -> None:
        off, size = self._bounds(off, size, "write")
        value = args.integer(value, f"{size * 8}-bit value", device=self.device.name,
                             hi=(1 << (size * 8)) - 1)
        a = self._area(off, size)
        if a is not None:
            getattr(a, f"p{size * 8}")[(off - a.start) // size] = value
            return
        syscalls.pwrite(self.device.fd, struct.pack(_FMT[size], value), self.offset + off,
                        device=self.device.name)

    def read8(self, off: int) -> int:
        return self._read(off, 1)

    def read16(self, off: int) -> int:
        return self._read(off, 2)

    def read32(self, off: int) -> int:
        """A single 32-bit load (or a 4-byte pread) at ``off``."""
        w = self._whole
        if w is not None and type(off) is int and not off & 3 and 0 <= off <= self._last32:
            return w.p32[off >> 2]
        return self._read(off, 4)

    def read64(self, off: int) -> int:
        return self._read(off, 8)

    def write8(self, off: int, value: int) -> None:
        self._write(off, 1, value)

    def write16(self, off: int, value: int) -> None:
        self._write(off, 2, value)

    def write32(self, off: int, value: int) -> None:
        """A single 32-bit store (or a 4-byte pwrite) at ``off``."""
        w = self._whole
        if w is not None and type(off) is int and not off & 3 and 0 <= off <= self._last32:
            try:
                w.p32[off >> 2] = value
                return
            except (OverflowError, TypeError):
                pass                   # reported with the device's name below
        self._write(off, 4, value)

    def write64(self, off: int, value: int) -> None:
        self._write(off, 8, value)

    # -- bulk access -------------------------------------------------------------------
    def read(self, off: int, size: int) -> bytes:
        """``size`` bytes at ``off`` (memcpy from a mapping, else pread)."""
        off, size = self._bounds(off, size, "access")
        a = self._area(off, size)
        if a is not None:
            return bytes(ffi.buffer(a.base + (off - a.start), size))
        return syscalls.pread(self.device.fd, size, self.offset + off, device=self.device.name)

    def write(self, off: int, data: bytes) -> None:
        """Copy ``data`` to ``off`` (memcpy into a mapping, else pwrite)."""
        data = args.data(data, "data", device=self.device.name)
        off, _ = self._bounds(off, len(data), "access")
        a = self._area(off, len(data))
        if a is not None:
            ffi.memmove(a.base + (off - a.start), data, len(data))
            return
        syscalls.pwrite(self.device.fd, data, self.offset + off, device=self.device.name)

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self.munmap()
        self._closed = True

    def __repr__(self) -> str:
        return (f"<Region {self.index} of {self.device.name}: {self.size:#x} bytes at "
                f"{self.offset:#x} flags={self.flags:#x} mapped={self.mapped}>")
