"""VFIO capability chains as the kernel writes them into an info struct.

Shared by the mock's type1 container and iommufd's VFIO compatibility
(``IOMMU_VFIO_IOAS``), which answer ``VFIO_IOMMU_GET_INFO`` alike.
"""
from __future__ import annotations

from typing import Any, List, Tuple

from pyvfio.core.uapi import ffi, lib

__all__ = ["new_cap", "dma_avail_cap", "iova_range_cap", "link_caps"]


def dma_avail_cap(avail: int) -> bytes:
    """VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL as the kernel writes it."""
    cap = ffi.new("struct vfio_iommu_type1_info_dma_avail *")
    cap.header.id = lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL
    cap.header.version = 1
    cap.avail = avail
    return bytes(ffi.buffer(cap))


def new_cap(ctype: str, cap_id: int, entry: str, count: int, *, pad: bool = False) -> Any:
    """A zeroed capability ``ctype`` with ``count`` trailing ``entry`` structs, id and
    version 1 set; ``pad`` rounds its size up to 8 bytes.  Returns (cap pointer, buffer)."""
    size = ffi.sizeof(ctype) + count * ffi.sizeof(entry)
    if pad:
        size = (size + 7) & ~7
    buf = ffi.new("char[]", size)
    cap = ffi.cast(ctype + " *", buf)
    cap.header.id = cap_id
    cap.header.version = 1
    return cap, buf


def iova_range_cap(ranges: List[Tuple[int, int]]) -> bytes:
    """VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE listing inclusive (start, end) ranges."""
    cap, buf = new_cap("struct vfio_iommu_type1_info_cap_iova_range",
                       lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE, "struct vfio_iova_range",
                       len(ranges))
    cap.nr_iovas = len(ranges)
    for i, (lo, hi) in enumerate(ranges):
        cap.iova_ranges[i].start = lo
        cap.iova_ranges[i].end = hi
    return bytes(ffi.buffer(buf))


def link_caps(chain: List[bytes], base: int) -> bytes:
    """Concatenate capabilities (each padded to 8 bytes) and link their ``next`` fields.

    ``base`` is the offset of the first one from the start of the info struct,
    as vfio_info_cap_shift leaves them.
    """
    out = bytearray()
    offsets = []
    for cap in chain:
        offsets.append(len(out))
        padded = cap + bytes((-len(cap)) % 8)
        out += padded
    next_at = ffi.offsetof("struct vfio_info_cap_header", "next")
    for i, off in enumerate(offsets):
        nxt = base + offsets[i + 1] if i + 1 < len(offsets) else 0
        out[off + next_at:off + next_at + 4] = nxt.to_bytes(4, "little")
    return bytes(out)
