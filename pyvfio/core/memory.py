"""Memory for device DMA, and the allocation of I/O virtual addresses.

A :class:`DmaBuffer` is page-aligned process memory (anonymous, memfd, or
hugetlb pages) that an IOMMU backend pins and maps at an IOVA.  Python sees it
as a ``memoryview``; the device sees it at the IOVA.  An
:class:`IovaAllocator` hands out IOVAs inside the ranges the IOMMU reports as
usable (and below the device's DMA mask), so that a mapping the kernel would
refuse, or the device could not reach, is refused here first.
"""
from __future__ import annotations

import bisect
import mmap as _mmap
import os
from typing import Iterable, List, Optional, Sequence, Tuple

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.uapi import ffi

__all__ = ["DmaBuffer", "IovaAllocator", "PAGE_SIZE", "HUGE_2M", "HUGE_1G"]

PAGE_SIZE = _mmap.PAGESIZE
HUGE_2M = 2 << 20
HUGE_1G = 1 << 30

_MFD_HUGE_SHIFT = 26    # MFD_HUGE_* encode log2(page size) at this bit


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


class DmaBuffer:
    """Page-aligned memory a device can read and write by DMA.

    ``kind`` is ``"anonymous"`` (shared anonymous pages), ``"memfd"`` (a
    memfd, which another process or vhost can map too) or ``"hugetlb"``
    (a memfd of huge pages of ``page_size`` 2 MiB or 1 GiB, reserved through
    /proc/sys/vm/nr_hugepages or the sysfs hugepages directory).
    """

    def __init__(self, size: int, kind: str = "anonymous", *,
                 page_size: Optional[int] = None, name: str = "pyvfio-dma") -> None:
        if size <= 0:
            raise errors.InvalidArgumentError(f"DMA buffer size must be positive, not {size}")
        if kind not in ("anonymous", "memfd", "hugetlb"):
            raise errors.InvalidArgumentError(
                f"unknown DMA buffer kind {kind!r}", remedy="use anonymous, memfd or hugetlb")
        if kind == "hugetlb":
            page_size = page_size or HUGE_2M
        self.page_size = page_size or PAGE_SIZE
        self.kind = kind
        self.size = _round_up(size, self.page_size)
        self.fd: Optional[int] = None
        self._ptr = None
        self._mmap = None
        self.spaces: set = set()        # I/O address spaces that map this buffer
        self._locked = False            # mlock'ed for physical_address()
        try:
            if kind == "anonymous":
                self._mmap = syscalls.mmap(-1, self.size, what="DMA buffer")
            else:
                flags = os.MFD_CLOEXEC
                if kind == "hugetlb":
                    flags |= os.MFD_HUGETLB | (self.page_size.bit_length() - 1) << _MFD_HUGE_SHIFT
                self.fd = self._memfd(name, flags)
                try:
                    syscalls.ftruncate(self.fd, self.size)
                    self._mmap = syscalls.mmap(self.fd, self.size, what="DMA buffer")
                except OSError as exc:
                    raise self._huge_error(exc) from None
            self._ptr = ffi.from_buffer("char[]", self._mmap)
            self.vaddr = int(ffi.cast("uintptr_t", self._ptr))
        except BaseException:
            self.close()
            raise

    def _memfd(self, name: str, flags: int) -> int:
        try:
            return syscalls.memfd_create(name, flags)
        except OSError as exc:
            raise self._huge_error(exc) from None

    def _huge_error(self, exc: OSError) -> errors.PyvfioError:
        if self.kind != "hugetlb":
            if isinstance(exc, errors.PyvfioError):
                return exc
            return errors.from_errno(exc.errno or 0, op="memfd_create")
        mb = self.page_size >> 20
        return errors.PyvfioError(
            f"cannot allocate {self.size >> 20} MiB of {mb} MiB huge pages",
            errno=exc.errno, op="hugetlb",
            remedy=f"reserve pages: echo N > /sys/kernel/mm/hugepages/hugepages-{mb * 1024}kB/"
                   "nr_hugepages (or boot with hugepagesz=/hugepages=)")

    # -- access -------------------------------------------------------------
    def _check(self) -> None:
        if self._mmap is None:
            raise errors.ClosedError("DMA buffer")

    @property
    def view(self) -> memoryview:
        """A memoryview of the whole buffer; release it before :meth:`close`."""
        self._check()
        return memoryview(self._mmap)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        self._check()
        return self._mmap[key]

    def __setitem__(self, key, value) -> None:
        self._check()
        self._mmap[key] = value

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``, bounds-checked."""
        self._bounds(offset, size)
        return self._mmap[offset:offset + size]

    def write(self, offset: int, data: bytes) -> None:
        """Copy ``data`` to ``offset``, bounds-checked."""
        self._bounds(offset, len(data))
        self._mmap[offset:offset + len(data)] = data

    def fill(self, byte: int = 0) -> None:
        """Set every byte of the buffer."""
        self._check()
        ffi.memmove(self._ptr, bytes([byte]) * self.size, self.size)

    def _bounds(self, offset: int, size: int) -> None:
        self._check()
        if offset < 0 or size < 0 or offset + size > self.size:
            raise errors.OutOfBoundsError(
                f"access of {size} bytes at {offset:#x} is outside the {self.size:#x}-byte DMA buffer")

    def physical_address(self, offset: int = 0) -> int:
        """The physical address of byte ``offset``, for no-IOMMU DMA.

        Reads /proc/self/pagemap (root only).  The page is locked in memory
        first; a DMA longer than a page needs physically contiguous memory:
        use ``kind="hugetlb"``.
        """
        self._bounds(offset, 1)
        if not self._locked:
            syscalls.mlock(self._ptr, self.size)
            self._locked = True
        vaddr = self.vaddr + offset
        fd = syscalls.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            entry = int.from_bytes(syscalls.pread(fd, 8, (vaddr // PAGE_SIZE) * 8), "little")
        finally:
            syscalls.close(fd)
        pfn = entry & ((1 << 55) - 1)
        if not entry >> 63 or not pfn:
            raise errors.PermissionDeniedError(
                "the kernel did not reveal the page's physical address", path="/proc/self/pagemap",
                remedy="run as root (CAP_SYS_ADMIN) to read physical frame numbers")
        return pfn * PAGE_SIZE + vaddr % PAGE_SIZE

    # -- lifetime -------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._mmap is None

    def close(self) -> None:
        """Free the memory and remove the buffer's IOMMU mappings.

        Refused with :class:`~pyvfio.errors.BusyError`, changing nothing, while
        memoryviews or arrays of the buffer are alive.  Otherwise everything
        is released even when a step fails (the kernel keeps pinned pages
        until their IOMMU mapping goes, so freeing first is safe); the first
        error is raised at the end.
        """
        if self._mmap is not None:
            if self._ptr is not None:           # our own export: drop it to see others'
                ffi.release(self._ptr)
                self._ptr = None
            try:
                syscalls.munmap(self._mmap)
            except errors.BusyError:
                self._ptr = ffi.from_buffer("char[]", self._mmap)   # as before: nothing changed
                raise
            self._mmap = None
        first: Optional[BaseException] = None
        for space in list(self.spaces):
            try:
                space.unmap_buffer(self)
            except errors.PyvfioError as exc:
                first = first or exc
        if self.fd is not None:
            fd, self.fd = self.fd, None
            syscalls.close(fd)
        if first is not None:
            raise first

    def __enter__(self) -> "DmaBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"vaddr={self.vaddr:#x}"
        return f"<DmaBuffer {self.kind} {self.size:#x} bytes {state}>"


class IovaAllocator:
    """First-fit allocation of IOVA space inside the IOMMU's usable ranges.

    ``ranges`` are inclusive ``(start, last)`` pairs as the kernel reports
    them (type1's IOVA_RANGE capability, iommufd's IOAS_IOVA_RANGES, an sPAPR
    DMA window).  ``dma_mask_bits`` limits them to what the device can
    address; ``alignment`` is the IOMMU's smallest page size.
    """

    def __init__(self, ranges: Iterable[Tuple[int, int]], *, alignment: int = PAGE_SIZE,
                 dma_mask_bits: Optional[int] = None, base: int = 0) -> None:
        limit = (1 << dma_mask_bits) - 1 if dma_mask_bits else (1 << 64) - 1
        self.alignment = alignment
        self.ranges: List[Tuple[int, int]] = []
        for start, last in sorted(ranges):
            start, last = max(start, base), min(last, limit)
            start = _round_up(start, alignment)
            if last >= start + alignment - 1:
                self.ranges.append((start, last))
        self._used: List[Tuple[int, int]] = []      # sorted (start, end-exclusive)

    def contains(self, iova: int, size: int) -> bool:
        """Whether [iova, iova+size) lies inside one usable range."""
        return size > 0 and any(s <= iova and iova + size - 1 <= last for s, last in self.ranges)

    def check(self, iova: int, size: int, *, device: Optional[str] = None) -> None:
        """Refuse a range the IOMMU would not map, with the usable ranges in the message."""
        if iova % self.alignment or size % self.alignment:
            raise errors.IovaError(
                f"IOVA {iova:#x} size {size:#x} is not aligned to the IOMMU page size "
                f"{self.alignment:#x}", device=device)
        if not self.contains(iova, size):
            usable = ", ".join(f"[{s:#x}-{e:#x}]" for s, e in self.ranges) or "none"
            raise errors.IovaError(
                f"IOVA range [{iova:#x}-{iova + size - 1:#x}] is outside the usable IOVA ranges "
                f"({usable})", device=device,
                remedy="let pyvfio choose the IOVA (iova=None) or pick one inside a usable range")

    def reserve(self, iova: int, size: int, *, device: Optional[str] = None) -> int:
        """Claim a fixed range; it must be usable and free."""
        self.check(iova, size, device=device)
        i = bisect.bisect_left(self._used, (iova, 0))
        before = self._used[i - 1] if i else None
        after = self._used[i] if i < len(self._used) else None
        if (before and before[1] > iova) or (after and after[0] < iova + size):
            raise errors.IovaError(f"IOVA range {iova:#x}+{size:#x} overlaps an existing mapping",
                                   device=device)
        self._used.insert(i, (iova, iova + size))
        return iova

    def alloc(self, size: int, *, align: Optional[int] = None,
              dma_mask_bits: Optional[int] = None) -> int:
        """Find and claim ``size`` bytes of free IOVA space; returns its start.

        ``dma_mask_bits`` keeps the range below what one device can address.
        """
        align = max(align or self.alignment, self.alignment)
        limit = (1 << dma_mask_bits) - 1 if dma_mask_bits else (1 << 64) - 1
        size = _round_up(size, self.alignment)
        for start, last in self.ranges:
            last = min(last, limit)
            cand = _round_up(start, align)
            for ustart, uend in self._used:
                if uend <= cand:
                    continue
                if ustart >= cand + size:
                    break
                cand = _round_up(uend, align)
            if cand + size - 1 <= last:
                bisect.insort(self._used, (cand, cand + size))
                return cand
        raise errors.IovaError(f"no free IOVA space for {size:#x} bytes",
                               remedy="unmap buffers no longer used")

    def free(self, iova: int) -> None:
        """Give back the range that starts at ``iova``."""
        for i, (s, _) in enumerate(self._used):
            if s == iova:
                del self._used[i]
                return
        raise errors.IovaError(f"IOVA {iova:#x} was not allocated")

    def clear(self) -> None:
        self._used.clear()

    @property
    def used(self) -> Sequence[Tuple[int, int]]:
        return tuple(self._used)
