"""PCI functions as the kernel shows them in sysfs, and their configuration space.

- :mod:`~pyvfio.pci.address` — :class:`PciAddress`, the one parser of ``domain:bus:slot.function``;
- :mod:`~pyvfio.pci.device` — :class:`PciDevice`: identity, driver binding through
  ``driver_override``, SR-IOV; :func:`devices`, :func:`find`, :func:`get`;
- :mod:`~pyvfio.pci.iommu_group` — IOMMU group members and VFIO's viability rule;
- :mod:`~pyvfio.pci.config` — configuration space registers and capabilities.
"""
from __future__ import annotations

from pyvfio.pci.address import PciAddress
from pyvfio.pci.device import PciDevice, Resource, devices, find, get
from pyvfio.pci.iommu_group import (IOMMU_GROUPS, IOMMU_OFF_REMEDY, USER_DMA_DRIVERS,
                                    driver_allows_user_dma, group_blockers, group_entries,
                                    host_has_iommu_groups, not_viable_error)

__all__ = [
    "PciAddress", "PciDevice", "Resource", "USER_DMA_DRIVERS", "driver_allows_user_dma",
    "devices", "find", "get", "group_entries", "group_blockers", "not_viable_error",
    "IOMMU_GROUPS", "IOMMU_OFF_REMEDY", "host_has_iommu_groups",
]
