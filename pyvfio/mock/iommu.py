"""The machine's IOMMU hardware, as the mock's VFIO containers and iommufd see it.

Family ``iommu``.  Its configuration describes the platform; the defaults are
what Linux 6.12 reports on QEMU's q35 with its VT-d (the lab's guests): a
48-bit aperture with 4K/2M/1G pages, the MSI window reserved, no snoop
control (``cache_coherent``), ``IOMMU_GET_HW_INFO`` of type NONE
(``iommu_hw_info="intel_vtd"`` gives QEMU's VT-d registers).  ``iommu`` is
``"type1"`` (x86 VT-d like), ``"spapr"`` (POWER TCE: the 32-bit window
``spapr_dma32`` (start, size), the largest dynamic window, EEH) or ``"none"``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Tuple

from pyvfio.mock.core.family import Family, register

__all__ = ["Iommu"]


@register
class Iommu(Family):
    """The platform IOMMU."""

    name = "iommu"

    @dataclasses.dataclass
    class Config:
        iommu: str = "type1"
        iova_bits: int = 48
        iova_pgsizes: int = 0x1000 | 0x200000 | 0x40000000
        msi_window: Optional[Tuple[int, int]] = (0xFEE00000, 0xFEEFFFFF)
        cache_coherent: bool = False
        iommu_hw_info: str = "none"
        spapr_dma32: Tuple[int, int] = (0, 0x80000000)
        spapr_max_window: int = 1 << 40
        eeh: bool = True

    def __init__(self, kernel: Any, config: "Iommu.Config") -> None:
        super().__init__(kernel, config)
        if config.iommu not in ("type1", "spapr", "none"):
            raise ValueError(f"iommu must be 'type1', 'spapr' or 'none', not {config.iommu!r}")
        if config.iommu_hw_info not in ("none", "intel_vtd"):
            raise ValueError("iommu_hw_info must be 'none' or 'intel_vtd'")
        #: "type1", "spapr" or "none".
        self.kind = config.iommu
        self.iova_bits = config.iova_bits
        self.iova_pgsizes = config.iova_pgsizes
        self.msi_window = config.msi_window
        self.cache_coherent = config.cache_coherent
        self.hw_info = config.iommu_hw_info
        self.spapr_dma32 = config.spapr_dma32
        self.spapr_max_window = config.spapr_max_window
        self.eeh = config.eeh

    def iova_ranges(self) -> List[Tuple[int, int]]:
        """The usable IOVA ranges of a domain: the aperture minus the reserved regions."""
        end = (1 << self.iova_bits) - 1
        ranges = [(0, end)]
        for lo, hi in self.reserved_regions():
            out = []
            for a, b in ranges:
                if hi < a or lo > b:
                    out.append((a, b))
                    continue
                if a < lo:
                    out.append((a, lo - 1))
                if hi < b:
                    out.append((hi + 1, b))
            ranges = out
        return ranges

    def reserved_regions(self) -> List[Tuple[int, int]]:
        return [self.msi_window] if self.msi_window and self.kind == "type1" else []
