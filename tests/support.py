"""Helpers shared by the device tests: finding the lab's devices and opening them.

Imported by test modules as ``import support`` (the tests directory is on sys.path).
"""
from __future__ import annotations

import os

import pytest

EDU = (0x1234, 0x11E8)
VFIO_PATHS = ("container", "iommufd", "noiommu")


def _guest_noiommu_enabled() -> bool:
    param = "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode"
    if not os.path.exists(param):
        os.system("modprobe vfio enable_unsafe_noiommu_mode=1 >/dev/null 2>&1")
    if not os.path.exists(param):
        return False
    with open(param) as f:
        if f.read().strip() != "Y":
            with open(param, "w") as w:
                w.write("1")
    return True


def require_vfio_path(path: str, lab_target) -> None:
    """Skip unless this lab guest offers VFIO path ``path`` (container, iommufd, noiommu)."""
    if path == "noiommu":
        if lab_target.iommu:
            pytest.skip("no-IOMMU mode needs a guest without an IOMMU (full kernel, iommu=off)")
        if not _guest_noiommu_enabled():
            pytest.skip(f"kernel {lab_target.kernel} has no CONFIG_VFIO_NOIOMMU")
    elif not lab_target.iommu:
        pytest.skip(f"the {path} path needs the emulated IOMMU (this guest boots without one)")
    elif path == "iommufd" and not os.path.exists("/dev/iommu"):
        pytest.skip(f"kernel {lab_target.kernel} has no IOMMUFD/VFIO_DEVICE_CDEV "
                    "(the full kernel has: --kernel full)")


def _real_edu(path: str, lab_target, index: int = 0):
    from pyvfio import pci
    edus = pci.find(vendor=EDU[0], device=EDU[1])
    if len(edus) <= index:
        pytest.skip("the guest has no emulated edu device")
    require_vfio_path(path, lab_target)
    return edus[index]


def open_path(bdf: str, path: str):
    from pyvfio.vfio.open import open_device
    if path == "noiommu":
        return open_device(bdf, iommu="container", allow_noiommu=True)
    return open_device(bdf, iommu=path)
