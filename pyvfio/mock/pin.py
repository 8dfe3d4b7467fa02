"""Pinned pages for the mock IOMMUs: DMA keeps reaching the pages pinned at map time.

The kernel pins the pages behind a DMA mapping (pin_user_pages): if the
process then unmaps that memory, or maps something new at the same address,
the device still reads and writes the *old* pages.  The mock reaches process
memory by address, so without this it would write into whatever was mapped
there later.  :class:`Pin` keeps a second mapping of shared memory (a
DmaBuffer is shared anonymous memory or a memfd) made with
``mremap(addr, 0, size, MREMAP_MAYMOVE)``, which maps the same pages again;
DMA goes through it.  Private memory cannot be aliased: there DMA goes to the
process address, and the mock records a fault once it is no longer mapped.
"""
from __future__ import annotations

import weakref
from typing import Any, Optional

import cffi

__all__ = ["Pin"]

_ffi = cffi.FFI()
_ffi.cdef("void *mremap(void *old_address, size_t old_size, size_t new_size, int flags, ...);"
          "int munmap(void *addr, size_t length);")
_libc: Any = None
_MREMAP_MAYMOVE = 1
_MAP_FAILED = 2 ** 64 - 1


def _lib() -> Any:
    global _libc
    if _libc is None:
        _libc = _ffi.dlopen(None)
    return _libc


def _unmap(addr: int, size: int) -> None:
    _lib().munmap(_ffi.cast("void *", addr), size)


class Pin:
    """The pages of ``[vaddr, vaddr+size)`` as pinned at map time."""

    __slots__ = ("vaddr", "size", "alias", "_finalizer", "__weakref__")

    def __init__(self, vaddr: int, size: int) -> None:
        self.vaddr, self.size = vaddr, size
        self.alias: Optional[int] = None
        self._finalizer: Any = None
        if size <= 0:
            return
        ret = _lib().mremap(_ffi.cast("void *", vaddr), 0, size, _MREMAP_MAYMOVE)
        addr = int(_ffi.cast("uintptr_t", ret))
        if addr != _MAP_FAILED:
            self.alias = addr
            self._finalizer = weakref.finalize(self, _unmap, addr, size)

    def address(self, vaddr: int) -> int:
        """Where the mock reaches the pinned byte at process address ``vaddr``."""
        if self.alias is None:
            return vaddr
        return self.alias + (vaddr - self.vaddr)

    def release(self) -> None:
        """Unpin: drop the alias mapping."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self.alias = None
