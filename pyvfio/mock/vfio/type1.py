"""The mock's vfio_iommu_type1: the container's IOMMU on x86 and most platforms.

Semantics follow drivers/vfio/vfio_iommu_type1.c: page-size alignment, one
mapping per MAP_DMA (no overlap: EEXIST), IOVAs inside the usable ranges
(aperture minus reserved regions, else EINVAL), memlock accounting of every
pinned page (ENOMEM past RLIMIT_MEMLOCK), a limit on the number of mappings
(``dma_entry_limit``: ENOSPC), v1/v2 unmap rules and UNMAP_ALL.
"""
from __future__ import annotations

import bisect
import errno
from typing import TYPE_CHECKING, List, Optional, Tuple

from pyvfio.core.uapi import ffi, lib
from pyvfio.mock.pin import Pin
from pyvfio.mock.core.caps import dma_avail_cap, iova_range_cap, link_caps
from pyvfio.mock.core.uaccess import (PAGE_SIZE, U64_MAX, ULONG_MAX, Translation, copy_args, copy_from_user,
                    copy_to_user, fail, field_end, pages_spanned, user_range_ok, write_user)

if TYPE_CHECKING:  # pragma: no cover
    from pyvfio.mock.vfio.subsystem import Group
    from pyvfio.mock.core.family import KernelState as MockKernel

__all__ = ["Type1Iommu", "DIRTY_BITMAP_SIZE_MAX"]

# DIRTY_BITMAP_BYTES(INT_MAX pages): the bitmap for 2**31-1 pages, in bytes
DIRTY_BITMAP_SIZE_MAX = ((0x7FFFFFFF + 63) // 64 * 64) // 8
PROT_READ = 1
PROT_WRITE = 2


class _Dma:
    __slots__ = ("iova", "size", "vaddr", "prot", "vaddr_invalid", "pin")

    def __init__(self, iova: int, size: int, vaddr: int, prot: int) -> None:
        self.iova, self.size, self.vaddr, self.prot = iova, size, vaddr, prot
        self.vaddr_invalid = False
        self.pin = Pin(vaddr, size)             # DMA reaches these pages until unmapped

    @property
    def end(self) -> int:
        return self.iova + self.size


class Type1Iommu:
    """One container's type1 IOMMU (``VFIO_TYPE1_IOMMU`` or ``VFIO_TYPE1v2_IOMMU``)."""

    name = "type1"

    def __init__(self, kernel: "MockKernel", iommu_type: int) -> None:
        self.kernel = kernel
        self.v2 = iommu_type != lib.VFIO_TYPE1_IOMMU
        self.groups: List["Group"] = []
        self.dmas: List[_Dma] = []          # sorted by iova
        self.dma_avail = kernel.vfio.dma_entry_limit
        self.dirty_tracking = False

    # -- probing (driver->ops->ioctl(NULL, VFIO_CHECK_EXTENSION, arg)) --------------------------

    @staticmethod
    def probe_extension(kernel: "MockKernel", arg: int, iommu: Optional["Type1Iommu"] = None) -> int:
        if arg in (lib.VFIO_TYPE1_IOMMU, lib.VFIO_TYPE1v2_IOMMU, lib.VFIO_TYPE1_NESTING_IOMMU,
                   lib.VFIO_UNMAP_ALL):
            return 1
        if arg == lib.VFIO_UPDATE_VADDR:
            return 1 if iommu is not None else 0
        if arg == lib.VFIO_DMA_CC_IOMMU:
            return 1 if iommu is not None and kernel.iommu.cache_coherent else 0
        return 0

    # -- groups --------------------------------------------------------------------------

    def attach_group(self, group: "Group") -> None:
        if group in self.groups:
            raise fail(errno.EINVAL)
        if group.noiommu:
            raise fail(errno.EINVAL)
        # a new domain's aperture and reserved regions must not cut existing mappings
        ranges = self.kernel.iommu.iova_ranges()
        for dma in self.dmas:
            if not any(lo <= dma.iova and dma.end - 1 <= hi for lo, hi in ranges):
                raise fail(errno.EINVAL)
        self.groups.append(group)

    def detach_group(self, group: "Group") -> None:
        if group in self.groups:
            self.groups.remove(group)
        if not self.groups:
            self._unmap_all()

    def release(self) -> None:
        self.groups = []
        self._unmap_all()

    def _unmap_all(self) -> None:
        for dma in self.dmas:
            self._unaccount(dma)
        self.dmas = []
        self.dma_avail = self.kernel.vfio.dma_entry_limit

    # -- state ----------------------------------------------------------------------------

    @property
    def pgsize_bitmap(self) -> int:
        bitmap = self.kernel.iommu.iova_pgsizes
        if bitmap & (PAGE_SIZE - 1):
            bitmap = (bitmap & ~(PAGE_SIZE - 1)) | PAGE_SIZE
        return int(bitmap)

    @property
    def min_pgsize(self) -> int:
        b = self.pgsize_bitmap
        return b & -b

    def iova_ranges(self) -> List[Tuple[int, int]]:
        return self.kernel.iommu.iova_ranges() if self.groups else []

    def mappings(self) -> List[Tuple[int, int, int]]:
        """(iova, size, vaddr) of every mapping."""
        return [(d.iova, d.size, d.vaddr) for d in self.dmas]

    def _find(self, start: int, size: int) -> Optional[_Dma]:
        """vfio_find_dma: a mapping overlapping [start, start+size) (size 0: containing start)."""
        for dma in self.dmas:
            if start + size <= dma.iova or start >= dma.end:
                continue
            return dma
        return None

    def _account(self, dma: _Dma) -> None:
        self.kernel.process.accounting.charge(pages_spanned(dma.vaddr, dma.size), "mm")

    def _unaccount(self, dma: _Dma) -> None:
        dma.pin.release()
        self.kernel.process.accounting.uncharge(pages_spanned(dma.vaddr, dma.size), "mm")

    # -- DMA translation ----------------------------------------------------------------------

    def translate(self, iova: int, write: bool) -> Translation:
        starts = [d.iova for d in self.dmas]
        i = bisect.bisect_right(starts, iova) - 1
        if i >= 0 and self.dmas[i].iova <= iova < self.dmas[i].end:
            dma = self.dmas[i]
            run = dma.end - iova
            if write and not dma.prot & PROT_WRITE:
                return Translation(None, run, "DMA write to a mapping without write permission")
            if not write and not dma.prot & PROT_READ:
                return Translation(None, run, "DMA read from a mapping without read permission")
            if dma.vaddr_invalid:
                return Translation(None, run, "vaddr invalidated (VFIO_DMA_UNMAP_FLAG_VADDR)")
            return Translation(dma.pin.address(dma.vaddr + (iova - dma.iova)), run)
        nxt = self.dmas[i + 1].iova if i + 1 < len(self.dmas) else None
        run = (nxt - iova) if nxt is not None else (self.min_pgsize - (iova % self.min_pgsize))
        return Translation(None, max(1, run), "IOVA not mapped")

    # -- ioctls ---------------------------------------------------------------------------

    def ioctl(self, cmd: int, addr: int) -> int:
        if cmd == lib.VFIO_CHECK_EXTENSION:
            return self.probe_extension(self.kernel, addr, self)
        if cmd == lib.VFIO_IOMMU_GET_INFO:
            return self._get_info(addr)
        if cmd == lib.VFIO_IOMMU_MAP_DMA:
            return self._map(addr)
        if cmd == lib.VFIO_IOMMU_UNMAP_DMA:
            return self._unmap(addr)
        if cmd == lib.VFIO_IOMMU_DIRTY_PAGES:
            return self._dirty_pages(addr)
        raise fail(errno.ENOTTY)

    def _caps(self) -> bytes:
        chain = []
        mig = ffi.new("struct vfio_iommu_type1_info_cap_migration *")
        mig.header.id = lib.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION
        mig.header.version = 1
        mig.flags = 0
        mig.pgsize_bitmap = self.min_pgsize
        mig.max_dirty_bitmap_size = DIRTY_BITMAP_SIZE_MAX
        chain.append(bytes(ffi.buffer(mig)))
        chain.append(dma_avail_cap(self.dma_avail))
        ranges = self.iova_ranges()
        if ranges:
            chain.append(iova_range_cap(ranges))
        return link_caps(chain, ffi.sizeof("struct vfio_iommu_type1_info"))

    def _get_info(self, addr: int) -> int:
        ctype = "struct vfio_iommu_type1_info"
        info = copy_args(addr, ctype, "iova_pgsizes")
        size = min(info.argsz, ffi.sizeof(ctype))
        info.flags = lib.VFIO_IOMMU_INFO_PGSIZES
        info.iova_pgsizes = self.pgsize_bitmap
        info.cap_offset = 0
        info.pad = 0
        caps = self._caps()
        if caps:
            info.flags |= lib.VFIO_IOMMU_INFO_CAPS
            need = ffi.sizeof(ctype) + len(caps)
            if info.argsz < need:
                info.argsz = need
            else:
                write_user(addr + ffi.sizeof(ctype), caps)
                info.cap_offset = ffi.sizeof(ctype)
        copy_to_user(addr, info, size)
        return 0

    def _map(self, addr: int) -> int:
        ctype = "struct vfio_iommu_type1_dma_map"
        minsz = field_end(ctype, "size")
        m = copy_from_user(addr, ctype, minsz)
        mask = lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE | lib.VFIO_DMA_MAP_FLAG_VADDR
        if m.argsz < minsz or m.flags & ~mask:
            raise fail(errno.EINVAL)
        set_vaddr = bool(m.flags & lib.VFIO_DMA_MAP_FLAG_VADDR)
        prot = (PROT_WRITE if m.flags & lib.VFIO_DMA_MAP_FLAG_WRITE else 0) | \
               (PROT_READ if m.flags & lib.VFIO_DMA_MAP_FLAG_READ else 0)
        if (prot and set_vaddr) or (not prot and not set_vaddr):
            raise fail(errno.EINVAL)
        iova, vaddr, size = m.iova, m.vaddr, m.size
        pgsize = self.min_pgsize
        if not size or (size | iova | vaddr) & (pgsize - 1):
            raise fail(errno.EINVAL)
        if iova + size - 1 > U64_MAX or vaddr + size - 1 > ULONG_MAX:
            raise fail(errno.EINVAL)
        dma = self._find(iova, size)
        if set_vaddr:
            if dma is None:
                raise fail(errno.ENOENT)
            if not dma.vaddr_invalid or dma.iova != iova or dma.size != size:
                raise fail(errno.EINVAL)
            dma.vaddr = vaddr
            dma.vaddr_invalid = False
            dma.pin.release()
            dma.pin = Pin(vaddr, size)
            return 0
        if dma is not None:
            raise fail(errno.EEXIST)
        if not self.dma_avail:
            raise fail(errno.ENOSPC)
        ranges = self.iova_ranges()
        if ranges and not any(lo <= iova and iova + size - 1 <= hi for lo, hi in ranges):
            raise fail(errno.EINVAL)
        # pin: the pages must exist (and be writable when the device may write)
        if not user_range_ok(vaddr, size, write=bool(prot & PROT_WRITE)):
            raise fail(errno.EFAULT)
        new = _Dma(iova, size, vaddr, prot)
        self._account(new)
        self.dma_avail -= 1
        self._insert(new)
        return 0

    def _insert(self, dma: _Dma) -> None:
        starts = [d.iova for d in self.dmas]
        self.dmas.insert(bisect.bisect_left(starts, dma.iova), dma)

    def _remove(self, dma: _Dma) -> None:
        self.dmas.remove(dma)
        self._unaccount(dma)
        self.dma_avail += 1

    def _unmap(self, addr: int) -> int:
        ctype = "struct vfio_iommu_type1_dma_unmap"
        minsz = field_end(ctype, "size")
        u = copy_from_user(addr, ctype, minsz)
        mask = (lib.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP | lib.VFIO_DMA_UNMAP_FLAG_VADDR
                | lib.VFIO_DMA_UNMAP_FLAG_ALL)
        if u.argsz < minsz or u.flags & ~mask:
            raise fail(errno.EINVAL)
        if (u.flags & lib.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP
                and u.flags & (lib.VFIO_DMA_UNMAP_FLAG_ALL | lib.VFIO_DMA_UNMAP_FLAG_VADDR)):
            raise fail(errno.EINVAL)
        if u.flags & lib.VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP and not self.dirty_tracking:
            raise fail(errno.EINVAL)
        unmap_all = bool(u.flags & lib.VFIO_DMA_UNMAP_FLAG_ALL)
        invalidate = bool(u.flags & lib.VFIO_DMA_UNMAP_FLAG_VADDR)
        iova, size = u.iova, u.size
        pgsize = self.min_pgsize
        if iova & (pgsize - 1):
            raise fail(errno.EINVAL)
        if unmap_all:
            if iova or size:
                raise fail(errno.EINVAL)
            size = U64_MAX
        elif not size or size & (pgsize - 1) or iova + size - 1 > U64_MAX:
            raise fail(errno.EINVAL)
        last = min(iova + size - 1, U64_MAX)
        if self.v2 and not unmap_all:
            dma = self._find(iova, 1)
            if dma is not None and dma.iova != iova:
                raise fail(errno.EINVAL)
            dma = self._find(last, 0)
            if dma is not None and dma.end != iova + size:
                raise fail(errno.EINVAL)
        unmapped = 0
        victims = [d for d in self.dmas if d.end > iova and d.iova <= last]
        if invalidate:
            for d in victims:
                if d.vaddr_invalid:
                    raise fail(errno.EINVAL)
        for d in victims:
            if not self.v2 and iova > d.iova:
                break
            unmapped += d.size
            if invalidate:
                d.vaddr_invalid = True
            else:
                self._remove(d)
        u.size = unmapped
        copy_to_user(addr, u, minsz)
        return 0

    def _dirty_pages(self, addr: int) -> int:
        ctype = "struct vfio_iommu_type1_dirty_bitmap"
        minsz = field_end(ctype, "flags")
        d = copy_from_user(addr, ctype, minsz)
        mask = (lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_START | lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP
                | lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP)
        if d.argsz < minsz or d.flags & ~mask:
            raise fail(errno.EINVAL)
        flags = d.flags
        if not flags or flags & (flags - 1):
            raise fail(errno.EINVAL)
        if flags & lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_START:
            self.dirty_tracking = True
            return 0
        if flags & lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP:
            self.dirty_tracking = False
            return 0
        gctype = "struct vfio_iommu_type1_dirty_bitmap_get"
        if d.argsz < minsz + ffi.sizeof(gctype):
            raise fail(errno.EINVAL)
        get = copy_from_user(addr + minsz, gctype)
        pgsize = self.min_pgsize
        if not get.size or get.iova + get.size - 1 < get.iova:
            raise fail(errno.EINVAL)
        if get.bitmap.pgsize != pgsize or (get.iova | get.size) & (pgsize - 1):
            raise fail(errno.EINVAL)
        npages = get.size // get.bitmap.pgsize
        nbytes = ((npages + 63) // 64) * 8
        if nbytes > DIRTY_BITMAP_SIZE_MAX or get.bitmap.size < nbytes:
            raise fail(errno.EINVAL)
        if not self.dirty_tracking:
            raise fail(errno.EINVAL)
        # the range must cover whole mappings
        for dma in self.dmas:
            if dma.iova < get.iova < dma.end or dma.iova < get.iova + get.size < dma.end:
                raise fail(errno.EINVAL)
        bits = bytearray(nbytes)
        for dma in self.dmas:     # without device dirty tracking every pinned page is dirty
            lo = max(dma.iova, get.iova)
            hi = min(dma.end, get.iova + get.size)
            for page in range((lo - get.iova) // pgsize, (hi - get.iova) // pgsize):
                bits[page // 8] |= 1 << (page % 8)
        write_user(get.bitmap.data, bytes(bits))
        return 0

    def close_summary(self) -> List[str]:
        return [f"type1 mapping iova {d.iova:#x} size {d.size:#x} vaddr {d.vaddr:#x}" for d in self.dmas]
