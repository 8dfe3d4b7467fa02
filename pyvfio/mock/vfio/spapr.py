"""The mock's vfio_iommu_spapr_tce: POWER's TCE tables behind a VFIO container.

Semantics follow drivers/vfio/vfio_iommu_spapr_tce.c and the mm_iommu_*
preregistration of arch/powerpc/mm/book3s64/iommu_api.c as of Linux 6.12,
for a PowerNV IODA2 PHB (two DMA windows: the 32-bit default window at 0 and
a dynamic window at 1 << 59; TCE page sizes 4K/64K/2M/1G; up to 5 levels):

- v1 (``VFIO_SPAPR_TCE_IOMMU``): ``VFIO_IOMMU_ENABLE`` accounts the whole
  32-bit window against RLIMIT_MEMLOCK; MAP/UNMAP need it (EPERM); one group
  per container (EBUSY for a second).
- v2 (``VFIO_SPAPR_TCE_v2_IOMMU``): memory is preregistered
  (``VFIO_IOMMU_SPAPR_REGISTER_MEMORY``, accounted there) and MAP_DMA only
  takes preregistered memory (EINVAL otherwise); windows are created and
  removed by the user; several groups may share the container.
- The default window is created lazily at the first MAP/UNMAP/CREATE, its
  table memory accounted then.

The platform (:data:`pyvfio.mock.iommu.SPAPR_PLATFORMS`, ``MockKernel(spapr_platform=...)``) sets what
GET_INFO reports and CREATE accepts.  ``"pseries"`` is what Linux 6.12 says as
a guest of QEMU 10's ``pseries`` machine (measured in the lab's ppc64le guest):
a 1 GiB 32-bit window, TCE page sizes 4K/64K/2M/16M, one level, and no EEH for
emulated devices.
"""
from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple, cast

from pyvfio.core.uapi import lib
from pyvfio.mock.core.uaccess import (PAGE_SHIFT, PAGE_SIZE, ULONG_MAX, Translation, copy_args, copy_from_user,
                    copy_to_user, fail, field_end, user_range_ok)

if TYPE_CHECKING:  # pragma: no cover
    from pyvfio.mock.vfio.subsystem import Group
    from pyvfio.mock.core.family import KernelState as MockKernel

__all__ = ["SpaprTceIommu", "MmIommuRegion", "DDW_BASE", "MAX_TABLES", "MAX_LEVELS", "TCE_PGSIZES"]

MAX_TABLES = 2                  # IOMMU_TABLE_GROUP_MAX_TABLES
MAX_LEVELS = 5                  # POWERNV_IOMMU_MAX_LEVELS
DDW_BASE = 1 << 59              # IODA2 tce_bypass_base: where the second window starts
TCE_PGSIZES = (1 << 12) | (1 << 16) | (1 << 21) | (1 << 30)

DMA_TO_DEVICE = 1               # the device may read
DMA_FROM_DEVICE = 2             # the device may write
DMA_BIDIRECTIONAL = 3


class MmIommuRegion:
    """A preregistered region of the process (mm_iommu_table_group_mem_t)."""

    __slots__ = ("ua", "entries", "used", "mapped", "pageshift")

    def __init__(self, ua: int, entries: int) -> None:
        self.ua = ua
        self.entries = entries
        self.used = 1
        self.mapped = 1             # 1 = registered with no mappings, as in the kernel
        low = ua | (entries << PAGE_SHIFT)
        self.pageshift = min((low & -low).bit_length() - 1 if low else 63, PAGE_SHIFT)

    @property
    def size(self) -> int:
        return self.entries << PAGE_SHIFT

    def contains(self, ua: int, size: int) -> bool:
        return self.ua <= ua and ua + size <= self.ua + self.size


class _Table:
    __slots__ = ("num", "page_shift", "offset", "size", "levels", "entries", "pages")

    def __init__(self, num: int, page_shift: int, bus_offset: int, window_size: int, levels: int) -> None:
        self.num = num
        self.page_shift = page_shift
        self.offset = bus_offset >> page_shift          # first entry (it_offset)
        self.size = window_size >> page_shift           # number of entries (it_size)
        self.levels = levels
        self.entries: Dict[int, Tuple[int, int, Optional[MmIommuRegion]]] = {}
        entry_bytes = max(PAGE_SIZE, ((self.size * 8) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
        self.pages = 2 * (entry_bytes >> PAGE_SHIFT)   # the TCEs and their userspace view

    @property
    def start(self) -> int:
        return self.offset << self.page_shift

    @property
    def window_size(self) -> int:
        return self.size << self.page_shift

    def holds(self, ioba: int) -> bool:
        entry = ioba >> self.page_shift
        return self.offset <= entry < self.offset + self.size


class SpaprTceIommu:
    """One container's sPAPR TCE IOMMU."""

    name = "spapr"

    def __init__(self, kernel: "MockKernel", iommu_type: int) -> None:
        self.kernel = kernel
        self.v2 = iommu_type == lib.VFIO_SPAPR_TCE_v2_IOMMU
        self.groups: List["Group"] = []
        self.enabled = False
        self.locked_pages = 0
        self.tables: List[Optional[_Table]] = [None] * MAX_TABLES
        self.def_window_pending = False
        self.prereg: List[MmIommuRegion] = []
        self.mm_set = False             # tce_iommu_mm_set() has tied the container to the process

    @staticmethod
    def probe_extension(kernel: "MockKernel", arg: int, iommu: Optional["SpaprTceIommu"] = None) -> int:
        if arg in (lib.VFIO_SPAPR_TCE_IOMMU, lib.VFIO_SPAPR_TCE_v2_IOMMU):
            return 1
        if arg == lib.VFIO_EEH:
            return 1 if kernel.iommu.eeh else 0
        return 0

    # -- groups ---------------------------------------------------------------------------

    def attach_group(self, group: "Group") -> None:
        if group.noiommu:
            raise fail(errno.EINVAL)
        if not self.v2 and self.groups:
            raise fail(errno.EBUSY)         # v1 reuses TCE tables and does not share them
        if group in self.groups:
            raise fail(errno.EBUSY)
        if not self.groups and self.tables[0] is None:
            self.def_window_pending = True
        self.groups.append(group)

    def detach_group(self, group: "Group") -> None:
        if group not in self.groups:
            return
        self.groups.remove(group)
        for tbl in self.tables:         # release_ownership clears every window
            if tbl is not None:
                self._clear(tbl, tbl.offset, tbl.size)

    def release(self) -> None:
        for group in list(self.groups):
            self.detach_group(group)
        for i, tbl in enumerate(self.tables):
            if tbl is not None:
                self._free_table(tbl)
                self.tables[i] = None
        for mem in list(self.prereg):
            self._prereg_free(mem)
        self._disable()

    # -- windows ---------------------------------------------------------------------------

    def _find_table(self, ioba: int) -> Optional[_Table]:
        for tbl in self.tables:
            if tbl is not None and tbl.holds(ioba):
                return tbl
        return None

    def _create_window(self, page_shift: int, window_size: int, levels: int) -> int:
        try:
            num = self.tables.index(None)
        except ValueError:
            raise fail(errno.ENOSPC) from None
        platform = self.kernel.iommu.spapr_platform
        if page_shift >= 64 or not platform.pgsizes & (1 << page_shift):
            raise fail(errno.EINVAL)
        if not levels or levels > platform.levels:
            raise fail(errno.EINVAL)
        if (window_size & (window_size - 1) or window_size < (1 << page_shift)
                or window_size > self.kernel.iommu.spapr_max_window):
            raise fail(errno.EINVAL)
        if num == 0 and platform.default_window_needs_no_ddw and any(self.tables[1:]):
            raise fail(errno.EPERM)
        bus_offset = DDW_BASE if num else self.kernel.iommu.spapr_dma32[0]
        tbl = _Table(num, page_shift, bus_offset, window_size, levels)
        self.kernel.process.accounting.charge(tbl.pages, "mm")
        self.tables[num] = tbl
        return tbl.start

    def _free_table(self, tbl: _Table) -> None:
        self._clear(tbl, tbl.offset, tbl.size)
        self.kernel.process.accounting.uncharge(tbl.pages, "mm")

    def _create_default_window(self) -> None:
        if not self.def_window_pending:
            return
        if not self.groups:
            raise fail(errno.ENODEV)
        self._create_window(12, self.kernel.iommu.spapr_dma32[1], 1)
        self.def_window_pending = False

    def _clear(self, tbl: _Table, entry: int, pages: int) -> None:
        for idx in range(entry, entry + pages):
            old = tbl.entries.pop(idx, None)
            if old is not None and old[2] is not None:
                mem = old[2]
                if mem.mapped > 1:
                    mem.mapped -= 1

    # -- enable and preregistration ----------------------------------------------------------

    def _enable(self) -> int:
        if self.enabled:
            raise fail(errno.EBUSY)
        if not self.groups:
            raise fail(errno.ENODEV)
        size = self.kernel.iommu.spapr_dma32[1]
        if not size:
            raise fail(errno.EPERM)
        pages = size >> PAGE_SHIFT
        self.kernel.process.accounting.charge(pages, "mm")
        self.locked_pages = pages
        self.enabled = True
        return 0

    def _disable(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        self.kernel.process.accounting.uncharge(self.locked_pages, "mm")
        self.locked_pages = 0

    def _mm_get(self, ua: int, entries: int) -> Optional[MmIommuRegion]:
        for mem in self.kernel.vfio.spapr_mm:
            if mem.ua == ua and mem.entries == entries:
                mem.used += 1
                return cast("MmIommuRegion | None", mem)
        return None

    def _mm_put(self, mem: MmIommuRegion) -> int:
        if mem.used == 0:
            return -errno.ENOENT
        mem.used -= 1
        if mem.used:
            return 0
        if mem.mapped != 1:
            mem.used += 1
            return -errno.EBUSY
        mem.mapped = 0
        self.kernel.vfio.spapr_mm.remove(mem)
        self.kernel.process.accounting.uncharge(mem.entries, "mm")
        return 0

    def _register(self, vaddr: int, size: int) -> int:
        if vaddr & (PAGE_SIZE - 1) or size & (PAGE_SIZE - 1) or vaddr + size > ULONG_MAX:
            raise fail(errno.EINVAL)
        entries = size >> PAGE_SHIFT
        mem = self._mm_get(vaddr, entries)
        if mem is not None:
            if mem in self.prereg:
                self._mm_put(mem)
                raise fail(errno.EBUSY)
        else:
            self.kernel.process.accounting.charge(entries, "mm")
            if not user_range_ok(vaddr, size, write=True):
                self.kernel.process.accounting.uncharge(entries, "mm")
                raise fail(errno.EFAULT)
            for other in self.kernel.vfio.spapr_mm:
                if other.ua < vaddr + size and vaddr < other.ua + other.size:
                    self.kernel.process.accounting.uncharge(entries, "mm")
                    raise fail(errno.EINVAL)
            mem = MmIommuRegion(vaddr, entries)
            self.kernel.vfio.spapr_mm.insert(0, mem)
        self.prereg.append(mem)
        self.enabled = True
        return 0

    def _prereg_free(self, mem: MmIommuRegion) -> int:
        ret = self._mm_put(mem)
        if ret:
            return ret
        self.prereg.remove(mem)
        return 0

    def _unregister(self, vaddr: int, size: int) -> int:
        if vaddr & (PAGE_SIZE - 1) or size & (PAGE_SIZE - 1):
            raise fail(errno.EINVAL)
        mem = self._mm_get(vaddr, size >> PAGE_SHIFT)
        if mem is None:
            raise fail(errno.ENOENT)
        ret = self._prereg_free(mem) if mem in self.prereg else -errno.ENOENT
        self._mm_put(mem)           # its EBUSY (still mapped) is not reported, as in the kernel
        if ret:
            raise fail(-ret)
        return 0

    # -- map and unmap ---------------------------------------------------------------------

    def _map(self, addr: int) -> int:
        if not self.enabled:
            raise fail(errno.EPERM)
        ctype = "struct vfio_iommu_type1_dma_map"
        m = copy_args(addr, ctype, "size")
        if m.flags & ~(lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE):
            raise fail(errno.EINVAL)
        self._create_default_window()
        tbl = self._find_table(m.iova)
        if tbl is None:
            raise fail(errno.ENXIO)
        pgsize = 1 << tbl.page_shift
        if m.size & (pgsize - 1) or m.vaddr & (pgsize - 1):
            raise fail(errno.EINVAL)
        readable = bool(m.flags & lib.VFIO_DMA_MAP_FLAG_READ)
        writable = bool(m.flags & lib.VFIO_DMA_MAP_FLAG_WRITE)
        if not readable and not writable:
            raise fail(errno.EINVAL)
        direction = (DMA_TO_DEVICE if readable else 0) | (DMA_FROM_DEVICE if writable else 0)
        if m.iova & (pgsize - 1) or not tbl.holds(m.iova):
            return 1                    # iommu_tce_put_param_check() is "a || b": the ioctl returns 1
        npages = m.size >> tbl.page_shift
        first = m.iova >> tbl.page_shift
        if first + npages > tbl.offset + tbl.size:
            raise fail(errno.EINVAL)   # the kernel checks only the first TCE; the mock stops here
        done = 0
        try:
            for i in range(npages):
                ua = m.vaddr + (i << tbl.page_shift)
                mem = None
                if self.v2:
                    mem = next((r for r in self.kernel.vfio.spapr_mm if r.contains(ua, pgsize)), None)
                    if mem is None or tbl.page_shift > mem.pageshift:
                        raise fail(errno.EINVAL)
                else:
                    if not user_range_ok(ua, pgsize, write=writable):
                        raise fail(errno.EFAULT)
                    if tbl.page_shift > PAGE_SHIFT:
                        raise fail(errno.EPERM)     # the TCE page is bigger than the host page
                old = tbl.entries.get(first + i)
                if old is not None and old[2] is not None and old[2].mapped > 1:
                    old[2].mapped -= 1
                if mem is not None:
                    mem.mapped += 1
                tbl.entries[first + i] = (ua, direction, mem)
                done += 1
        except OSError:
            self._clear(tbl, first, done)
            raise
        return 0

    def _unmap(self, addr: int) -> int:
        if not self.enabled:
            raise fail(errno.EPERM)
        ctype = "struct vfio_iommu_type1_dma_unmap"
        u = copy_args(addr, ctype, "size", flags=0)
        self._create_default_window()
        tbl = self._find_table(u.iova)
        if tbl is None:
            raise fail(errno.ENXIO)
        pgsize = 1 << tbl.page_shift
        if u.size & (pgsize - 1):
            raise fail(errno.EINVAL)
        if u.iova & (pgsize - 1):
            return 1                    # iommu_tce_clear_param_check() is "a || b" too
        first = u.iova >> tbl.page_shift
        npages = min(u.size >> tbl.page_shift, tbl.offset + tbl.size - first)
        self._clear(tbl, first, npages)
        return 0

    # -- translation ---------------------------------------------------------------------------

    def translate(self, iova: int, write: bool) -> Translation:
        tbl = self._find_table(iova)
        if tbl is None:
            return Translation(None, PAGE_SIZE - (iova % PAGE_SIZE), "IOVA outside every DMA window")
        pgsize = 1 << tbl.page_shift
        run = pgsize - (iova % pgsize)
        entry = tbl.entries.get(iova >> tbl.page_shift)
        if entry is None:
            return Translation(None, run, "TCE not valid")
        ua, direction, _ = entry
        if write and not direction & DMA_FROM_DEVICE:
            return Translation(None, run, "DMA write through a read-only TCE")
        if not write and not direction & DMA_TO_DEVICE:
            return Translation(None, run, "DMA read through a write-only TCE")
        return Translation(ua + (iova % pgsize), run)

    def mappings(self) -> List[Tuple[int, int, int]]:
        out = []
        for tbl in self.tables:
            if tbl is None:
                continue
            for idx, (ua, _, _) in sorted(tbl.entries.items()):
                out.append((idx << tbl.page_shift, 1 << tbl.page_shift, ua))
        return out

    # -- ioctls -------------------------------------------------------------------------------

    def ioctl(self, cmd: int, addr: int) -> int:
        if cmd == lib.VFIO_CHECK_EXTENSION:
            return self.probe_extension(self.kernel, addr, self)
        if cmd == lib.VFIO_IOMMU_SPAPR_TCE_GET_INFO:
            return self._get_info(addr)
        if cmd == lib.VFIO_IOMMU_MAP_DMA:
            return self._map(addr)
        if cmd == lib.VFIO_IOMMU_UNMAP_DMA:
            return self._unmap(addr)
        if cmd == lib.VFIO_IOMMU_SPAPR_REGISTER_MEMORY and self.v2:
            self.mm_set = True
            r = self._regmem_arg(addr)
            return self._register(r.vaddr, r.size)
        if cmd == lib.VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY and self.v2:
            if not self.mm_set:
                raise fail(errno.EPERM)
            r = self._regmem_arg(addr)
            return self._unregister(r.vaddr, r.size)
        if cmd == lib.VFIO_IOMMU_ENABLE and not self.v2:
            if self.enabled:
                raise fail(errno.EBUSY)
            if self.groups:
                self.mm_set = True
            return self._enable()
        if cmd == lib.VFIO_IOMMU_DISABLE and not self.v2:
            self._disable()
            return 0
        if cmd == lib.VFIO_EEH_PE_OP:
            return self._eeh(addr)
        if cmd == lib.VFIO_IOMMU_SPAPR_TCE_CREATE and self.v2:
            return self._tce_create(addr)
        if cmd == lib.VFIO_IOMMU_SPAPR_TCE_REMOVE and self.v2:
            return self._tce_remove(addr)
        raise fail(errno.ENOTTY)

    def _regmem_arg(self, addr: int):  # type: ignore[no-untyped-def]
        ctype = "struct vfio_iommu_spapr_register_memory"
        r = copy_args(addr, ctype, "size", flags=0)
        return r

    def _get_info(self, addr: int) -> int:
        if not self.groups:
            raise fail(errno.ENXIO)
        ctype = "struct vfio_iommu_spapr_tce_info"
        minsz = field_end(ctype, "dma32_window_size")
        info = copy_args(addr, ctype, "dma32_window_size")
        start, size = self.kernel.iommu.spapr_dma32
        info.dma32_window_start = start
        info.dma32_window_size = size
        info.flags = 0
        info.ddw.pgsizes = 0
        info.ddw.max_dynamic_windows_supported = 0
        info.ddw.levels = 0
        if self.v2:
            info.flags |= lib.VFIO_IOMMU_SPAPR_INFO_DDW
            platform = self.kernel.iommu.spapr_platform
            info.ddw.pgsizes = platform.pgsizes
            info.ddw.max_dynamic_windows_supported = MAX_TABLES
            info.ddw.levels = platform.levels
        ddwsz = field_end(ctype, "ddw")
        copy_to_user(addr, info, ddwsz if info.argsz >= ddwsz else minsz)
        return 0

    def _tce_create(self, addr: int) -> int:
        self.mm_set = True
        if not self.groups:
            raise fail(errno.ENXIO)
        ctype = "struct vfio_iommu_spapr_tce_create"
        minsz = field_end(ctype, "start_addr")
        c = copy_args(addr, ctype, "start_addr", flags=0)
        self._create_default_window()
        c.start_addr = self._create_window(c.page_shift, c.window_size, c.levels)
        copy_to_user(addr, c, minsz)
        return 0

    def _tce_remove(self, addr: int) -> int:
        self.mm_set = True
        if not self.groups:
            raise fail(errno.ENXIO)
        ctype = "struct vfio_iommu_spapr_tce_remove"
        r = copy_args(addr, ctype, "start_addr", flags=0)
        if self.def_window_pending and not r.start_addr:
            self.def_window_pending = False
            return 0
        tbl = self._find_table(r.start_addr)
        if tbl is None:
            raise fail(errno.EINVAL)
        self._free_table(tbl)
        self.tables[tbl.num] = None
        return 0

    def _eeh(self, addr: int) -> int:
        ctype = "struct vfio_eeh_pe_op"
        minsz = field_end(ctype, "op")
        for _ in self.groups:
            op = copy_from_user(addr, ctype, minsz)
            if op.argsz < minsz or op.flags:
                raise fail(errno.EINVAL)
            if op.op == lib.VFIO_EEH_PE_INJECT_ERR:
                if op.argsz < field_end(ctype, "err"):
                    raise fail(errno.EINVAL)
            elif op.op > lib.VFIO_EEH_PE_INJECT_ERR:
                raise fail(errno.EINVAL)
            if op.op == lib.VFIO_EEH_PE_GET_STATE:
                return int(lib.VFIO_EEH_PE_STATE_NORMAL)
        return 0

    def close_summary(self) -> List[str]:
        out = [f"sPAPR TCE iova {iova:#x} size {size:#x} vaddr {ua:#x}" for iova, size, ua in self.mappings()]
        out += [f"sPAPR preregistered memory {m.ua:#x}+{m.size:#x}" for m in self.prereg]
        return out

