"""The interface every IOMMU backend offers: an I/O address space to map DMA into.

A VFIO container (type1, sPAPR TCE, noiommu) and an iommufd IOAS are both an
*I/O address space*: process memory mapped at IOVAs that the devices attached
to it can reach.  :class:`IoAddressSpace` keeps the bookkeeping common to all
of them: the usable IOVA ranges, an allocator within them, and the table of
live mappings, so that closing the space releases every mapping and pinned
page.  Backends implement ``_map``, ``_unmap`` and ``_ranges``.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple, Union

from pyvfio import errors
from pyvfio.core import args
from pyvfio.core.handle import Handle
from pyvfio.core.iova import IovaAllocator
from pyvfio.core.memory import PAGE_SIZE, DmaBuffer

__all__ = ["DmaMapping", "IoAddressSpace"]


class DmaMapping(NamedTuple):
    """Process memory ``[vaddr, vaddr+size)`` visible to devices at ``iova``."""
    iova: int
    size: int
    vaddr: int
    readable: bool
    writable: bool
    buffer: Optional[DmaBuffer]


class IoAddressSpace(Handle):
    """Base of the IOMMU backends: map, unmap, and release everything on close."""

    #: name used in messages (the device or node the space belongs to)
    name: str = "IOMMU"

    def __init__(self) -> None:
        self._mappings: Dict[int, DmaMapping] = {}
        self._per_buffer: Dict[int, int] = {}      # id(buffer) -> its mappings here
        self._allocator: Optional[IovaAllocator] = None

    # -- backend hooks --------------------------------------------------------
    def _ranges(self) -> List[Tuple[int, int]]:
        raise NotImplementedError

    def _pgsize(self) -> int:
        return PAGE_SIZE

    def _map(self, vaddr: int, iova: int, size: int, readable: bool, writable: bool) -> None:
        raise NotImplementedError

    def _unmap(self, iova: int, size: int) -> Optional[int]:
        """Remove [iova, iova+size); return the bytes the kernel says it unmapped."""
        raise NotImplementedError

    def _unmap_everything(self) -> None:
        for m in list(self._mappings.values()):
            self._unmap(m.iova, m.size)

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ClosedError(self.name, device=self.name)

    # -- public -------------------------------------------------------------------
    def iova_ranges(self) -> List[Tuple[int, int]]:
        """The usable IOVA ranges as inclusive (start, last) pairs."""
        self._check_open()
        return list(self._ranges())

    @property
    def allocator(self) -> IovaAllocator:
        """The IOVA allocator over :meth:`iova_ranges` (built on first use)."""
        self._check_open()
        if self._allocator is None:
            self._allocator = IovaAllocator(self._ranges(), alignment=self._pgsize())
            for m in self._mappings.values():
                self._allocator.reserve(m.iova, m.size)
        return self._allocator

    @property
    def mappings(self) -> List[DmaMapping]:
        """The live mappings, by IOVA."""
        return sorted(self._mappings.values())

    def map(self, buffer: Union[DmaBuffer, None] = None, *, iova: Optional[int] = None,
            vaddr: Optional[int] = None, size: Optional[int] = None, offset: int = 0,
            readable: bool = True, writable: bool = True,
            dma_mask_bits: Optional[int] = None) -> DmaMapping:
        """Map ``buffer`` (or raw ``vaddr``/``size``) for DMA; returns the mapping.

        With ``iova=None`` an IOVA is chosen inside the usable ranges (and
        below ``dma_mask_bits``); a given IOVA outside them is refused before
        the kernel sees it.
        """
        self._check_open()
        name = self.name
        readable = args.boolean(readable, "readable", device=name)
        writable = args.boolean(writable, "writable", device=name)
        if not (readable or writable):
            raise errors.InvalidArgumentError("a DMA mapping must be readable or writable",
                                              device=name)
        if dma_mask_bits is not None:
            dma_mask_bits = args.integer(dma_mask_bits, "dma_mask_bits", device=name, lo=12,
                                         hi=64)
        if iova is not None:
            iova = args.integer(iova, "iova", device=name)
        offset = args.integer(offset, "offset", device=name, hi=None)
        if size is not None:
            size = args.integer(size, "size", device=name, lo=0)
            if size == 0:
                raise errors.InvalidArgumentError(
                    "size 0: a DMA mapping needs at least one page", device=name,
                    remedy="leave size=None to map the whole buffer")
        if buffer is not None:
            if not isinstance(buffer, DmaBuffer):
                raise errors.ArgumentTypeError(
                    f"buffer must be a DmaBuffer, not {type(buffer).__name__}", device=name,
                    remedy="map raw memory with vaddr= and size= instead")
            if vaddr is not None:
                raise errors.InvalidArgumentError("give a buffer or a vaddr, not both",
                                                  device=name)
            buffer._check()
            size = buffer.size - offset if size is None else size
            if offset + size > buffer.size or size <= 0:
                raise errors.OutOfBoundsError(
                    f"{size:#x} bytes at {offset:#x} do not fit the {buffer.size:#x}-byte buffer",
                    device=name)
            vaddr = buffer.vaddr + offset
        elif vaddr is None or size is None:
            raise errors.InvalidArgumentError(
                "map() needs a DmaBuffer, or both vaddr= and size=", device=name)
        else:
            vaddr = args.integer(vaddr, "vaddr", device=name)
        pgsize = self._pgsize()
        if vaddr % pgsize or size % pgsize:
            raise errors.InvalidArgumentError(
                f"vaddr {vaddr:#x} and size {size:#x} must be multiples of the IOMMU page size "
                f"{pgsize:#x}", device=name,
                remedy=f"map whole pages: round size up to a multiple of {pgsize:#x} (a "
                       "DmaBuffer is already page-aligned; use offset= in whole pages; this "
                       f"system's page size is {PAGE_SIZE:#x}: use mmap.PAGESIZE, not 4096)")
        if vaddr + size - 1 > args.U64:         # an IOVA past the end: the allocator says so
            raise errors.InvalidArgumentError(
                f"{size:#x} bytes at {vaddr:#x} run past the end of the 64-bit address space",
                device=name)
        alloc = self.allocator
        if iova is None:
            iova = alloc.alloc(size, page_size=buffer.page_size if buffer is not None else None,
                               dma_mask_bits=dma_mask_bits)
        else:
            alloc.reserve(iova, size, device=self.name)
        try:
            self._map(vaddr, iova, size, readable, writable)
        except BaseException:
            alloc.free(iova)
            raise
        return self._record(DmaMapping(iova, size, vaddr, readable, writable, buffer))

    def _record(self, m: DmaMapping) -> DmaMapping:
        """Account for a mapping the kernel made (its IOVA already claimed)."""
        self._mappings[m.iova] = m
        if m.buffer is not None:
            m.buffer.spaces.add(self)
            self._per_buffer[id(m.buffer)] = self._per_buffer.get(id(m.buffer), 0) + 1
        return m

    def unmap(self, mapping: Union[DmaMapping, int]) -> int:
        """Remove a mapping (given as the mapping or its IOVA); returns the bytes unmapped.

        The count is the kernel's (``VFIO_IOMMU_UNMAP_DMA``'s ``size``,
        ``IOMMU_IOAS_UNMAP``'s ``length`` on return).
        """
        self._check_open()
        iova = mapping.iova if isinstance(mapping, DmaMapping) else \
            args.integer(mapping, "mapping (a DmaMapping or its IOVA)", device=self.name)
        m = self._mappings.get(iova)
        if m is None:
            inside = [o for o in self._mappings.values() if o.iova < iova < o.iova + o.size]
            if inside:
                o = inside[0]
                raise errors.IovaError(
                    f"IOVA {iova:#x} lies inside the mapping at {o.iova:#x} "
                    f"({o.size:#x} bytes)", device=self.name,
                    remedy=f"unmap the whole mapping at IOVA {o.iova:#x}")
            raise errors.IovaError(f"no mapping at IOVA {iova:#x}", device=self.name,
                                   remedy="pass the IOVA that map() returned")
        done = self._unmap(m.iova, m.size)
        self._forget(m)
        return m.size if done is None else done

    def _forget(self, m: DmaMapping) -> None:
        del self._mappings[m.iova]
        if self._allocator is not None:
            self._allocator.free(m.iova)
        buf = m.buffer
        if buf is not None:
            left = self._per_buffer.pop(id(buf)) - 1
            if left:
                self._per_buffer[id(buf)] = left
            else:
                buf.spaces.discard(self)

    def unmap_buffer(self, buffer: DmaBuffer) -> None:
        """Remove every mapping of ``buffer`` in this space."""
        for m in [m for m in self._mappings.values() if m.buffer is buffer]:
            if self._closed:
                self._mappings.pop(m.iova, None)
            else:
                self.unmap(m)
        self._per_buffer.pop(id(buffer), None)
        buffer.spaces.discard(self)

    def unmap_all(self) -> None:
        """Remove every mapping made through this object."""
        self._check_open()
        if self._mappings:
            self._unmap_everything()
        for m in list(self._mappings.values()):
            self._forget(m)
        if self._allocator is not None:
            self._allocator.clear()

    def release_dma(self) -> None:
        """Remove every mapping, and what the backend pinned for them, keeping the space open.

        An owner calls it while the IOMMU still exists (before detaching the
        last group from a container, for instance).
        """
        self._check_open()
        if self._mappings:
            self.unmap_all()

    def iova_of(self, buffer: DmaBuffer, offset: int = 0) -> int:
        """The IOVA at which ``buffer[offset]`` is mapped."""
        self._check_open()
        if not isinstance(buffer, DmaBuffer):
            raise errors.ArgumentTypeError(
                f"buffer must be a DmaBuffer, not {type(buffer).__name__}", device=self.name)
        buffer._check()
        offset = args.integer(offset, "offset", device=self.name, hi=buffer.size - 1)
        addr = buffer.vaddr + offset
        for m in self._mappings.values():
            if m.vaddr <= addr < m.vaddr + m.size:
                return m.iova + (addr - m.vaddr)
        raise errors.IovaError(f"{buffer!r} is not mapped in {self.name}")

