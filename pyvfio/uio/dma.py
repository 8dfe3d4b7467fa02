"""DMA without an IOMMU: the device is given physical addresses.

Nothing between the device and memory checks what it touches, so a process
that drives a device through UIO can have it read or write any byte of the
machine.  The first bus address handed out in a process comes with a
:class:`UioDmaWarning` saying so, and whether the kernel already carries the
user taint (``uio_msi`` sets it on first open, as VFIO's no-IOMMU mode does).

Physical addresses come from ``/proc/self/pagemap`` through
:meth:`pyvfio.core.memory.DmaBuffer.physical_address` (which locks the
buffer's pages first).  Without CAP_SYS_ADMIN the kernel shows frame number
0 there and the call is refused.  A transfer longer than a page needs
physically contiguous memory: ``DmaBuffer(size, "hugetlb")``.
"""
from __future__ import annotations

import errno as _errno
import threading
import warnings
from typing import Optional

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.memory import DmaBuffer
from pyvfio.core.sysfs import host

__all__ = ["UioDmaWarning", "bus_address", "kernel_tainted", "TAINT_USER"]

#: The taint bit for "user space did something unsafe" (/proc/sys/kernel/tainted bit 6, 'U').
TAINT_USER = 1 << 6

_warned = False
_lock = threading.Lock()


class UioDmaWarning(RuntimeWarning):
    """DMA through UIO: the device is not isolated by an IOMMU."""


def kernel_tainted() -> Optional[int]:
    """The kernel's taint mask (``/proc/sys/kernel/tainted``), None if unreadable."""
    try:
        return int(syscalls.read_file(host().proc_path("sys", "kernel", "tainted")).strip() or 0)
    except (OSError, ValueError):
        return None


def _warn_once(device: Optional[str]) -> None:
    global _warned
    with _lock:
        if _warned:
            return
        _warned = True
    taint = kernel_tainted()
    note = ("the kernel is tainted (user taint set)" if taint is not None and taint & TAINT_USER
            else "the kernel is not marked tainted")
    warnings.warn(UioDmaWarning(
        f"{device or 'UIO'}: DMA through UIO is not isolated: no IOMMU checks the device's "
        f"accesses, so it can read and write all of memory ({note}). Use VFIO with an "
        "IOMMU where isolation matters."), stacklevel=3)


def bus_address(buf: DmaBuffer, offset: int = 0, *, device: Optional[str] = None) -> int:
    """The address a device driven through UIO uses for ``buf[offset]``.

    Refused with :class:`~pyvfio.errors.PermissionDeniedError` when the
    process may not see physical addresses (no CAP_SYS_ADMIN).
    """
    try:
        addr = buf.physical_address(offset)
    except errors.PermissionDeniedError as exc:
        raise errors.PermissionDeniedError(
            "cannot give the device a bus address: /proc/self/pagemap shows no physical "
            "frame numbers to this process", errno=_errno.EPERM, path=exc.path, device=device,
            op="pagemap",
            remedy="run as root (CAP_SYS_ADMIN); without an IOMMU the device needs "
                   "physical addresses") from None
    _warn_once(device)
    return addr
