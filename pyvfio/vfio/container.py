"""The legacy VFIO container: ``/dev/vfio/vfio`` and the IOMMU driver behind it.

Groups are attached to a container; the first ``VFIO_SET_IOMMU`` picks the
IOMMU model for all of them:

- **type1 / type1v2** (x86, ARM, …): map any process memory at any IOVA the
  IOMMU reports usable (``VFIO_IOMMU_GET_INFO`` capabilities);
- **sPAPR TCE v1/v2** (POWER): DMA goes through windows: the default 32-bit
  window, plus dynamic windows made with ``VFIO_IOMMU_SPAPR_TCE_CREATE``;
  v1 needs ``VFIO_IOMMU_ENABLE``, v2 needs memory preregistered with
  ``VFIO_IOMMU_SPAPR_REGISTER_MEMORY``;
- **noiommu**: no translation at all; the device sees physical addresses.
  Unsafe, so only with an explicit ``allow_noiommu=True``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from pyvfio import errors
from pyvfio.core import argsz
from pyvfio.core import syscalls
from pyvfio.core.sysfs import host
from pyvfio.core.space import IoAddressSpace
from pyvfio.core.uapi import lib

__all__ = ["Container", "Type1Info", "SpaprInfo", "IOMMU_TYPES"]

#: IOMMU models by name, in the order auto-selection tries them
IOMMU_TYPES: Dict[str, int] = {
    "type1v2": lib.VFIO_TYPE1v2_IOMMU,
    "type1": lib.VFIO_TYPE1_IOMMU,
    "spapr_v2": lib.VFIO_SPAPR_TCE_v2_IOMMU,
    "spapr": lib.VFIO_SPAPR_TCE_IOMMU,
    "noiommu": lib.VFIO_NOIOMMU_IOMMU,
}
_NAMES = {v: k for k, v in IOMMU_TYPES.items()}


class Type1Info(NamedTuple):
    """What ``VFIO_IOMMU_GET_INFO`` says of a type1 IOMMU."""
    flags: int
    pgsizes: int
    iova_ranges: List[Tuple[int, int]]
    dma_avail: Optional[int]
    migration: Optional[Dict[str, Any]]


class SpaprInfo(NamedTuple):
    """What ``VFIO_IOMMU_SPAPR_TCE_GET_INFO`` says of a sPAPR TCE IOMMU."""
    flags: int
    dma32_window_start: int
    dma32_window_size: int
    pgsizes: int
    max_dynamic_windows: int
    levels: int


def _pgsize_text(size: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift and not size & ((1 << shift) - 1):
            return f"{size >> shift}{unit}"
    return str(size)


class Container(IoAddressSpace):
    """A VFIO container: groups share it, and with it one I/O address space."""

    def __init__(self) -> None:
        super().__init__()
        self.path = host().dev_path("vfio", "vfio")
        self.name = self.path
        self.fd = syscalls.open(self.path, os.O_RDWR)
        self.groups: List[Any] = []
        self.iommu_type: Optional[int] = None
        self._windows: Dict[int, Tuple[int, int]] = {}     # sPAPR: start -> (size, page_shift)
        self._registered: Dict[int, int] = {}             # sPAPR v2: vaddr -> size
        self._enabled = False
        self._dma_avail: Optional[int] = None
        try:
            version = syscalls.ioctl(self.fd, lib.VFIO_GET_API_VERSION)
            if version != lib.VFIO_API_VERSION:
                raise errors.NotSupportedError(
                    f"VFIO API version {version}, expected {lib.VFIO_API_VERSION}", path=self.path)
        except BaseException:
            self._close_fd()
            self._closed = True
            raise

    # -- extensions and IOMMU model ------------------------------------------
    def check_extension(self, extension: int) -> int:
        """``VFIO_CHECK_EXTENSION``: nonzero when the container supports ``extension``."""
        self._check_open()
        return syscalls.ioctl(self.fd, lib.VFIO_CHECK_EXTENSION, extension)

    def supported_iommu_types(self) -> List[str]:
        """The IOMMU models this kernel offers to this container."""
        return [n for n, t in IOMMU_TYPES.items() if self.check_extension(t)]

    @property
    def iommu_name(self) -> Optional[str]:
        return _NAMES.get(self.iommu_type) if self.iommu_type is not None else None

    def set_iommu(self, iommu: Optional[str] = None, *, allow_noiommu: bool = False) -> str:
        """``VFIO_SET_IOMMU``: pick the IOMMU model (the best offered when ``None``).

        Needs at least one group attached.  Returns the model's name.
        """
        self._check_open()
        if not self.groups:
            raise errors.InvalidArgumentError(
                "set_iommu needs a group in the container", path=self.path,
                remedy="attach a group first: Group(...).set_container(container)")
        if iommu is None:
            offered = [n for n in self.supported_iommu_types()
                       if n != "noiommu" or allow_noiommu]
            if not offered:
                if self.check_extension(lib.VFIO_NOIOMMU_IOMMU):
                    raise errors.PermissionDeniedError(
                        "only the unsafe no-IOMMU mode is available", path=self.path,
                        remedy="pass allow_noiommu=True if DMA isolation is not needed")
                raise errors.NotSupportedError("the kernel offers no IOMMU model", path=self.path)
            iommu = offered[0]
        if iommu not in IOMMU_TYPES:
            raise errors.InvalidArgumentError(f"unknown IOMMU model {iommu!r}",
                                              remedy=f"one of {', '.join(IOMMU_TYPES)}")
        if iommu == "noiommu" and not allow_noiommu:
            raise errors.PermissionDeniedError(
                "no-IOMMU mode gives the device access to all memory", path=self.path,
                remedy="pass allow_noiommu=True to accept that")
        syscalls.ioctl(self.fd, lib.VFIO_SET_IOMMU, IOMMU_TYPES[iommu])
        self.iommu_type = IOMMU_TYPES[iommu]
        if iommu.startswith("spapr"):
            info = self.spapr_info()
            self._windows[info.dma32_window_start] = (info.dma32_window_size, 12)
        self._allocator = None
        return iommu

    def _need(self, *names: str) -> None:
        self._check_open()
        if self.iommu_name not in names:
            raise errors.NotSupportedError(
                f"needs the {' or '.join(names)} IOMMU, the container has "
                f"{self.iommu_name or 'none set'}", path=self.path)

    # -- type1 ----------------------------------------------------------------
    def info(self) -> Type1Info:
        """``VFIO_IOMMU_GET_INFO`` with its capabilities decoded (type1)."""
        self._need("type1", "type1v2")
        info = argsz.get_info(self.fd, lib.VFIO_IOMMU_GET_INFO, "struct vfio_iommu_type1_info")
        ranges: List[Tuple[int, int]] = []
        avail = migration = None
        if info.flags & lib.VFIO_IOMMU_INFO_CAPS:
            for cap in argsz.caps(info, info.cap_offset, argsz.IOMMU_TYPE1_CAPS):
                if cap.id == lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
                    ranges = [(cap.data.iova_ranges[i].start, cap.data.iova_ranges[i].end)
                              for i in range(cap.data.nr_iovas)]
                elif cap.id == lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
                    avail = cap.data.avail
                elif cap.id == lib.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION:
                    migration = {"flags": cap.data.flags, "pgsize_bitmap": cap.data.pgsize_bitmap,
                                 "max_dirty_bitmap_size": cap.data.max_dirty_bitmap_size}
        if not ranges:      # kernels without the capability: the whole 64-bit space
            ranges = [(0, (1 << 64) - 1)]
        return Type1Info(info.flags, info.iova_pgsizes, ranges, avail, migration)

    # -- sPAPR TCE --------------------------------------------------------------
    def spapr_info(self) -> SpaprInfo:
        """``VFIO_IOMMU_SPAPR_TCE_GET_INFO``: the default window and DDW limits."""
        self._need("spapr", "spapr_v2")
        p = argsz.new("struct vfio_iommu_spapr_tce_info")
        syscalls.ioctl(self.fd, lib.VFIO_IOMMU_SPAPR_TCE_GET_INFO, p)
        return SpaprInfo(p.flags, p.dma32_window_start, p.dma32_window_size, p.ddw.pgsizes,
                         p.ddw.max_dynamic_windows_supported, p.ddw.levels)

    def enable(self) -> None:
        """``VFIO_IOMMU_ENABLE`` (sPAPR v1): account the window's memory and allow DMA."""
        self._need("spapr", "spapr_v2")
        syscalls.ioctl(self.fd, lib.VFIO_IOMMU_ENABLE, None, dma=True)
        self._enabled = True

    def disable(self) -> None:
        """``VFIO_IOMMU_DISABLE`` (sPAPR v1)."""
        self._need("spapr", "spapr_v2")
        syscalls.ioctl(self.fd, lib.VFIO_IOMMU_DISABLE, None)
        self._enabled = False

    def register_memory(self, vaddr: int, size: int) -> None:
        """``VFIO_IOMMU_SPAPR_REGISTER_MEMORY`` (v2): pin and account memory for later maps."""
        self._need("spapr_v2")
        p = argsz.new("struct vfio_iommu_spapr_register_memory", vaddr=vaddr, size=size)
        syscalls.ioctl(self.fd, lib.VFIO_IOMMU_SPAPR_REGISTER_MEMORY, p, dma=True)
        self._registered[vaddr] = size

    def unregister_memory(self, vaddr: int, size: int) -> None:
        """``VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY`` (v2)."""
        self._need("spapr_v2")
        p = argsz.new("struct vfio_iommu_spapr_register_memory", vaddr=vaddr, size=size)
        syscalls.ioctl(self.fd, lib.VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY, p)
        self._registered.pop(vaddr, None)

    def create_window(self, window_size: int, page_shift: int = 12, levels: int = 1) -> int:
        """``VFIO_IOMMU_SPAPR_TCE_CREATE``: a dynamic DMA window; returns its start IOVA.

        The platform's limits (GET_INFO: TCE page sizes, levels, number of
        windows) are checked first, so that a refusal names the rule.  A TCE
        page larger than the kernel's page needs memory backed by pages at
        least that large (hugetlbfs) for the maps into that window.
        """
        self._need("spapr_v2", "spapr")
        info = self.spapr_info()
        if info.flags & lib.VFIO_IOMMU_SPAPR_INFO_DDW:
            sizes = ", ".join(_pgsize_text(1 << b) for b in range(64) if info.pgsizes >> b & 1)
            if not 0 <= page_shift < 64 or not info.pgsizes >> page_shift & 1:
                raise errors.InvalidArgumentError(
                    f"a TCE page of 2**{page_shift} bytes is not offered by this platform",
                    path=self.path, remedy=f"use one of its TCE page sizes: {sizes}")
            if not 1 <= levels <= info.levels:
                raise errors.InvalidArgumentError(
                    f"{levels} TCE table levels asked, the platform allows 1 to {info.levels}",
                    path=self.path, remedy=f"pass levels between 1 and {info.levels}")
        p = argsz.new("struct vfio_iommu_spapr_tce_create", page_shift=page_shift,
                      window_size=window_size, levels=levels)
        try:
            syscalls.ioctl(self.fd, lib.VFIO_IOMMU_SPAPR_TCE_CREATE, p, dma=True)
        except errors.PyvfioError as exc:
            if exc.errno != 28:           # ENOSPC: every window of the table group is in use
                raise
            limit = (info.max_dynamic_windows or 1)
            raise errors.BusyError(
                f"the platform allows {limit} DMA windows per container and all are in use "
                f"(windows at {', '.join(f'{s:#x}' for s, _ in self.windows)})",
                errno=28, op="VFIO_IOMMU_SPAPR_TCE_CREATE", path=self.path,
                remedy="remove one first with remove_window(start)") from exc
        self._windows[p.start_addr] = (window_size, page_shift)
        self._allocator = None
        return int(p.start_addr)

    def remove_window(self, start: int) -> None:
        """``VFIO_IOMMU_SPAPR_TCE_REMOVE``: remove the window starting at ``start``."""
        self._need("spapr_v2", "spapr")
        p = argsz.new("struct vfio_iommu_spapr_tce_remove", start_addr=start)
        syscalls.ioctl(self.fd, lib.VFIO_IOMMU_SPAPR_TCE_REMOVE, p)
        self._windows.pop(start, None)
        self._allocator = None

    @property
    def windows(self) -> List[Tuple[int, int]]:
        """sPAPR DMA windows as (start, size)."""
        return sorted((s, sz) for s, (sz, _) in self._windows.items())

    # -- IoAddressSpace hooks -----------------------------------------------------
    def _ranges(self) -> List[Tuple[int, int]]:
        name = self.iommu_name
        if name in ("type1", "type1v2"):
            info = self.info()
            self._dma_avail = info.dma_avail
            return info.iova_ranges
        if name in ("spapr", "spapr_v2"):
            return [(s, s + sz - 1) for s, (sz, _) in sorted(self._windows.items())]
        if name == "noiommu":
            raise errors.NotSupportedError(
                "a no-IOMMU container has no I/O address space", path=self.path,
                remedy="use physical addresses (DmaBuffer.physical_address()) for DMA")
        raise errors.InvalidArgumentError("no IOMMU model set", path=self.path,
                                          remedy="call set_iommu() after attaching a group")

    def _map(self, vaddr: int, iova: int, size: int, readable: bool, writable: bool) -> None:
        name = self.iommu_name
        if name not in ("type1", "type1v2", "spapr", "spapr_v2"):
            self._need("type1", "type1v2", "spapr", "spapr_v2")
        if self._dma_avail is not None and len(self._mappings) >= self._dma_avail:
            raise errors.BusyError(
                f"the IOMMU allows {self._dma_avail} more mappings (DMA_AVAIL) and all are used",
                errno=28, path=self.path,
                remedy="use fewer, larger buffers, or raise vfio_iommu_type1's dma_entry_limit")
        if name == "spapr_v2" and not self._is_registered(vaddr, size):
            self.register_memory(vaddr, size)
        if name == "spapr" and not self._enabled:
            self.enable()
        flags = ((lib.VFIO_DMA_MAP_FLAG_READ if readable else 0)
                 | (lib.VFIO_DMA_MAP_FLAG_WRITE if writable else 0))
        p = argsz.new("struct vfio_iommu_type1_dma_map", flags=flags, vaddr=vaddr,
                      iova=iova, size=size)
        syscalls.ioctl(self.fd, lib.VFIO_IOMMU_MAP_DMA, p, dma=True)

    def _is_registered(self, vaddr: int, size: int) -> bool:
        return any(v <= vaddr and vaddr + size <= v + s for v, s in self._registered.items())

    def _unmap(self, iova: int, size: int) -> int:
        p = argsz.new("struct vfio_iommu_type1_dma_unmap", iova=iova, size=size)
        syscalls.ioctl(self.fd, lib.VFIO_IOMMU_UNMAP_DMA, p)
        return int(p.size)              # the kernel writes back the bytes it unmapped

    def _unmap_everything(self) -> None:
        if self.iommu_name in ("type1", "type1v2") and self.check_extension(lib.VFIO_UNMAP_ALL):
            p = argsz.new("struct vfio_iommu_type1_dma_unmap", flags=lib.VFIO_DMA_UNMAP_FLAG_ALL)
            syscalls.ioctl(self.fd, lib.VFIO_IOMMU_UNMAP_DMA, p)
        else:
            super()._unmap_everything()

    def _iommu_released(self) -> None:
        """The last group left: the kernel dropped the IOMMU driver with every mapping,
        window and registration (each container ioctl now gets EINVAL until a group
        is attached and ``set_iommu`` is called again)."""
        for m in list(self._mappings.values()):
            self._forget(m)
        if self._allocator is not None:
            self._allocator.clear()
        self._allocator = None
        self._registered.clear()
        self._windows.clear()
        self._enabled = False
        self.iommu_type = None

    # -- lifetime ------------------------------------------------------------------
    def _close_fd(self) -> None:
        if getattr(self, "fd", None) is not None:
            syscalls.close(self.fd)
            self.fd = None  # type: ignore[assignment]  # closed: no fd

    def release_dma(self) -> None:
        """Unmap everything and unregister sPAPR memory (needs the IOMMU: a group attached)."""
        if self._mappings:
            self.unmap_all()
        for vaddr, size in list(self._registered.items()):
            self.unregister_memory(vaddr, size)

    def _release(self) -> None:
        """Unmap everything, unregister sPAPR memory, detach groups, close the container."""
        try:
            self.release_dma()
        finally:
            for g in list(self.groups):
                g.unset_container()
            self._close_fd()

    def __repr__(self) -> str:
        return (f"<Container {self.path} iommu={self.iommu_name} groups={len(self.groups)} "
                f"mappings={len(self._mappings)}{' closed' if self._closed else ''}>")
