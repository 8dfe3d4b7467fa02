"""The process the mock serves: its locked-memory limit, capabilities, physical pages.

Family ``process`` (configuration: ``memlock``, ``cap_sys_rawio``, ``cap_sys_admin``,
``cap_sys_resource``) keeps the accounting of pinned memory every IOMMU
charges, the fake physical frame numbers ``/proc/self/pagemap`` reports, and
the log of DMA faults.
"""
from __future__ import annotations

import dataclasses
import errno
import os
from typing import Any, Dict, List, Optional

from pyvfio.mock.core.family import Family, MockFile, register
from pyvfio.mock.core.uaccess import PAGE_SHIFT, PAGE_SIZE, DmaFault, fail, process_maps

__all__ = ["Process", "Accounting", "FakePhysicalMemory"]


class Accounting:
    """Locked-memory accounting of the (single) process the mock serves.

    ``limit`` is RLIMIT_MEMLOCK in bytes, None for unlimited (as with
    CAP_IPC_LOCK).  ``mm`` counts like ``mm->locked_vm`` (type1, sPAPR and
    iommufd in MM mode), ``user`` like ``user->locked_vm`` (iommufd's default).
    """

    def __init__(self, limit: Optional[int]) -> None:
        self.limit = limit
        self.pages: Dict[str, int] = {"mm": 0, "user": 0}

    def charge(self, npages: int, where: str = "mm") -> None:
        """Account ``npages``; ENOMEM past the limit (nothing is charged then)."""
        if npages <= 0:
            return
        if self.limit is not None and self.pages[where] + npages > (self.limit >> PAGE_SHIFT):
            raise fail(errno.ENOMEM)
        self.pages[where] += npages

    def uncharge(self, npages: int, where: str = "mm") -> None:
        self.pages[where] = max(0, self.pages[where] - max(0, npages))

    @property
    def locked_bytes(self) -> int:
        return (self.pages["mm"] + self.pages["user"]) << PAGE_SHIFT


class FakePhysicalMemory:
    """Physical page numbers for the process's pages, handed out on first look-up.

    The mock has no physical memory; what ``/proc/self/pagemap`` reports (and
    what no-IOMMU DMA goes to) is this bijection.  Frames are numbered from
    ``FIRST_PFN`` up in the order pages are first looked up, so addresses stay
    below small DMA masks (edu's 28 bits) and pages are only physically
    contiguous when looked up in order, as on a real machine.
    """

    FIRST_PFN = 0x2000          # 32 MiB

    def __init__(self) -> None:
        self.pfn_of: Dict[int, int] = {}
        self.vpn_of: Dict[int, int] = {}

    def pfn(self, vpn: int) -> int:
        pfn = self.pfn_of.get(vpn)
        if pfn is None:
            pfn = self.FIRST_PFN + len(self.pfn_of)
            self.pfn_of[vpn] = pfn
            self.vpn_of[pfn] = vpn
        return pfn

    def virt(self, phys: int) -> Optional[int]:
        vpn = self.vpn_of.get(phys // PAGE_SIZE)
        return None if vpn is None else vpn * PAGE_SIZE + phys % PAGE_SIZE


class PagemapFile(MockFile):
    """``/proc/self/pagemap`` with the mock's physical frame numbers (frame 0 without
    CAP_SYS_ADMIN, as Linux shows it)."""

    kind = "pagemap"

    def rw(self, offset: Optional[int], size: int, data: Optional[bytes]) -> Any:
        if data is not None:
            raise fail(errno.EINVAL)
        if offset is None or offset % 8 or size % 8:
            raise fail(errno.EINVAL)
        vmas = process_maps()
        out = bytearray()
        for i in range(size // 8):
            vpn = offset // 8 + i
            addr = vpn * PAGE_SIZE
            present = any(v.start <= addr < v.end for v in vmas)
            pfn = self.kernel.process.physmem.pfn(vpn) if self.kernel.process.cap_sys_admin else 0
            entry = ((1 << 63) | pfn) if present else 0
            out += entry.to_bytes(8, "little")
        return bytes(out)



@register
class Process(Family):
    """The process the mock kernel serves."""

    name = "process"

    @dataclasses.dataclass
    class Config:
        #: RLIMIT_MEMLOCK in bytes (None: unlimited, as with CAP_IPC_LOCK).
        memlock: Optional[int] = None
        #: CAP_SYS_RAWIO (no-IOMMU VFIO needs it).
        cap_sys_rawio: bool = True
        #: CAP_SYS_RESOURCE (iommufd's accounting modes).
        cap_sys_resource: bool = True
        #: CAP_SYS_ADMIN: without it /proc/self/pagemap shows frame number 0.
        cap_sys_admin: bool = True

    def __init__(self, kernel: Any, config: "Process.Config") -> None:
        super().__init__(kernel, config)
        self.cap_sys_rawio = config.cap_sys_rawio
        self.cap_sys_resource = config.cap_sys_resource
        self.cap_sys_admin = config.cap_sys_admin
        self.accounting = Accounting(config.memlock)
        self.physmem = FakePhysicalMemory()
        #: Every DMA an IOMMU or a device refused, in order.
        self.faults: List[DmaFault] = []

    def setup(self) -> None:
        for path in ("/proc/self/pagemap", f"/proc/{os.getpid()}/pagemap"):
            self.kernel.add_node(path, lambda p: PagemapFile(self.kernel, p))

    @property
    def locked_bytes(self) -> int:
        """Memory accounted as locked by the mock IOMMUs, in bytes."""
        return self.accounting.locked_bytes

    def leaks(self) -> List[str]:
        if self.accounting.locked_bytes:
            return [f"{self.accounting.locked_bytes:#x} bytes still accounted as locked memory"]
        return []
