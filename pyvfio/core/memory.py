"""Memory for device DMA.

A :class:`DmaBuffer` is page-aligned process memory (anonymous, memfd, or
hugetlb pages) that an IOMMU backend pins and maps at an IOVA.  Python sees it
as a ``memoryview``; the device sees it at the IOVA (:mod:`pyvfio.core.iova`
chooses it).
"""
from __future__ import annotations

import mmap as _mmap
import os
from typing import Any, Optional, Set, Tuple

from pyvfio import errors
from pyvfio.core import args, syscalls
from pyvfio.core.handle import Handle
from pyvfio.core.sysfs import host
from pyvfio.core.uapi import ffi

__all__ = ["DmaBuffer", "PAGE_SIZE", "HUGE_2M", "HUGE_1G", "round_up"]

PAGE_SIZE = _mmap.PAGESIZE
HUGE_2M = 2 << 20
HUGE_1G = 1 << 30

_MFD_HUGE_SHIFT = 26    # MFD_HUGE_* encode log2(page size) at this bit


def round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


#: The largest buffer accepted: the x86-64/arm64 user address space (47/48 bits).
MAX_SIZE = 1 << 47


class DmaBuffer(Handle):
    """Page-aligned memory a device can read and write by DMA.

    ``kind`` is ``"anonymous"`` (shared anonymous pages), ``"memfd"`` (a
    memfd, which another process or vhost can map too) or ``"hugetlb"``
    (a memfd of huge pages of ``page_size`` 2 MiB or 1 GiB, reserved through
    /proc/sys/vm/nr_hugepages or the sysfs hugepages directory).
    """

    name = "DMA buffer"

    def __init__(self, size: int, kind: str = "anonymous", *,
                 page_size: Optional[int] = None, name: str = "pyvfio-dma") -> None:
        self.name = "DMA buffer"
        self._mmap: Optional[_mmap.mmap] = None
        self.fd: Optional[int] = None
        size = args.integer(size, "DMA buffer size", lo=1, hi=MAX_SIZE)
        args.choice(kind, "DMA buffer kind", ("anonymous", "memfd", "hugetlb"))
        if not isinstance(name, str) or "\0" in name:
            raise errors.ArgumentTypeError(f"DMA buffer name must be a str, not {name!r}")
        if page_size is not None:
            page_size = args.integer(page_size, "page_size", lo=PAGE_SIZE, hi=HUGE_1G)
            if page_size & (page_size - 1):
                raise errors.InvalidArgumentError(
                    f"page_size must be a power of two, not {page_size:#x}")
            if kind != "hugetlb" and page_size != PAGE_SIZE:
                raise errors.InvalidArgumentError(
                    f"page_size {page_size:#x} needs kind='hugetlb'",
                    remedy="DmaBuffer(size, 'hugetlb', page_size=HUGE_2M)")
        if kind == "hugetlb":
            page_size = page_size or HUGE_2M
        self.page_size = page_size or PAGE_SIZE
        self.kind = kind
        self.size = round_up(size, self.page_size)
        self.name = f"DMA buffer of {self.size:#x} bytes"
        self._ptr = None
        self.spaces: Set[Any] = set()   # I/O address spaces that map this buffer
        self._locked = False            # mlock'ed for physical_address()
        try:
            if kind == "anonymous":
                self._mmap = syscalls.mmap(-1, self.size, what="DMA buffer")
            else:
                flags = 0
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
            raise errors.ClosedError(self.name, device=self.name)

    _check_open = _check

    @property
    def view(self) -> memoryview:
        """A memoryview of the whole buffer; release it before :meth:`close`."""
        self._check()
        return memoryview(self._mmap)  # type: ignore[arg-type]  # _check: not None

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: Any) -> Any:
        self._check()
        if not isinstance(key, (int, slice)) or isinstance(key, bool):
            raise errors.ArgumentTypeError(f"a DMA buffer index must be an int or a slice, "
                                           f"not {key!r}", device=self.name)
        try:
            return self._mmap[key]          # type: ignore[index]
        except IndexError:
            raise errors.OutOfBoundsError(f"index {key} is outside the {self.size:#x}-byte "
                                          "DMA buffer", device=self.name) from None
        except (TypeError, ValueError) as exc:
            raise errors.InvalidArgumentError(f"bad DMA buffer index {key!r}: {exc}",
                                              device=self.name) from None

    def __setitem__(self, key: Any, value: Any) -> None:
        self._check()
        if not isinstance(key, (int, slice)) or isinstance(key, bool):
            raise errors.ArgumentTypeError(f"a DMA buffer index must be an int or a slice, "
                                           f"not {key!r}", device=self.name)
        if isinstance(key, int):
            value = args.integer(value, "byte value", device=self.name, hi=0xFF)
        else:
            value = args.data(value, "data", device=self.name)
        try:
            self._mmap[key] = value         # type: ignore[index]
        except IndexError:
            raise errors.OutOfBoundsError(f"index {key} is outside the {self.size:#x}-byte "
                                          "DMA buffer", device=self.name) from None
        except (TypeError, ValueError) as exc:
            raise errors.InvalidArgumentError(f"cannot store at {key!r}: {exc}",
                                              device=self.name) from None

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``, bounds-checked."""
        offset, size = self._bounds(offset, size)
        return self._mmap[offset:offset + size]      # type: ignore[index]

    def write(self, offset: int, data: bytes) -> None:
        """Copy ``data`` to ``offset``, bounds-checked."""
        data = args.data(data, "data", device=self.name)  # type: ignore[assignment]
        offset, n = self._bounds(offset, len(data))
        self._mmap[offset:offset + n] = data         # type: ignore[index]

    def fill(self, byte: int = 0) -> None:
        """Set every byte of the buffer to ``byte`` (0..255)."""
        self._check()
        byte = args.integer(byte, "fill byte", device=self.name, hi=0xFF)
        ffi.memmove(self._ptr, bytes([byte]) * self.size, self.size)

    def _bounds(self, offset: int, size: int) -> Tuple[int, int]:
        self._check()
        offset = args.integer(offset, "offset", device=self.name, lo=None, hi=None)
        size = args.integer(size, "size", device=self.name, lo=None, hi=None)
        if offset < 0 or size < 0 or offset + size > self.size:
            raise errors.OutOfBoundsError(
                f"access of {size} bytes at {offset:#x} is outside the {self.size:#x}-byte "
                "DMA buffer", device=self.name)
        return offset, size

    def physical_address(self, offset: int = 0) -> int:
        """The physical address of byte ``offset``, for no-IOMMU DMA.

        Reads /proc/self/pagemap (root only).  The page is locked in memory
        first; a DMA longer than a page needs physically contiguous memory:
        use ``kind="hugetlb"``.
        """
        offset, _ = self._bounds(offset, 1)
        if not self._locked:
            syscalls.mlock(self.vaddr, self.size)
            self._locked = True
        vaddr = self.vaddr + offset
        pagemap = host().proc_path("self", "pagemap")
        fd = syscalls.open(pagemap, os.O_RDONLY)
        try:
            entry = int.from_bytes(syscalls.pread(fd, 8, (vaddr // PAGE_SIZE) * 8), "little")
        finally:
            syscalls.close(fd)
        pfn = entry & ((1 << 55) - 1)
        if not entry >> 63 or not pfn:
            raise errors.PermissionDeniedError(
                "the kernel did not reveal the page's physical address", path=pagemap,
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

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"vaddr={getattr(self, 'vaddr', 0):#x}"
        return f"<DmaBuffer {self.kind} {self.size:#x} bytes {state}>"
