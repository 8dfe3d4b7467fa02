"""The mock's iommufd (``/dev/iommu``): IOAS, HW pagetables and bound devices.

Semantics follow drivers/iommu/iommufd/ (Linux 6.12): object ids are the
lowest free ids from 1; an IOAS maps user memory at fixed or kernel-chosen
IOVAs; pages are pinned (and accounted against RLIMIT_MEMLOCK) only while
the IOAS has an iommu domain, i.e. a device attached; attaching a device
reserves its MSI window and the IOVAs beyond the aperture; errors use
iommufd's errnos (EOPNOTSUPP for unknown flags, EOVERFLOW, EMSGSIZE,
ENOENT for an unmap that would split an area, EADDRINUSE ...).
"""
from __future__ import annotations

import bisect
import dataclasses
import errno
import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple

from pyvfio.core.uapi import ffi, lib
from pyvfio.mock.pin import Pin
from pyvfio.mock.core.family import Family, MockFile, register
from pyvfio.mock.core.caps import dma_avail_cap, iova_range_cap
from pyvfio.mock.core.uaccess import (PAGE_SHIFT, PAGE_SIZE, U32_MAX, U64_MAX, ULONG_MAX, Translation, copy_args,
                    copy_from_user, copy_to_user, fail, field_end, user_range_ok, write_user)

if TYPE_CHECKING:  # pragma: no cover
    from pyvfio.mock.core.family import KernelState as MockKernel
    from pyvfio.mock.vfio.pci import VfioPciDevice

__all__ = ["Iommufd", "IommuFile", "IommufdCtx", "Ioas", "HwPagetable", "IommufdDevice"]

PROT_READ = 1
PROT_WRITE = 2
HPAGE_SIZE = 2 << 20
#: what QEMU's emulated VT-d reports (flags, cap_reg, ecap_reg) to IOMMU_GET_HW_INFO
QEMU_VTD_INFO = (0x1, 0xD2008C222F0686, 0xF00F4A)

# ioctl → (struct, last member of the minimum size)
_OPS = {
    "IOMMU_DESTROY": ("struct iommu_destroy", "id"),
    "IOMMU_IOAS_ALLOC": ("struct iommu_ioas_alloc", "out_ioas_id"),
    "IOMMU_IOAS_ALLOW_IOVAS": ("struct iommu_ioas_allow_iovas", "allowed_iovas"),
    "IOMMU_IOAS_COPY": ("struct iommu_ioas_copy", "src_iova"),
    "IOMMU_IOAS_IOVA_RANGES": ("struct iommu_ioas_iova_ranges", "out_iova_alignment"),
    "IOMMU_IOAS_MAP": ("struct iommu_ioas_map", "iova"),
    "IOMMU_IOAS_UNMAP": ("struct iommu_ioas_unmap", "length"),
    "IOMMU_OPTION": ("struct iommu_option", "val64"),
    "IOMMU_VFIO_IOAS": ("struct iommu_vfio_ioas", "__reserved"),
    "IOMMU_HWPT_ALLOC": ("struct iommu_hwpt_alloc", "__reserved"),
    "IOMMU_GET_HW_INFO": ("struct iommu_hw_info", "__reserved"),
    "IOMMU_HWPT_SET_DIRTY_TRACKING": ("struct iommu_hwpt_set_dirty_tracking", "__reserved"),
    "IOMMU_HWPT_GET_DIRTY_BITMAP": ("struct iommu_hwpt_get_dirty_bitmap", "data"),
    "IOMMU_HWPT_INVALIDATE": ("struct iommu_hwpt_invalidate", "__reserved"),
    "IOMMU_FAULT_QUEUE_ALLOC": ("struct iommu_fault_alloc", "out_fault_fd"),
}


class _Object:
    kind = "object"

    def __init__(self, ctx: "IommufdCtx") -> None:
        self.ctx = ctx
        self.id = 0


class Pages:
    """Pinned user memory shared by areas (iopt_pages); accounted per pinned page."""

    def __init__(self, ctx: "IommufdCtx", uva: int, length: int, writable: bool) -> None:
        self.kernel = ctx.kernel
        self.base = uva & ~(PAGE_SIZE - 1)
        self.npages = (length + (uva - self.base) + PAGE_SIZE - 1) // PAGE_SIZE
        self.writable = writable
        self.account = ctx.account_mode
        self.pins: Dict[int, int] = {}      # page index → number of domain-filled areas using it
        # the pages as they are now: DMA keeps reaching them if the process unmaps them
        self.pin_alias = Pin(self.base, self.npages << PAGE_SHIFT)

    def pin(self, first: int, last: int) -> None:
        """Pin pages [first, last] for one more filled area; ENOMEM/EFAULT leave nothing pinned."""
        new = [p for p in range(first, last + 1) if not self.pins.get(p)]
        if new:
            if not user_range_ok(self.base + (first << PAGE_SHIFT), (last - first + 1) << PAGE_SHIFT,
                                 write=self.writable):
                raise fail(errno.EFAULT)
            self.kernel.process.accounting.charge(len(new), self.account)
        for p in range(first, last + 1):
            self.pins[p] = self.pins.get(p, 0) + 1

    def unpin(self, first: int, last: int) -> None:
        freed = 0
        for p in range(first, last + 1):
            n = self.pins.get(p, 0) - 1
            if n <= 0:
                self.pins.pop(p, None)
                freed += 1
            else:
                self.pins[p] = n
        self.kernel.process.accounting.uncharge(freed, self.account)


class Area:
    """A mapping of an IOAS: ``length`` bytes at ``iova``, from ``pages`` at ``start_byte``."""

    __slots__ = ("iova", "length", "pages", "start_byte", "prot", "filled")

    def __init__(self, iova: int, length: int, pages: Pages, start_byte: int, prot: int) -> None:
        self.iova, self.length, self.pages, self.start_byte, self.prot = iova, length, pages, start_byte, prot
        self.filled = False

    @property
    def last(self) -> int:
        return self.iova + self.length - 1

    @property
    def page_span(self) -> Tuple[int, int]:
        return self.start_byte >> PAGE_SHIFT, (self.start_byte + self.length - 1) >> PAGE_SHIFT

    @property
    def uva(self) -> int:
        return self.pages.base + self.start_byte

    def fill(self) -> None:
        if not self.filled:
            self.pages.pin(*self.page_span)
            self.filled = True

    def unfill(self) -> None:
        if self.filled:
            self.pages.unpin(*self.page_span)
            self.filled = False


class Ioas(_Object):
    """An IO address space (iommufd_ioas with its io_pagetable)."""

    kind = "ioas"

    def __init__(self, ctx: "IommufdCtx") -> None:
        super().__init__(ctx)
        self.areas: List[Area] = []
        self.allowed: List[Tuple[int, int]] = []
        self.reserved: List[Tuple[int, int, Any]] = []     # (start, last, owner)
        self.hwpts: List["HwPagetable"] = []
        self.huge_pages = True

    @property
    def has_domain(self) -> bool:
        return bool(self.hwpts)

    @property
    def iova_alignment(self) -> int:
        align = 1
        for hwpt in self.hwpts:
            b = self.ctx.kernel.iommu.iova_pgsizes
            align = max(align, b & -b)
        return align

    def holes(self) -> List[Tuple[int, int]]:
        """The IOVA ranges not reserved, in order."""
        spans = sorted((s, l) for s, l, _ in self.reserved)
        out = []
        pos = 0
        for s, l in spans:
            if s > pos:
                out.append((pos, s - 1))
            pos = max(pos, l + 1)
        if pos <= ULONG_MAX:
            out.append((pos, ULONG_MAX))
        return out

    def area_at(self, iova: int) -> Optional[Area]:
        starts = [a.iova for a in self.areas]
        i = bisect.bisect_right(starts, iova) - 1
        if i >= 0 and self.areas[i].iova <= iova <= self.areas[i].last:
            return self.areas[i]
        return None

    def areas_in(self, start: int, last: int) -> List[Area]:
        return [a for a in self.areas if a.iova <= last and a.last >= start]

    def _reserved_hits(self, start: int, last: int) -> bool:
        return any(s <= last and l >= start for s, l, _ in self.reserved)

    def check_iova(self, iova: int, length: int) -> None:
        """iopt_check_iova for a fixed IOVA."""
        if iova & (self.iova_alignment - 1):
            raise fail(errno.EINVAL)
        last = iova + length - 1
        if last > ULONG_MAX:
            raise fail(errno.EOVERFLOW)
        if self._reserved_hits(iova, last):
            raise fail(errno.EINVAL)
        if self.areas_in(iova, last):
            raise fail(errno.EEXIST)

    def alloc_iova(self, addr: int, length: int) -> int:
        """iopt_alloc_iova: the first suitably aligned free IOVA."""
        page_offset = addr % PAGE_SIZE
        if length == 0 or length >= ULONG_MAX // 2:
            raise fail(errno.EOVERFLOW)
        align = 1 << (length - 1).bit_length()
        if addr:
            align = min(align, addr & -addr)
        if align >= HPAGE_SIZE:
            align = HPAGE_SIZE
        if align < self.iova_alignment:
            raise fail(errno.EINVAL)
        allowed = self.allowed or [(PAGE_SIZE, ULONG_MAX - PAGE_SIZE)]
        used = sorted([(s, l) for s, l, _ in self.reserved] + [(a.iova, a.last) for a in self.areas])
        for lo, hi in allowed:
            lo = max(lo, PAGE_SIZE)
            hi = min(hi, ULONG_MAX - PAGE_SIZE)
            if lo > hi:
                continue
            pos = lo
            for s, l in used + [(hi + 1, hi + 1)]:
                if l < pos:
                    continue
                hole_last = min(s - 1, hi)
                start = ((pos + align - 1) // align * align) | page_offset
                if start <= hole_last and hole_last - start >= length - 1:
                    return start
                pos = max(pos, l + 1)
                if pos > hi:
                    break
        raise fail(errno.ENOSPC)

    def cut(self, iova: int) -> None:
        """Split the area holding ``iova`` so that an area starts there (iopt_cut_iova)."""
        area = self.area_at(iova)
        if area is None or area.iova == iova or iova % PAGE_SIZE:
            return
        head = iova - area.iova
        tail = Area(iova, area.length - head, area.pages, area.start_byte + head, area.prot)
        if area.filled:
            tail.fill()
            area.unfill()
            area.length = head
            area.fill()
        else:
            area.length = head
        starts = [a.iova for a in self.areas]
        self.areas.insert(bisect.bisect_left(starts, tail.iova), tail)

    def insert(self, area: Area) -> None:
        starts = [a.iova for a in self.areas]
        self.areas.insert(bisect.bisect_left(starts, area.iova), area)
        if self.has_domain:
            try:
                area.fill()
            except OSError:
                self.areas.remove(area)
                raise

    def remove(self, area: Area) -> None:
        self.areas.remove(area)
        area.unfill()

    def translate(self, iova: int, write: bool) -> Translation:
        area = self.area_at(iova)
        if area is None:
            nxt = [a.iova for a in self.areas if a.iova > iova]
            run = (min(nxt) - iova) if nxt else PAGE_SIZE - (iova % PAGE_SIZE)
            return Translation(None, max(1, run), "IOVA not mapped")
        run = area.last - iova + 1
        if write and not area.prot & PROT_WRITE:
            return Translation(None, run, "DMA write to a mapping without write permission")
        if not write and not area.prot & PROT_READ:
            return Translation(None, run, "DMA read from a mapping without read permission")
        return Translation(area.pages.pin_alias.address(area.uva + (iova - area.iova)), run)


class HwPagetable(_Object):
    """A paging HW pagetable: an iommu domain holding an IOAS's mappings."""

    kind = "hwpt_paging"

    def __init__(self, ctx: "IommufdCtx", ioas: Ioas, auto: bool) -> None:
        super().__init__(ctx)
        self.ioas = ioas
        self.auto = auto
        self.devices: Set["IommufdDevice"] = set()

    def add_domain(self) -> None:
        """iopt_table_add_domain: reserve outside the aperture, align, pin every area."""
        ioas = self.ioas
        k = self.ctx.kernel.iommu
        aperture_end = (1 << k.iova_bits) - 1
        new_align = max(ioas.iova_alignment, k.iova_pgsizes & -k.iova_pgsizes)
        for a in ioas.areas:
            if (a.iova | a.length | (a.start_byte % PAGE_SIZE)) & (new_align - 1):
                raise fail(errno.EADDRINUSE)
        if aperture_end < ULONG_MAX:
            if ioas.areas_in(aperture_end + 1, ULONG_MAX) or any(
                    lo <= ULONG_MAX and hi > aperture_end for lo, hi in ioas.allowed):
                raise fail(errno.EADDRINUSE)
        filled = []
        try:
            for a in ioas.areas:
                if not a.filled:
                    a.fill()
                    filled.append(a)
        except OSError:
            for a in filled:
                a.unfill()
            raise
        if aperture_end < ULONG_MAX:
            ioas.reserved.append((aperture_end + 1, ULONG_MAX, self))
        ioas.hwpts.append(self)

    def remove_domain(self) -> None:
        ioas = self.ioas
        if self in ioas.hwpts:
            ioas.hwpts.remove(self)
        ioas.reserved = [r for r in ioas.reserved if r[2] is not self]
        if not ioas.hwpts:
            for a in ioas.areas:
                a.unfill()


class IommufdDevice(_Object):
    """A device bound to the iommufd (iommufd_device)."""

    kind = "device"

    def __init__(self, ctx: "IommufdCtx", device: "VfioPciDevice") -> None:
        super().__init__(ctx)
        self.device = device
        self.hwpt: Optional[HwPagetable] = None

    def translate(self, iova: int, write: bool) -> Translation:
        if self.hwpt is None:
            return Translation(None, PAGE_SIZE - (iova % PAGE_SIZE), "DMA blocked: device not attached")
        return self.hwpt.ioas.translate(iova, write)


class IommufdCtx:
    """The state behind one open of ``/dev/iommu``."""

    def __init__(self, kernel: "MockKernel") -> None:
        self.kernel = kernel
        self.objects: Dict[int, _Object] = {}
        self.account_mode = "user"
        self.vfio_ioas: Optional[Ioas] = None
        self._nr = {getattr(lib, name): name for name in _OPS}
        self._compat = {
            lib.VFIO_GET_API_VERSION: lambda addr: lib.VFIO_API_VERSION,
            lib.VFIO_CHECK_EXTENSION: self._vfio_check_extension,
            lib.VFIO_SET_IOMMU: self._vfio_set_iommu,
            lib.VFIO_IOMMU_GET_INFO: self._vfio_get_info,
            lib.VFIO_IOMMU_MAP_DMA: self._vfio_map,
            lib.VFIO_IOMMU_UNMAP_DMA: self._vfio_unmap,
        }

    # -- objects -----------------------------------------------------------------------------

    def _add(self, obj: _Object) -> int:
        i = 1
        while i in self.objects:
            i += 1
        obj.id = i
        self.objects[i] = obj
        return i

    def _get(self, oid: int, cls: Any = None) -> Any:
        obj = self.objects.get(oid)
        if obj is None or (cls is not None and not isinstance(obj, cls)):
            raise fail(errno.ENOENT)
        return obj

    def _busy(self, obj: _Object) -> bool:
        if isinstance(obj, Ioas):
            return bool(obj.hwpts)
        if isinstance(obj, HwPagetable):
            return bool(obj.devices)
        if isinstance(obj, IommufdDevice):
            return True                 # the vfio device holds it until unbind
        return False

    def release(self) -> None:
        """The context is gone: destroy every object (devices were unbound before)."""
        for obj in list(self.objects.values()):
            if isinstance(obj, HwPagetable):
                obj.remove_domain()
        for obj in list(self.objects.values()):
            if isinstance(obj, Ioas):
                for a in list(obj.areas):
                    obj.remove(a)
        self.objects = {}
        self.vfio_ioas = None

    def leaks(self) -> List[str]:
        out = []
        for obj in self.objects.values():
            if isinstance(obj, Ioas):
                out += [f"iommufd IOAS {obj.id} mapping iova {a.iova:#x} length {a.length:#x}"
                        for a in obj.areas]
        return out

    # -- devices (called by the mock vfio) ---------------------------------------------------

    def bind(self, device: "VfioPciDevice") -> IommufdDevice:
        """iommufd_device_bind: claim DMA ownership of the group for this context."""
        device.group.claim_device(self)
        idev = IommufdDevice(self, device)
        self._add(idev)
        return idev

    def unbind(self, idev: IommufdDevice) -> None:
        self.detach(idev)
        self.objects.pop(idev.id, None)
        idev.device.group.release_device(self)

    def attach(self, idev: IommufdDevice, pt_id: int) -> int:
        """iommufd_device_attach/replace: to an IOAS (auto domain) or a paging HWPT."""
        obj = self._get(pt_id)
        hwpt: Optional[HwPagetable]
        if isinstance(obj, HwPagetable):
            hwpt = obj
            created = False
        elif isinstance(obj, Ioas):
            hwpt = next((h for h in obj.hwpts if h.auto), None)
            created = hwpt is None
            if hwpt is None:
                hwpt = HwPagetable(self, obj, auto=True)
                hwpt.add_domain()
                self._add(hwpt)
        else:
            raise fail(errno.EINVAL)
        try:
            self._reserve_msi(hwpt.ioas, idev)
        except OSError:
            if created:
                hwpt.remove_domain()
                self.objects.pop(hwpt.id, None)
            raise
        old = idev.hwpt
        if old is not None and old is not hwpt:
            self._drop(idev, old)
        hwpt.devices.add(idev)
        idev.hwpt = hwpt
        return hwpt.id

    def _reserve_msi(self, ioas: Ioas, idev: IommufdDevice) -> None:
        for start, last in self.kernel.iommu.reserved_regions():
            if any(r[2] is idev for r in ioas.reserved if r[0] == start):
                continue
            if ioas.areas_in(start, last) or any(lo <= last and hi >= start for lo, hi in ioas.allowed):
                raise fail(errno.EADDRINUSE)
            ioas.reserved.append((start, last, idev))

    def _drop(self, idev: IommufdDevice, hwpt: HwPagetable) -> None:
        hwpt.devices.discard(idev)
        hwpt.ioas.reserved = [r for r in hwpt.ioas.reserved if r[2] is not idev]
        if hwpt.auto and not hwpt.devices:
            hwpt.remove_domain()
            self.objects.pop(hwpt.id, None)

    def detach(self, idev: IommufdDevice) -> None:
        if idev.hwpt is not None:
            self._drop(idev, idev.hwpt)
            idev.hwpt = None

    def compat_ioas(self, create: bool) -> Ioas:
        """The IOAS the VFIO group path uses (iommufd_vfio_compat_ioas_*)."""
        if self.vfio_ioas is None or self.vfio_ioas.id not in self.objects:
            if not create:
                raise fail(errno.ENODEV)
            ioas = Ioas(self)
            self._add(ioas)
            self.vfio_ioas = ioas
        return self.vfio_ioas

    # -- ioctl ------------------------------------------------------------------------------

    def ioctl(self, cmd: int, addr: int) -> int:
        name = self._nr.get(cmd)
        if name is None:
            compat = self._compat.get(cmd)
            if compat is None:
                raise fail(errno.ENOTTY)
            return int(compat(addr))
        ctype, last = _OPS[name]
        if not addr:
            raise fail(errno.EFAULT)
        user_size = int(ffi.cast("uint32_t *", addr)[0])
        if user_size < field_end(ctype, last):
            raise fail(errno.EINVAL)
        full = ffi.sizeof(ctype)
        if user_size > full:
            tail = bytes(ffi.buffer(ffi.cast("char *", addr) + full, user_size - full))
            if any(tail):
                raise fail(errno.E2BIG)
        cmd_s = copy_from_user(addr, ctype, user_size)
        handler = getattr(self, "_" + name.lower())
        return int(handler(cmd_s, addr, min(user_size, full)))

    def _respond(self, addr: int, cmd_s: Any, size: int) -> int:
        copy_to_user(addr, cmd_s, size)
        return 0

    def _iommu_destroy(self, c: Any, addr: int, size: int) -> int:
        obj = self._get(c.id)
        if self._busy(obj):
            raise fail(errno.EBUSY)
        if isinstance(obj, Ioas):
            for a in list(obj.areas):
                obj.remove(a)
            if self.vfio_ioas is obj:
                self.vfio_ioas = None
        elif isinstance(obj, HwPagetable):
            obj.remove_domain()
        del self.objects[c.id]
        return 0

    def _iommu_ioas_alloc(self, c: Any, addr: int, size: int) -> int:
        if c.flags:
            raise fail(errno.EOPNOTSUPP)
        c.out_ioas_id = self._add(Ioas(self))
        return self._respond(addr, c, size)

    def _iommu_ioas_iova_ranges(self, c: Any, addr: int, size: int) -> int:
        if getattr(c, '__reserved'):
            raise fail(errno.EOPNOTSUPP)
        ioas = self._get(c.ioas_id, Ioas)
        holes = ioas.holes()
        room = c.num_iovas
        rng = "struct iommu_iova_range"
        for i, (start, last) in enumerate(holes[:room]):
            elm = ffi.new(rng + " *", {"start": start, "last": last})
            write_user(c.allowed_iovas + i * ffi.sizeof(rng), bytes(ffi.buffer(elm)))
        c.num_iovas = len(holes)
        c.out_iova_alignment = ioas.iova_alignment
        self._respond(addr, c, size)
        if len(holes) > room:
            raise fail(errno.EMSGSIZE)
        return 0

    def _iommu_ioas_allow_iovas(self, c: Any, addr: int, size: int) -> int:
        if getattr(c, '__reserved'):
            raise fail(errno.EOPNOTSUPP)
        ioas = self._get(c.ioas_id, Ioas)
        rng = "struct iommu_iova_range"
        ranges: List[Tuple[int, int]] = []
        for i in range(c.num_iovas):
            r = copy_from_user(c.allowed_iovas + i * ffi.sizeof(rng), rng)
            if r.start >= r.last:
                raise fail(errno.EINVAL)
            if any(lo <= r.last and hi >= r.start for lo, hi in ranges):
                raise fail(errno.EINVAL)
            ranges.append((r.start, r.last))
        for lo, hi in ranges:
            if ioas._reserved_hits(lo, hi):
                raise fail(errno.EADDRINUSE)
        ioas.allowed = sorted(ranges)
        return 0

    @staticmethod
    def _prot(flags: int) -> int:
        return ((PROT_WRITE if flags & lib.IOMMU_IOAS_MAP_WRITEABLE else 0)
                | (PROT_READ if flags & lib.IOMMU_IOAS_MAP_READABLE else 0))

    def _map_pages(self, ioas: Ioas, pieces: List[Tuple[Pages, int, int]], length: int,
                   iova: int, prot: int, fixed: bool) -> int:
        """iopt_map_pages: place ``pieces`` (pages, start_byte, len) contiguously."""
        align = ioas.iova_alignment
        if length & (align - 1) or not length:
            raise fail(errno.EINVAL)
        if fixed:
            ioas.check_iova(iova, length)
        else:
            pages, start_byte, _ = pieces[0]
            iova = ioas.alloc_iova(pages.base + start_byte, length)
        if prot & PROT_WRITE and not all(p.writable for p, _, _ in pieces):
            raise fail(errno.EPERM)
        if any((sb % PAGE_SIZE) & (align - 1) for _, sb, _ in pieces):
            raise fail(errno.EINVAL)
        done: List[Area] = []
        pos = iova
        try:
            for pages, start_byte, n in pieces:
                area = Area(pos, n, pages, start_byte, prot)
                ioas.insert(area)
                done.append(area)
                pos += n
        except OSError:
            for area in done:
                ioas.remove(area)
            raise
        return iova

    def _iommu_ioas_map(self, c: Any, addr: int, size: int) -> int:
        known = lib.IOMMU_IOAS_MAP_FIXED_IOVA | lib.IOMMU_IOAS_MAP_WRITEABLE | lib.IOMMU_IOAS_MAP_READABLE
        if c.flags & ~known or getattr(c, '__reserved'):
            raise fail(errno.EOPNOTSUPP)
        if c.iova >= ULONG_MAX or c.length >= ULONG_MAX:
            raise fail(errno.EOVERFLOW)
        if not c.flags & (lib.IOMMU_IOAS_MAP_WRITEABLE | lib.IOMMU_IOAS_MAP_READABLE):
            raise fail(errno.EINVAL)
        ioas = self._get(c.ioas_id, Ioas)
        if c.length == 0 or c.length > ULONG_MAX - PAGE_SIZE:
            raise fail(errno.EINVAL)
        if c.user_va + c.length > U64_MAX:
            raise fail(errno.EOVERFLOW)
        pages = Pages(self, c.user_va, c.length, bool(c.flags & lib.IOMMU_IOAS_MAP_WRITEABLE))
        start_byte = c.user_va - pages.base
        c.iova = self._map_pages(ioas, [(pages, start_byte, c.length)], c.length, c.iova,
                                 self._prot(c.flags), bool(c.flags & lib.IOMMU_IOAS_MAP_FIXED_IOVA))
        return self._respond(addr, c, size)

    def _iommu_ioas_copy(self, c: Any, addr: int, size: int) -> int:
        known = lib.IOMMU_IOAS_MAP_FIXED_IOVA | lib.IOMMU_IOAS_MAP_WRITEABLE | lib.IOMMU_IOAS_MAP_READABLE
        if c.flags & ~known:
            raise fail(errno.EOPNOTSUPP)
        if c.length >= ULONG_MAX or c.src_iova >= ULONG_MAX or c.dst_iova >= ULONG_MAX:
            raise fail(errno.EOVERFLOW)
        if not c.flags & (lib.IOMMU_IOAS_MAP_WRITEABLE | lib.IOMMU_IOAS_MAP_READABLE):
            raise fail(errno.EINVAL)
        src = self._get(c.src_ioas_id, Ioas)
        if not c.length:
            raise fail(errno.EINVAL)
        last = c.src_iova + c.length - 1
        if last > ULONG_MAX:
            raise fail(errno.EOVERFLOW)
        pieces: List[Tuple[Pages, int, int]] = []
        pos = c.src_iova
        for area in src.areas_in(c.src_iova, last):
            if area.iova > pos:
                break
            lo = max(pos, area.iova)
            hi = min(last, area.last)
            pieces.append((area.pages, area.start_byte + (lo - area.iova), hi - lo + 1))
            pos = hi + 1
        if pos <= last:
            raise fail(errno.ENOENT)
        dst = self._get(c.dst_ioas_id, Ioas)
        c.dst_iova = self._map_pages(dst, pieces, c.length, c.dst_iova, self._prot(c.flags),
                                     bool(c.flags & lib.IOMMU_IOAS_MAP_FIXED_IOVA))
        return self._respond(addr, c, size)

    def _iommu_ioas_unmap(self, c: Any, addr: int, size: int) -> int:
        ioas = self._get(c.ioas_id, Ioas)
        if c.iova == 0 and c.length == U64_MAX:
            unmapped = sum(a.length for a in ioas.areas)
            for a in list(ioas.areas):
                ioas.remove(a)
        else:
            if c.iova >= ULONG_MAX or c.length >= ULONG_MAX:
                raise fail(errno.EOVERFLOW)
            if not c.length:
                raise fail(errno.EINVAL)
            last = c.iova + c.length - 1
            if last > ULONG_MAX:
                raise fail(errno.EOVERFLOW)
            unmapped = 0
            for a in ioas.areas_in(c.iova, last):
                if a.iova < c.iova or a.last > last:
                    raise fail(errno.ENOENT)        # areas before it stay unmapped, as in the kernel
                ioas.remove(a)
                unmapped += a.length
            if not unmapped:
                raise fail(errno.ENOENT)
        c.length = unmapped
        return self._respond(addr, c, size)

    def _iommu_option(self, c: Any, addr: int, size: int) -> int:
        if getattr(c, '__reserved'):
            raise fail(errno.EOPNOTSUPP)
        if c.option_id == lib.IOMMU_OPTION_RLIMIT_MODE:
            if c.object_id:
                raise fail(errno.EOPNOTSUPP)
            if c.op == lib.IOMMU_OPTION_OP_GET:
                c.val64 = 1 if self.account_mode == "mm" else 0
            elif c.op == lib.IOMMU_OPTION_OP_SET:
                if not self.kernel.process.cap_sys_resource:
                    raise fail(errno.EPERM)
                if self.objects:
                    raise fail(errno.EBUSY)
                if c.val64 not in (0, 1):
                    raise fail(errno.EINVAL)
                self.account_mode = "mm" if c.val64 else "user"
            else:
                raise fail(errno.EOPNOTSUPP)
        elif c.option_id == lib.IOMMU_OPTION_HUGE_PAGES:
            ioas = self._get(c.object_id, Ioas)
            if c.op == lib.IOMMU_OPTION_OP_GET:
                c.val64 = 1 if ioas.huge_pages else 0
            elif c.op == lib.IOMMU_OPTION_OP_SET:
                if c.val64 not in (0, 1):
                    raise fail(errno.EINVAL)
                ioas.huge_pages = bool(c.val64)
            else:
                raise fail(errno.EOPNOTSUPP)
        else:
            raise fail(errno.EOPNOTSUPP)
        write_user(addr + ffi.offsetof("struct iommu_option", "val64"), int(c.val64).to_bytes(8, "little"))
        return 0

    def _iommu_vfio_ioas(self, c: Any, addr: int, size: int) -> int:
        if getattr(c, '__reserved'):
            raise fail(errno.EOPNOTSUPP)
        if c.op == lib.IOMMU_VFIO_IOAS_GET:
            c.ioas_id = self.compat_ioas(create=False).id
            return self._respond(addr, c, size)
        if c.op == lib.IOMMU_VFIO_IOAS_SET:
            self.vfio_ioas = self._get(c.ioas_id, Ioas)
            return 0
        if c.op == lib.IOMMU_VFIO_IOAS_CLEAR:
            self.vfio_ioas = None
            return 0
        raise fail(errno.EOPNOTSUPP)

    def _iommu_hwpt_alloc(self, c: Any, addr: int, size: int) -> int:
        if getattr(c, '__reserved') or c.flags & ~(lib.IOMMU_HWPT_ALLOC_NEST_PARENT
                                       | lib.IOMMU_HWPT_ALLOC_DIRTY_TRACKING
                                       | lib.IOMMU_HWPT_FAULT_ID_VALID):
            raise fail(errno.EOPNOTSUPP)
        if c.data_type == lib.IOMMU_HWPT_DATA_NONE and c.data_len:
            raise fail(errno.EINVAL)
        self._get(c.dev_id, IommufdDevice)
        ioas = self.objects.get(c.pt_id)
        if isinstance(ioas, HwPagetable):
            raise fail(errno.EOPNOTSUPP)     # a nested domain needs a nesting-capable IOMMU
        if not isinstance(ioas, Ioas):
            raise fail(errno.EINVAL)
        if c.data_type != lib.IOMMU_HWPT_DATA_NONE or c.flags:
            raise fail(errno.EOPNOTSUPP)
        hwpt = HwPagetable(self, ioas, auto=False)
        hwpt.add_domain()
        c.out_hwpt_id = self._add(hwpt)
        return self._respond(addr, c, size)

    def _iommu_get_hw_info(self, c: Any, addr: int, size: int) -> int:
        if c.flags or any(getattr(c, '__reserved')[i] for i in range(3)):
            raise fail(errno.EOPNOTSUPP)
        self._get(c.dev_id, IommufdDevice)
        data = b""
        c.out_data_type = lib.IOMMU_HW_INFO_TYPE_NONE
        if self.kernel.iommu.hw_info == "intel_vtd":
            vtd = ffi.new("struct iommu_hw_info_vtd *")
            vtd.flags, vtd.cap_reg, vtd.ecap_reg = QEMU_VTD_INFO
            data = bytes(ffi.buffer(vtd))
            c.out_data_type = lib.IOMMU_HW_INFO_TYPE_INTEL_VTD
        if c.data_len:
            if not user_range_ok(c.data_uptr, c.data_len, write=True):
                raise fail(errno.EFAULT)
            n = min(c.data_len, len(data))
            write_user(c.data_uptr, data[:n] + bytes(c.data_len - n))
        c.data_len = len(data)
        c.out_max_pasid_log2 = 0
        c.out_capabilities = 0
        return self._respond(addr, c, size)

    def _iommu_hwpt_set_dirty_tracking(self, c: Any, addr: int, size: int) -> int:
        if c.flags & ~lib.IOMMU_HWPT_DIRTY_TRACKING_ENABLE or getattr(c, '__reserved'):
            raise fail(errno.EOPNOTSUPP)
        self._get(c.hwpt_id, HwPagetable)
        raise fail(errno.EOPNOTSUPP)

    def _iommu_hwpt_get_dirty_bitmap(self, c: Any, addr: int, size: int) -> int:
        self._get(c.hwpt_id, HwPagetable)
        raise fail(errno.EOPNOTSUPP)

    def _iommu_hwpt_invalidate(self, c: Any, addr: int, size: int) -> int:
        self._get(c.hwpt_id)
        raise fail(errno.EOPNOTSUPP)

    def _iommu_fault_queue_alloc(self, c: Any, addr: int, size: int) -> int:
        raise fail(errno.EOPNOTSUPP)

    # -- the VFIO type1 container API on an iommufd (vfio_compat.c) ----------------------------

    def _vfio_check_extension(self, arg: int) -> int:
        if arg in (lib.VFIO_TYPE1_IOMMU, lib.VFIO_TYPE1v2_IOMMU, lib.VFIO_UNMAP_ALL):
            return 1
        if arg == lib.VFIO_NOIOMMU_IOMMU:
            return 1
        if arg == lib.VFIO_DMA_CC_IOMMU:
            ioas = self.compat_ioas(create=False)
            return 1 if self.kernel.iommu.cache_coherent or not ioas.hwpts else 0
        return 0

    def _vfio_set_iommu(self, arg: int) -> int:
        if arg not in (lib.VFIO_TYPE1_IOMMU, lib.VFIO_TYPE1v2_IOMMU):
            raise fail(errno.EINVAL)
        ioas = self.compat_ioas(create=False)
        if arg == lib.VFIO_TYPE1_IOMMU:
            ioas.huge_pages = False         # so that any range can be unmapped (TYPE1 v1 rules)
        return 0

    def _vfio_get_info(self, addr: int) -> int:
        ctype = "struct vfio_iommu_type1_info"
        info = copy_args(addr, ctype, "iova_pgsizes")
        size = min(info.argsz, ffi.sizeof(ctype))
        ioas = self.compat_ioas(create=False)
        bitmap = ULONG_MAX
        for _ in ioas.hwpts:
            bitmap &= self.kernel.iommu.iova_pgsizes
        if bitmap & (PAGE_SIZE - 1):
            bitmap = (bitmap & ~(PAGE_SIZE - 1)) | PAGE_SIZE
        info.flags = lib.VFIO_IOMMU_INFO_PGSIZES
        info.iova_pgsizes = max(bitmap, ioas.iova_alignment)
        info.cap_offset = 0
        total = ffi.sizeof(ctype)
        last = None
        next_at = ffi.offsetof("struct vfio_info_cap_header", "next")
        for cap in (dma_avail_cap(U32_MAX), iova_range_cap(ioas.holes())):
            if info.argsz > total and info.argsz - total >= len(cap):
                write_user(addr + total, cap)
            if last is not None and info.argsz >= total:
                write_user(addr + last + next_at, total.to_bytes(4, "little"))
            last = total
            total += (len(cap) + 7) & ~7
        if info.argsz >= total:
            info.cap_offset = ffi.sizeof(ctype)
        info.argsz = total
        info.flags |= lib.VFIO_IOMMU_INFO_CAPS
        copy_to_user(addr, info, size)
        return 0

    def _vfio_map(self, addr: int) -> int:
        ctype = "struct vfio_iommu_type1_dma_map"
        m = copy_args(addr, ctype, "size", flags=lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE)
        prot = ((PROT_READ if m.flags & lib.VFIO_DMA_MAP_FLAG_READ else 0)
                | (PROT_WRITE if m.flags & lib.VFIO_DMA_MAP_FLAG_WRITE else 0))
        ioas = self.compat_ioas(create=False)
        if m.size == 0 or m.size > ULONG_MAX - PAGE_SIZE:
            raise fail(errno.EINVAL)
        if m.vaddr + m.size > U64_MAX:
            raise fail(errno.EOVERFLOW)
        pages = Pages(self, m.vaddr, m.size, bool(prot & PROT_WRITE))
        self._map_pages(ioas, [(pages, m.vaddr - pages.base, m.size)], m.size, m.iova, prot, True)
        return 0

    def _vfio_unmap(self, addr: int) -> int:
        ctype = "struct vfio_iommu_type1_dma_unmap"
        minsz = field_end(ctype, "size")
        u = copy_args(addr, ctype, "size", flags=lib.VFIO_DMA_UNMAP_FLAG_ALL)
        ioas = self.compat_ioas(create=False)
        unmapped = 0
        try:
            if u.flags & lib.VFIO_DMA_UNMAP_FLAG_ALL:
                if u.iova or u.size:
                    raise fail(errno.EINVAL)
                unmapped = sum(a.length for a in ioas.areas)
                for a in list(ioas.areas):
                    ioas.remove(a)
            else:
                if not u.size:
                    raise fail(errno.EINVAL)
                last = u.iova + u.size - 1
                if last > ULONG_MAX:
                    raise fail(errno.EOVERFLOW)
                if not ioas.huge_pages:         # TYPE1 v1: cut areas at the range's ends
                    ioas.cut(u.iova)
                    ioas.cut(last + 1)
                for a in ioas.areas_in(u.iova, last):
                    if a.iova < u.iova or a.last > last:
                        raise fail(errno.ENOENT)
                    ioas.remove(a)
                    unmapped += a.length
                if not unmapped:
                    raise fail(errno.ENOENT)
        finally:
            u.size = unmapped
            copy_to_user(addr, u, minsz)
        return 0


class IommuFile(MockFile):
    kind = "iommufd"

    def __init__(self, kernel: "MockKernel", path: str) -> None:
        super().__init__(kernel, path)
        self.ctx = IommufdCtx(kernel)
        kernel.iommufd.contexts.append(self.ctx)

    def release(self) -> None:
        self.ctx.release()

    def ioctl(self, cmd: int, addr: int) -> int:
        return self.ctx.ioctl(cmd, addr)


@register
class Iommufd(Family):
    """``/dev/iommu``: one :class:`IommufdCtx` per open."""

    name = "iommufd"
    requires = ("process", "iommu")

    @dataclasses.dataclass
    class Config:
        #: Offer ``/dev/iommu`` and VFIO device cdevs (default: with ``iommu="type1"``).
        iommufd: Optional[bool] = None

    def __init__(self, kernel: Any, config: "Iommufd.Config") -> None:
        super().__init__(kernel, config)
        kind = kernel.iommu.kind
        self.enabled = kind == "type1" if config.iommufd is None else config.iommufd
        if self.enabled and kind != "type1":
            raise ValueError("the mock offers iommufd only with iommu='type1'")
        self.contexts: List[IommufdCtx] = []

    def setup(self) -> None:
        if not self.enabled:
            return
        host = self.kernel.host
        os.makedirs(host.sys_path("module", "iommufd"), exist_ok=True)
        with open(host.dev_path("iommu"), "w"):
            pass
        self.kernel.add_node(host.dev_path("iommu"), lambda p: IommuFile(self.kernel, p))

    def leaks(self) -> List[str]:
        return [line for ctx in self.contexts for line in ctx.leaks()]
