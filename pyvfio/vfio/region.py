"""A VFIO device region: a BAR, the PCI config space, the ROM, or a device-specific area.

``VFIO_DEVICE_GET_REGION_INFO`` gives each region's size, flags and the
offset at which it appears in the device fd.  A region may be accessed with
pread/pwrite at that offset, and, when the kernel allows (the MMAP flag),
mapped into the process.  Where only parts may be mapped (the sparse-mmap
capability, e.g. around an MSI-X table) only those parts are mapped and the
rest goes through pread/pwrite.

Accesses are checked against the region's size before they reach the device,
so a bad offset raises :class:`~pyvfio.errors.OutOfBoundsError` instead of a
SIGBUS.  The accessors come from :class:`pyvfio.core.mmio.MmioAccess`: a typed
access is exactly one load or store of its width (a C volatile access on a
mapping, one pread/pwrite of that size otherwise); bulk reads and writes take
an access ``width``; ``endian`` is the byte order of the device's registers.
"""
from __future__ import annotations

import mmap as _mmap
from typing import Any, List, NamedTuple, Optional, Tuple

from pyvfio import errors
from pyvfio.core import argsz
from pyvfio.core import syscalls
from pyvfio.core.handle import Handle
from pyvfio.core.mmio import LITTLE, MmioAccess, Window
from pyvfio.core.uapi import lib

__all__ = ["Region", "RegionInfo"]


class RegionInfo(NamedTuple):
    """``VFIO_DEVICE_GET_REGION_INFO`` with its capabilities decoded."""
    index: int  # type: ignore[assignment]  # the kernel's field name shadows tuple.index
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


class Region(MmioAccess, Handle):
    """One region of an open VFIO device.

    ``endian`` is the byte order of the device's registers (PCI: little);
    see :meth:`~pyvfio.core.mmio.MmioAccess.set_endian`.
    """

    def __init__(self, device: Any, index: int, info: Optional[RegionInfo] = None,
                 endian: str = LITTLE) -> None:
        self.device = device
        self._owner = device
        self.index = index
        self.name = f"{device.name} region {index}"
        self.info = info or region_info(device.fd, index, device.name)
        self.size = self.info.size
        self.offset = self.info.offset
        self.flags = self.info.flags
        self._areas: List[Window] = []
        self._mmio_size = self.size
        self._mmio_device = device.name
        self._mmio_init(endian)
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
        return self._closed or bool(self.device.closed)

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
                try:
                    self._areas.append(Window(off, size, m))
                except BaseException:
                    syscalls.munmap(m)
                    raise
        except BaseException:
            self.munmap()
            raise
        if len(self._areas) == 1 and self._areas[0].start == 0 and self._areas[0].end == self.size:
            self._mmio_set_whole(self._areas[0])
        return self

    def munmap(self) -> None:
        """Remove the mappings; accesses go through pread/pwrite afterwards."""
        self._mmio_set_whole(None)
        areas, self._areas = self._areas, []
        for a in areas:
            a.release()
            syscalls.munmap(a.mapping)

    def _area(self, off: int, size: int) -> Optional[Window]:
        for a in self._areas:
            if a.start <= off and off + size <= a.end:
                return a
        return None

    # -- what MmioAccess needs -------------------------------------------------------
    def _mmio_check(self, off: int, size: int, write: bool) -> None:
        self._check()
        if type(off) is not int or type(size) is not int:
            raise errors.ArgumentTypeError(
                f"offset and size must be integers, not {off!r} and {size!r}",
                device=self.device.name, remedy="pass int offsets and sizes")
        if off < 0 or size < 0 or off + size > self.size:
            raise errors.OutOfBoundsError(
                f"access of {size} bytes at {off:#x} is outside region {self.index} "
                f"({self.size:#x} bytes)", device=self.device.name,
                remedy=f"use offsets below {self.size:#x}")
        if not (self.writable if write else self.readable):
            op = "write" if write else "read"
            raise errors.PermissionDeniedError(f"region {self.index} is not {op}able",
                                               device=self.device.name,
                                               remedy=f"do not {op} this region")

    def _mmio_window(self, off: int, size: int) -> Optional[Window]:
        return self._area(off, size)

    def _mmio_pread(self, off: int, size: int) -> bytes:
        return syscalls.pread(self.device.fd, size, self.offset + off, device=self.device.name)

    def _mmio_pwrite(self, off: int, data: bytes) -> None:
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
