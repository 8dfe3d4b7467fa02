"""The machine's IOMMU hardware, as the mock's VFIO containers and iommufd see it.

Family ``iommu``.  Its configuration describes the platform; the defaults are
what Linux 6.12 reports on QEMU's q35 with its VT-d (the lab's guests): a
48-bit aperture with 4K/2M/1G pages, the MSI window reserved, no snoop
control (``cache_coherent``), ``IOMMU_GET_HW_INFO`` of type NONE
(``iommu_hw_info="intel_vtd"`` gives QEMU's VT-d registers).  ``iommu`` is
``"type1"`` (x86 VT-d like), ``"spapr"`` (POWER TCE: the 32-bit window
``spapr_dma32`` (start, size), the largest dynamic window, EEH) or ``"none"``.
``spapr_platform`` is the POWER platform (:data:`SPAPR_PLATFORMS`):
``"powernv"`` (bare-metal IODA2, the default) or ``"pseries"`` (a guest of
QEMU 10's pseries machine, as measured in the lab's ppc64le guest); it gives
the defaults of ``spapr_dma32`` and ``eeh``, the TCE page sizes and levels.
"""
from __future__ import annotations

import dataclasses
from typing import Any, List, NamedTuple, Optional, Tuple

from pyvfio.mock.core.family import Family, register

__all__ = ["Iommu", "SpaprPlatform", "SPAPR_PLATFORMS"]


class SpaprPlatform(NamedTuple):
    """What one POWER platform's table group offers to VFIO."""
    dma32: Tuple[int, int]          # default window (start, size)
    pgsizes: int                    # TCE page sizes of dynamic windows
    levels: int                     # most TCE table levels
    eeh: bool                       # VFIO_EEH offered
    # window 0 is remade by ibm,reset-pe-dma-window, refused while a dynamic window exists
    default_window_needs_no_ddw: bool = False


SPAPR_PLATFORMS = {
    # IODA2: TCE pages 4K/64K/2M/1G, up to 5 levels (POWERNV_IOMMU_MAX_LEVELS)
    "powernv": SpaprPlatform((0, 0x80000000), (1 << 12) | (1 << 16) | (1 << 21) | (1 << 30),
                             5, True),
    # QEMU's pseries: ibm,query-pe-dma-window page sizes, a single level, and EEH only
    # for PHBs holding passed-through host devices
    "pseries": SpaprPlatform((0, 0x40000000), (1 << 12) | (1 << 16) | (1 << 21) | (1 << 24),
                             1, False, True),
}


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
        spapr_platform: str = "powernv"
        spapr_dma32: Optional[Tuple[int, int]] = None     # default: the platform's
        spapr_max_window: int = 1 << 40
        eeh: Optional[bool] = None                        # default: the platform's

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
        if config.spapr_platform not in SPAPR_PLATFORMS:
            raise ValueError(f"spapr_platform must be one of {', '.join(SPAPR_PLATFORMS)}")
        #: The POWER platform's answers (:data:`SPAPR_PLATFORMS`).
        self.spapr_platform = SPAPR_PLATFORMS[config.spapr_platform]
        self.spapr_dma32 = config.spapr_dma32 or self.spapr_platform.dma32
        self.spapr_max_window = config.spapr_max_window
        self.eeh = self.spapr_platform.eeh if config.eeh is None else config.eeh

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
