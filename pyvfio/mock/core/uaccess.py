"""The mock kernel's side of user memory: errors, copies in and out, user eventfds.

The mock reads and writes the caller's memory the way the kernel's
``copy_from_user``/``copy_to_user`` do, through :mod:`pyvfio.core.uapi`'s ``ffi``.
DMA by the mock devices goes to real process memory; before touching it the
mock checks ``/proc/self/maps`` so that a wrong address is a recorded fault
rather than a crash of the test process.
"""
from __future__ import annotations

import bisect
import errno
import mmap
import os
import select
import sys
from typing import Any, List, NamedTuple, Optional, Tuple

from pyvfio.core.uapi import ffi

PAGE_SIZE = mmap.PAGESIZE
PAGE_SHIFT = PAGE_SIZE.bit_length() - 1
PAGE_MASK = ~(PAGE_SIZE - 1)
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
ULONG_MAX = U64_MAX if sys.maxsize > 2 ** 32 else U32_MAX


def fail(err: int) -> OSError:
    """The OSError a system call raises when the kernel returns ``-err``."""
    return OSError(err, os.strerror(err))


def addr_of(arg: Any) -> int:
    """The user address an ioctl argument carries (cdata pointer, int or None)."""
    if arg is None:
        return 0
    if isinstance(arg, int):
        return arg
    if isinstance(arg, ffi.CData):
        return int(ffi.cast("uintptr_t", arg))
    raise TypeError(f"ioctl argument must be a cffi pointer or an int, not {type(arg).__name__}")


def field_end(ctype: str, field: str) -> int:
    """``offsetofend(ctype, field)``."""
    ftype = dict(ffi.typeof(ctype).fields)[field].type
    return int(ffi.offsetof(ctype, field) + ffi.sizeof(ftype))


def copy_from_user(addr: int, ctype: str, size: Optional[int] = None) -> Any:
    """A kernel-side copy of the first ``size`` bytes of a user struct (rest zero)."""
    if not addr:
        raise fail(errno.EFAULT)
    full = ffi.sizeof(ctype)
    n = full if size is None else max(0, min(size, full))
    p = ffi.new(ctype + " *")
    if n:
        ffi.memmove(p, ffi.cast("char *", addr), n)
    return p


def copy_args(addr: int, ctype: str, last: str, *, flags: Optional[int] = None) -> Any:
    """Read an ioctl argument up to field ``last`` and check it as the kernel does.

    EINVAL when ``argsz`` is below that size, or when ``flags`` is given and
    the argument's flags have bits outside it.
    """
    minsz = field_end(ctype, last)
    arg = copy_from_user(addr, ctype, minsz)
    if arg.argsz < minsz or (flags is not None and arg.flags & ~flags):
        raise fail(errno.EINVAL)
    return arg


def copy_to_user(addr: int, src: Any, size: int) -> None:
    """Write the first ``size`` bytes of the kernel-side struct ``src`` back."""
    if not addr:
        raise fail(errno.EFAULT)
    if size > 0:
        ffi.memmove(ffi.cast("char *", addr), src, size)


def read_user(addr: int, size: int) -> bytes:
    """``size`` bytes of user memory at ``addr``."""
    if not addr and size:
        raise fail(errno.EFAULT)
    return bytes(ffi.buffer(ffi.cast("char *", addr), size)) if size else b""


def write_user(addr: int, data: bytes) -> None:
    """Store ``data`` in user memory at ``addr``."""
    if not addr and data:
        raise fail(errno.EFAULT)
    if data:
        ffi.memmove(ffi.cast("char *", addr), data, len(data))


def u32(value: int) -> int:
    return value & U32_MAX


class _Vma(NamedTuple):
    start: int
    end: int
    readable: bool
    writable: bool


def process_maps() -> List[_Vma]:
    """The mappings of this process, sorted, from ``/proc/self/maps``."""
    vmas = []
    with open("/proc/self/maps", "rb") as f:
        for line in f:
            span, perms = line.split(None, 2)[:2]
            lo, hi = span.split(b"-")
            vmas.append(_Vma(int(lo, 16), int(hi, 16), perms[0:1] == b"r", perms[1:2] == b"w"))
    vmas.sort()
    return vmas


def user_range_ok(addr: int, length: int, write: bool = False, read: bool = True) -> bool:
    """Whether ``[addr, addr+length)`` is mapped in this process with the rights asked."""
    if length <= 0:
        return True
    if addr <= 0 or addr + length > ULONG_MAX:
        return False
    vmas = process_maps()
    starts = [v.start for v in vmas]
    pos = addr
    end = addr + length
    while pos < end:
        i = bisect.bisect_right(starts, pos) - 1
        if i < 0:
            return False
        vma = vmas[i]
        if not (vma.start <= pos < vma.end):
            return False
        if (read and not vma.readable) or (write and not vma.writable):
            return False
        pos = vma.end
    return True


def is_eventfd(fd: int) -> Optional[bool]:
    """True for an eventfd, False for another open fd, None for a closed one."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return target == "anon_inode:[eventfd]"


class EventFd:
    """A reference to the caller's eventfd, kept the way the kernel keeps an eventfd_ctx.

    The kernel holds the eventfd context, not the fd number, so the caller may
    close its fd and signals still arrive; the mock keeps a private duplicate.
    """

    __slots__ = ("fd", "origin")

    def __init__(self, fd: int, origin: int) -> None:
        self.fd = fd
        self.origin = origin

    @classmethod
    def get(cls, fd: int) -> "EventFd":
        """``eventfd_ctx_fdget``: EBADF for a bad fd, EINVAL for a non-eventfd."""
        if fd < 0:
            raise fail(errno.EBADF)
        kind = is_eventfd(fd)
        if kind is None:
            raise fail(errno.EBADF)
        if not kind:
            raise fail(errno.EINVAL)
        return cls(os.dup(fd), fd)

    def signal(self, count: int = 1) -> None:
        """``eventfd_signal``: add to the counter.

        The file status flags are shared with the caller's fd, so they are
        left alone; a write only blocks at a counter near 2**64, never here.
        """
        if self.fd >= 0:
            os.write(self.fd, count.to_bytes(8, sys.byteorder))

    def pending(self) -> bool:
        """Whether the counter is non-zero (a signal is waiting)."""
        if self.fd < 0:
            return False
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        return bool(p.poll(0))

    def consume(self) -> int:
        """Read and clear the counter if it is set, as the kernel's virqfd does."""
        if not self.pending():
            return 0
        return int.from_bytes(os.read(self.fd, 8), sys.byteorder)

    def put(self) -> None:
        """Drop the reference."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class DmaFault(NamedTuple):
    """A DMA the IOMMU (or the device) refused, as the DMAR/fault log would show it."""
    device: str
    iova: int
    length: int
    write: bool
    reason: str


class Translation(NamedTuple):
    """The answer of a DMA space for the bytes starting at an IOVA.

    ``vaddr`` is the process address of ``iova`` (None: fault), ``length`` how
    many bytes from there share that answer, ``reason`` why it faulted.
    """
    vaddr: Optional[int]
    length: int
    reason: str = ""


def overlaps(a_start: int, a_len: int, b_start: int, b_len: int) -> bool:
    return a_start < b_start + b_len and b_start < a_start + a_len


def pages_spanned(addr: int, length: int) -> int:
    """How many pages ``[addr, addr+length)`` touches."""
    if length <= 0:
        return 0
    first = addr >> PAGE_SHIFT
    last = (addr + length - 1) >> PAGE_SHIFT
    return last - first + 1


def copy_span(translate: Any, iova: int, length: int,
              write: bool) -> List[Tuple[int, int, Optional[int], str]]:
    """Split ``[iova, iova+length)`` into (iova, len, vaddr|None, reason) runs."""
    runs = []
    pos = iova
    end = iova + length
    while pos < end:
        t: Translation = translate(pos, write)
        n = max(1, min(t.length, end - pos))
        runs.append((pos, n, t.vaddr, t.reason))
        pos += n
    return runs
