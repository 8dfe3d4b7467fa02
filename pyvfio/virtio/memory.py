"""Driver memory as a virtio device sees it: DMA buffers placed at device addresses.

A virtio driver writes *device addresses* into descriptors.  What they mean
depends on the transport: guest-physical addresses that vhost translates
through its memory table (``VHOST_SET_MEM_TABLE``), IOVAs that vhost-vdpa or
an IOMMU translates through an IOTLB, or the offsets a VDUSE device maps.  A
:class:`DeviceMemory` keeps the placement: each :class:`~pyvfio.core.memory.DmaBuffer`
added to it sits at one device address, and :meth:`DeviceMemory.alloc` hands
out :class:`Region` pieces of them for rings and data.  The virtqueues only ask
a region for its ``addr``; they never know which transport placed it.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Optional, Tuple

from pyvfio import errors
from pyvfio.core.memory import PAGE_SIZE, DmaBuffer

__all__ = ["DeviceMemory", "Region"]


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


class Region:
    """``size`` bytes at ``offset`` of ``buffer``, seen by the device at ``addr``.

    ``vaddr`` is where the process sees the first byte (vhost wants ring
    addresses as process addresses when it has no IOTLB).
    """

    __slots__ = ("buffer", "offset", "size", "addr")

    def __init__(self, buffer: DmaBuffer, offset: int, size: int, addr: int) -> None:
        self.buffer = buffer
        self.offset = offset
        self.size = size
        self.addr = addr

    @property
    def vaddr(self) -> int:
        return self.buffer.vaddr + self.offset

    def sub(self, offset: int, size: Optional[int] = None) -> "Region":
        """A piece of this region (``size`` None: to its end)."""
        if size is None:
            size = self.size - offset
        if offset < 0 or size < 0 or offset + size > self.size:
            raise errors.OutOfBoundsError(
                f"piece {offset:#x}+{size:#x} is outside the {self.size:#x}-byte region")
        return Region(self.buffer, self.offset + offset, size, self.addr + offset)

    def read(self, offset: int = 0, size: Optional[int] = None) -> bytes:
        if size is None:
            size = self.size - offset
        if offset < 0 or size < 0 or offset + size > self.size:
            raise errors.OutOfBoundsError(
                f"read of {size:#x} bytes at {offset:#x} is outside the {self.size:#x}-byte region")
        return self.buffer.read(self.offset + offset, size)

    def write(self, data: bytes, offset: int = 0) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise errors.OutOfBoundsError(
                f"write of {len(data):#x} bytes at {offset:#x} is outside the "
                f"{self.size:#x}-byte region")
        self.buffer.write(self.offset + offset, data)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        return f"<Region {self.size:#x} bytes at device address {self.addr:#x}>"


class DeviceMemory:
    """DMA buffers at device addresses, with a simple allocator inside them.

    ``base`` is the device address of the first buffer added without an
    explicit address (default 1 MiB: address 0 is left unused so that a
    zeroed descriptor never points at valid memory); later buffers follow,
    page aligned.  ``name`` names the memory in errors.
    """

    def __init__(self, *, base: int = 0x100000, name: str = "device memory") -> None:
        self.name = name
        self._next_addr = base
        self.buffers: List[Tuple[DmaBuffer, int]] = []     # (buffer, device address)
        self._owned: List[DmaBuffer] = []
        self._cursor: List[int] = []                       # bump pointer per buffer

    # -- placement --------------------------------------------------------------
    def add(self, buffer: DmaBuffer, addr: Optional[int] = None) -> int:
        """Place ``buffer`` at device address ``addr`` (None: the next free one)."""
        if addr is None:
            addr = _round_up(self._next_addr, max(PAGE_SIZE, buffer.page_size))
        for other, oaddr in self.buffers:
            if other is buffer:
                raise errors.InvalidArgumentError("buffer already placed", device=self.name)
            if addr < oaddr + other.size and oaddr < addr + buffer.size:
                raise errors.IovaError(
                    f"device range {addr:#x}+{buffer.size:#x} overlaps a buffer at {oaddr:#x}",
                    device=self.name)
        self.buffers.append((buffer, addr))
        self._cursor.append(0)
        self._next_addr = max(self._next_addr, addr + buffer.size)
        return addr

    def new_buffer(self, size: int, kind: str = "memfd", addr: Optional[int] = None) -> DmaBuffer:
        """Allocate a DMA buffer owned by this memory (freed by :meth:`close`) and place it.

        ``memfd`` memory is shared and file backed, which every transport can
        map (vdpa_sim in VA mode maps nothing else).
        """
        buf = DmaBuffer(size, kind, name="pyvfio-virtio")
        try:
            self.add(buf, addr)
        except BaseException:
            buf.close()
            raise
        self._owned.append(buf)
        return buf

    def addr(self, buffer: DmaBuffer, offset: int = 0) -> int:
        """The device address of byte ``offset`` of ``buffer``."""
        for buf, addr in self.buffers:
            if buf is buffer:
                if not 0 <= offset < buf.size:
                    raise errors.OutOfBoundsError(f"offset {offset:#x} outside the buffer",
                                                  device=self.name)
                return addr + offset
        raise errors.InvalidArgumentError(
            "buffer is not placed in this device memory", device=self.name,
            remedy="add it first: memory.add(buffer)")

    def region(self, buffer: DmaBuffer, offset: int = 0, size: Optional[int] = None) -> Region:
        """A :class:`Region` of a placed buffer."""
        for what, value in (("offset", offset), ("size", size)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise errors.InvalidArgumentError(
                    f"region {what} {value!r} is not an integer", device=self.name,
                    remedy=f"pass {what} as an int inside the buffer")
        if size is None:
            size = buffer.size - offset
        return Region(buffer, offset, size, self.addr(buffer, offset))

    def alloc(self, size: int, align: int = 16) -> Region:
        """Carve ``size`` bytes aligned to ``align`` out of the placed buffers.

        When none has room, a new memfd buffer of at least one page is added.
        """
        if size <= 0:
            raise errors.InvalidArgumentError(f"allocation size must be positive, not {size}",
                                              device=self.name)
        for i, (buf, addr) in enumerate(self.buffers):
            start = _round_up(self._cursor[i], align)
            if start + size <= buf.size:
                self._cursor[i] = start + size
                return Region(buf, start, size, addr + start)
        buf = self.new_buffer(_round_up(size, PAGE_SIZE))
        self._cursor[-1] = size
        return Region(buf, 0, size, self.buffers[-1][1])

    def translate(self, addr: int, size: int) -> Tuple[DmaBuffer, int]:
        """The buffer and offset behind device range ``addr``+``size`` (device side)."""
        for buf, base in self.buffers:
            if base <= addr and addr + size <= base + buf.size:
                return buf, addr - base
        raise errors.OutOfBoundsError(f"device range {addr:#x}+{size:#x} is not in any buffer",
                                      device=self.name)

    def __iter__(self) -> Iterator[Tuple[DmaBuffer, int]]:
        return iter(list(self.buffers))

    def close(self) -> None:
        """Free the buffers this memory allocated (those added by the caller stay theirs)."""
        owned, self._owned = self._owned, []
        keep = [i for i, (b, _) in enumerate(self.buffers) if all(b is not o for o in owned)]
        self.buffers = [self.buffers[i] for i in keep]
        self._cursor = [self._cursor[i] for i in keep]
        for buf in owned:
            buf.close()

    def __enter__(self) -> "DeviceMemory":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
