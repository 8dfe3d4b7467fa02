"""UIO: userspace I/O, the kernel's way of handing a device to a process
without an IOMMU (``uio_pci_generic``; ``uio_msi``, the project's driver
whose MSI-X vectors signal eventfds).

The kernel publishes each UIO device as ``/sys/class/uio/uioN`` (its name,
version, memory maps and port regions) and the node ``/dev/uioN``: a 4-byte
``read`` returns the interrupt count, a 4-byte ``write`` re-enables the
interrupt, and ``mmap`` at ``N * page size`` maps memory map N.  With
``uio_msi`` the node also takes ``UIO_MSI_IRQ_SET``, which connects an
MSI-X vector to an eventfd.

Nothing isolates the device's DMA: a device driven through UIO can read and
write all of memory.  :mod:`pyvfio.uio.dma` says so (once per process) when
the first bus address is handed out.
"""
from __future__ import annotations

from pyvfio.uio.device import UioDevice, UioInterrupt, UioMsix, open_uio
from pyvfio.uio.dma import UioDmaWarning, bus_address, kernel_tainted
from pyvfio.uio.maps import UioMemoryMap, UioPortRegion
from pyvfio.uio.sysfs import UIO_DRIVERS, UioMapInfo, UioNode, UioPortInfo, find, nodes

__all__ = [
    "UioDevice", "UioInterrupt", "UioMsix", "open_uio", "UioMemoryMap", "UioPortRegion",
    "UioNode", "UioMapInfo", "UioPortInfo", "UIO_DRIVERS", "nodes", "find",
    "UioDmaWarning", "bus_address", "kernel_tainted",
]
