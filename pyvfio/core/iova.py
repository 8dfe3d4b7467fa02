"""The allocation of I/O virtual addresses.

An :class:`IovaAllocator` hands out IOVAs inside the ranges the IOMMU reports
as usable (and below the device's DMA mask), so that a mapping the kernel
would refuse, or the device could not reach, is refused here first.  Each IOVA
is aligned to the buffer's page size (2 MiB, 1 GiB hugetlb) and, where the
space allows, to the largest IOMMU page the mapping's size holds, so that the
IOMMU can map it with large pages.
"""
from __future__ import annotations

import bisect
from typing import Iterable, List, Optional, Sequence, Tuple

from pyvfio import errors
from pyvfio.core import args
from pyvfio.core.memory import HUGE_1G, HUGE_2M, PAGE_SIZE, round_up

__all__ = ["IovaAllocator"]


class IovaAllocator:
    """First-fit allocation of IOVA space inside the IOMMU's usable ranges.

    ``ranges`` are inclusive ``(start, last)`` pairs as the kernel reports
    them (type1's IOVA_RANGE capability, iommufd's IOAS_IOVA_RANGES, an sPAPR
    DMA window).  ``dma_mask_bits`` limits them to what the device can
    address; ``alignment`` is the IOMMU's smallest page size.
    """

    def __init__(self, ranges: Iterable[Tuple[int, int]], *, alignment: int = PAGE_SIZE,
                 dma_mask_bits: Optional[int] = None, base: int = 0) -> None:
        alignment = args.integer(alignment, "alignment", lo=1, hi=1 << 63)
        if alignment & (alignment - 1):
            raise errors.InvalidArgumentError(f"alignment must be a power of two, not {alignment:#x}")
        if dma_mask_bits is not None:
            dma_mask_bits = args.integer(dma_mask_bits, "dma_mask_bits", lo=1, hi=64)
        base = args.integer(base, "base")
        checked = []
        try:
            pairs = list(ranges)
        except TypeError:
            raise errors.ArgumentTypeError("ranges must be (start, last) pairs") from None
        for pair in pairs:
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise errors.ArgumentTypeError(f"a range must be a (start, last) pair, not {pair!r}")
            start = args.integer(pair[0], "range start")
            last = args.integer(pair[1], "range last")
            if last < start:
                raise errors.InvalidArgumentError(f"range ({start:#x}, {last:#x}) ends before it starts")
            checked.append((start, last))
        ranges = checked
        limit = (1 << dma_mask_bits) - 1 if dma_mask_bits else (1 << 64) - 1
        self.alignment = alignment
        self.ranges: List[Tuple[int, int]] = []
        for start, last in sorted(ranges):
            start, last = max(start, base), min(last, limit)
            start = round_up(start, alignment)
            if last >= start + alignment - 1:
                self.ranges.append((start, last))
        self._used: List[Tuple[int, int]] = []      # sorted (start, end-exclusive)

    def contains(self, iova: int, size: int) -> bool:
        """Whether [iova, iova+size) lies inside one usable range."""
        iova = args.integer(iova, "iova")
        size = args.integer(size, "size")
        return size > 0 and any(s <= iova and iova + size - 1 <= last for s, last in self.ranges)

    def check(self, iova: int, size: int, *, device: Optional[str] = None) -> None:
        """Refuse a range the IOMMU would not map, with the usable ranges in the message."""
        iova = args.integer(iova, "iova", device=device, lo=None, hi=None)
        size = args.integer(size, "size", device=device, lo=None, hi=None)
        if iova < 0 or size <= 0 or iova + size > 1 << 64:
            raise errors.IovaError(
                f"{size:#x} bytes at IOVA {iova:#x} do not fit the 64-bit IOVA space "
                f"(the last IOVA is {(1 << 64) - 1:#x})", device=device,
                remedy="use a smaller size or a lower IOVA, or let pyvfio choose (iova=None)")
        if iova % self.alignment or size % self.alignment:
            raise errors.IovaError(
                f"IOVA {iova:#x} size {size:#x} is not aligned to the IOMMU page size "
                f"{self.alignment:#x}", device=device,
                remedy=f"use an IOVA and a size that are multiples of {self.alignment:#x}")
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
        for other in (before, after):
            if other and other[0] < iova + size and iova < other[1]:
                raise errors.IovaError(
                    f"IOVA range [{iova:#x}-{iova + size - 1:#x}] overlaps the mapping "
                    f"[{other[0]:#x}-{other[1] - 1:#x}]", device=device,
                    remedy="unmap that mapping first, or let pyvfio choose the IOVA (iova=None)")
        self._used.insert(i, (iova, iova + size))
        return iova

    @staticmethod
    def large_page_for(size: int) -> int:
        """The largest IOMMU large page (1 GiB, 2 MiB) that fits ``size``, else 1."""
        for page in (HUGE_1G, HUGE_2M):
            if size >= page:
                return page
        return 1

    def alloc(self, size: int, *, align: Optional[int] = None, page_size: Optional[int] = None,
              dma_mask_bits: Optional[int] = None) -> int:
        """Find and claim ``size`` bytes of free IOVA space; returns its start.

        The IOVA is a multiple of the IOMMU page size, of ``align`` and of the
        buffer's ``page_size`` (2 MiB or 1 GiB for hugetlb), so that the IOMMU
        can map the buffer with pages of that size.  Where the space allows,
        it is also aligned to the largest IOMMU page (2 MiB, 1 GiB) that the
        mapping's size holds, which lets the IOMMU use large pages for memory
        that is physically contiguous (transparent huge pages).
        ``dma_mask_bits`` keeps the range below what one device can address.
        """
        size = args.integer(size, "size", lo=1)
        if align is not None:
            align = args.integer(align, "align", lo=1, hi=1 << 63)
            if align & (align - 1):
                raise errors.InvalidArgumentError(f"align must be a power of two, not {align:#x}")
        if page_size is not None:
            page_size = args.integer(page_size, "page_size", lo=1, hi=1 << 63)
        if dma_mask_bits is not None:
            dma_mask_bits = args.integer(dma_mask_bits, "dma_mask_bits", lo=1, hi=64)
        need = max(align or 1, page_size or 1, self.alignment)
        size = round_up(size, self.alignment)
        prefer = max(self.large_page_for(size), need)
        for a in ((prefer, need) if prefer != need else (need,)):
            iova = self._first_fit(size, a, dma_mask_bits)
            if iova is not None:
                bisect.insort(self._used, (iova, iova + size))
                return iova
        raise errors.IovaError(f"no free IOVA space for {size:#x} bytes aligned to {need:#x}",
                               remedy="unmap buffers no longer used")

    def _first_fit(self, size: int, align: int, dma_mask_bits: Optional[int]) -> Optional[int]:
        limit = (1 << dma_mask_bits) - 1 if dma_mask_bits else (1 << 64) - 1
        for start, last in self.ranges:
            last = min(last, limit)
            cand = round_up(start, align)
            for ustart, uend in self._used:
                if uend <= cand:
                    continue
                if ustart >= cand + size:
                    break
                cand = round_up(uend, align)
            if cand + size - 1 <= last:
                return cand
        return None

    def free(self, iova: int) -> None:
        """Give back the range that starts at ``iova``."""
        iova = args.integer(iova, "iova")
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
