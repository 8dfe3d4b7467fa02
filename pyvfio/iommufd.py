"""iommufd: ``/dev/iommu`` and its I/O address spaces (IOAS).

An iommufd holds objects named by ids.  An IOAS is an I/O address space:
memory mapped with ``IOMMU_IOAS_MAP`` at IOVAs within the ranges
``IOMMU_IOAS_IOVA_RANGES`` reports (the intersection of what every attached
device's IOMMU allows).  A VFIO device cdev is bound to the iommufd with
``VFIO_DEVICE_BIND_IOMMUFD`` and attached to an IOAS with
``VFIO_DEVICE_ATTACH_IOMMUFD_PT``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from pyvfio import errors
from pyvfio.core import argsz
from pyvfio.core import syscalls
from pyvfio.core.handle import Handle
from pyvfio.core.sysfs import host
from pyvfio.core.space import DmaMapping, IoAddressSpace
from pyvfio.core.uapi import ffi, lib

__all__ = ["IommuFd", "Ioas"]

_U64_MAX = (1 << 64) - 1


class IommuFd(Handle):
    """An open ``/dev/iommu``: the container of IOAS and device objects."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path or host().dev_path("iommu")
        self.name = self.path
        self.fd: Optional[int] = syscalls.open(self.path, os.O_RDWR)
        self.ioas_list: List["Ioas"] = []

    @property
    def closed(self) -> bool:
        return self._closed or getattr(self, "fd", None) is None

    def _check_open(self) -> int:
        if self._closed or self.fd is None:
            raise errors.ClosedError(f"iommufd {self.path}", path=self.path)
        return self.fd

    def ioas(self) -> "Ioas":
        """``IOMMU_IOAS_ALLOC``: a new, empty I/O address space."""
        p = argsz.new("struct iommu_ioas_alloc")
        syscalls.ioctl(self._check_open(), lib.IOMMU_IOAS_ALLOC, p)
        ioas = Ioas(self, p.out_ioas_id)
        ioas._owner = self
        self.ioas_list.append(ioas)
        return ioas

    def destroy(self, object_id: int) -> None:
        """``IOMMU_DESTROY``: free an object by id."""
        p = argsz.new("struct iommu_destroy", id=object_id)
        syscalls.ioctl(self._check_open(), lib.IOMMU_DESTROY, p)

    def option(self, option_id: int, value: Optional[int] = None, object_id: int = 0) -> int:
        """``IOMMU_OPTION``: get (value None) or set an option; returns its value."""
        op = lib.IOMMU_OPTION_OP_GET if value is None else lib.IOMMU_OPTION_OP_SET
        p = argsz.new("struct iommu_option", option_id=option_id, op=op, object_id=object_id,
                      val64=value or 0)
        syscalls.ioctl(self._check_open(), lib.IOMMU_OPTION, p)
        return int(p.val64)

    def hw_info(self, dev_id: int) -> Dict[str, Any]:
        """``IOMMU_GET_HW_INFO`` of a bound device: IOMMU type, capabilities, data."""
        data = ffi.new("char[]", 256)
        p = argsz.new("struct iommu_hw_info", dev_id=dev_id, data_len=256,
                      data_uptr=int(ffi.cast("uintptr_t", data)))
        syscalls.ioctl(self._check_open(), lib.IOMMU_GET_HW_INFO, p)
        return {"type": p.out_data_type, "capabilities": p.out_capabilities,
                "max_pasid_log2": p.out_max_pasid_log2,
                "data": bytes(ffi.buffer(data, min(p.data_len, 256)))}

    def _release(self) -> None:
        """Release every IOAS (and its mappings), then close the fd."""
        try:
            for ioas in list(self.ioas_list):
                ioas.close()
        finally:
            if self.fd is not None:
                syscalls.close(self.fd)
            self.fd = None

    def __repr__(self) -> str:
        return f"<IommuFd {self.path} ioas={[i.id for i in self.ioas_list]}>"


class Ioas(IoAddressSpace):
    """An iommufd I/O address space."""

    def __init__(self, iommufd: IommuFd, ioas_id: int) -> None:
        super().__init__()
        self.iommufd = iommufd
        self.id = ioas_id
        self.name = f"{iommufd.path} IOAS {ioas_id}"
        self._alignment = 4096

    @property
    def fd(self) -> int:
        return self.iommufd._check_open()

    def _ranges(self) -> List[Tuple[int, int]]:
        def make(count: int) -> Any:
            arr = ffi.new("struct iommu_iova_range[]", max(count, 1))
            p = argsz.new("struct iommu_ioas_iova_ranges", ioas_id=self.id, num_iovas=count,
                          allowed_iovas=int(ffi.cast("uintptr_t", arr)))
            return (p, arr)

        p, arr = argsz.call_growing(self.fd, lib.IOMMU_IOAS_IOVA_RANGES, make,
                                    lambda a: a[0].num_iovas, start=8,
                                    ptr_of=lambda a: a[0])
        self._alignment = max(p.out_iova_alignment, 1)
        return [(arr[i].start, arr[i].last) for i in range(p.num_iovas)]

    def _pgsize(self) -> int:
        return max(self._alignment, 4096)

    def allow_iovas(self, ranges: List[Tuple[int, int]]) -> None:
        """``IOMMU_IOAS_ALLOW_IOVAS``: restrict the IOVAs the kernel may choose."""
        arr = ffi.new("struct iommu_iova_range[]", max(len(ranges), 1))
        for i, (s, last) in enumerate(ranges):
            arr[i].start, arr[i].last = s, last
        p = argsz.new("struct iommu_ioas_allow_iovas", ioas_id=self.id, num_iovas=len(ranges),
                      allowed_iovas=int(ffi.cast("uintptr_t", arr)))
        syscalls.ioctl(self.fd, lib.IOMMU_IOAS_ALLOW_IOVAS, p)
        self._allocator = None

    def _map(self, vaddr: int, iova: int, size: int, readable: bool, writable: bool) -> None:
        flags = (lib.IOMMU_IOAS_MAP_FIXED_IOVA
                 | (lib.IOMMU_IOAS_MAP_READABLE if readable else 0)
                 | (lib.IOMMU_IOAS_MAP_WRITEABLE if writable else 0))
        p = argsz.new("struct iommu_ioas_map", flags=flags, ioas_id=self.id, user_va=vaddr,
                      length=size, iova=iova)
        syscalls.ioctl(self.fd, lib.IOMMU_IOAS_MAP, p, dma=True)

    def _unmap(self, iova: int, size: int) -> int:
        p = argsz.new("struct iommu_ioas_unmap", ioas_id=self.id, iova=iova, length=size)
        syscalls.ioctl(self.fd, lib.IOMMU_IOAS_UNMAP, p)
        return int(p.length)            # the kernel writes back the bytes it unmapped

    def _unmap_everything(self) -> None:
        self._unmap(0, _U64_MAX)

    def copy(self, src: "Ioas", src_iova: int, length: int, dst_iova: Optional[int] = None,
             readable: bool = True, writable: bool = True) -> int:
        """``IOMMU_IOAS_COPY``: map here the pages ``src`` maps at ``src_iova``.

        Returns the IOVA of the copy in this IOAS.
        """
        self._check_open()
        srcmap = src._mappings.get(src_iova)
        alloc = self.allocator
        if dst_iova is None:
            dst_iova = alloc.alloc(length)
        else:
            alloc.reserve(dst_iova, length, device=self.name)
        flags = (lib.IOMMU_IOAS_MAP_FIXED_IOVA
                 | (lib.IOMMU_IOAS_MAP_READABLE if readable else 0)
                 | (lib.IOMMU_IOAS_MAP_WRITEABLE if writable else 0))
        p = argsz.new("struct iommu_ioas_copy", flags=flags, dst_ioas_id=self.id,
                      src_ioas_id=src.id, length=length, dst_iova=dst_iova, src_iova=src_iova)
        try:
            syscalls.ioctl(self.fd, lib.IOMMU_IOAS_COPY, p, dma=True)
        except BaseException:
            alloc.free(dst_iova)
            raise
        self._record(DmaMapping(dst_iova, length, srcmap.vaddr if srcmap else 0, readable,
                                writable, srcmap.buffer if srcmap else None))
        return dst_iova

    def _release(self) -> None:
        """Unmap everything and destroy the IOAS."""
        try:
            if self._mappings and self.iommufd.fd is not None:
                self.unmap_all()
            if self.iommufd.fd is not None:
                self.iommufd.destroy(self.id)
        finally:
            if self in self.iommufd.ioas_list:
                self.iommufd.ioas_list.remove(self)

    def __repr__(self) -> str:
        return f"<Ioas {self.id} of {self.iommufd.path} mappings={len(self._mappings)}>"
