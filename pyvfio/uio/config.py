"""A PCI function's configuration space through sysfs (``<device>/config``).

UIO offers no configuration access of its own: user space reads and writes
the ``config`` attribute of the parent PCI function (root, for all of it
and for writes).  This is how a UIO driver sets bus mastering and, with
``uio_pci_generic``, clears the command register's INTX_DISABLE bit (bit
10) to re-enable the interrupt the kernel masked.
"""
from __future__ import annotations

import os

from pyvfio.core import syscalls
from pyvfio.core.sysfs import host

__all__ = ["SysfsConfigSpace"]


class SysfsConfigSpace:
    """The :class:`~pyvfio.pci.config.ConfigSpace` of PCI function ``bdf`` via sysfs."""

    def __init__(self, bdf: str) -> None:
        self.bdf = bdf
        self.path = host().sys_path("bus", "pci", "devices", bdf, "config")
        self.fd = syscalls.open(self.path, os.O_RDWR, device=bdf)
        self.size = os.fstat(self.fd).st_size or 256

    def read(self, offset: int, size: int) -> bytes:
        return syscalls.pread(self.fd, size, offset, device=self.bdf)

    def write(self, offset: int, data: bytes) -> None:
        syscalls.pwrite(self.fd, data, offset, device=self.bdf)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            syscalls.close(fd)

    def __repr__(self) -> str:
        return f"<SysfsConfigSpace {self.path}>"
