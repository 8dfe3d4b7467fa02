"""IOMMU groups as sysfs shows them: members, their drivers, and VFIO's viability rule.

``/sys/kernel/iommu_groups/<N>/devices`` lists every device of group N; VFIO
hands a group to user space only when each member is unbound or bound to a
driver that leaves DMA to user space.
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

from pyvfio import errors
from pyvfio.core.sysfs import Host, host, link_name, read_text
from pyvfio.pci.address import is_bdf

__all__ = ["IOMMU_GROUPS", "USER_DMA_DRIVERS", "driver_allows_user_dma", "group_number",
           "group_entries", "group_blockers", "not_viable_error", "vfio_group_path",
           "vfio_cdev_path", "host_has_iommu_groups", "IOMMU_OFF_REMEDY"]

IOMMU_GROUPS = "kernel/iommu_groups"

#: Drivers that leave a function's DMA to user space (the kernel's
#: ``driver_managed_dma``): a group whose devices are bound only to these, or
#: to no driver, can be handed to VFIO.  Drivers whose name contains ``vfio``
#: (vfio-pci and its variant drivers) count too; see :func:`driver_allows_user_dma`.
USER_DMA_DRIVERS = frozenset({"vfio-pci", "pci-stub", "pcieport"})


def driver_allows_user_dma(driver: Optional[str]) -> bool:
    """Whether a device bound to ``driver`` (None: unbound) keeps its group viable.

    VFIO can claim an IOMMU group for user space only when every device in it
    is unbound or bound to a driver that sets ``driver_managed_dma``: vfio-pci
    and the vfio variant drivers, pci-stub and the PCIe port driver.  sysfs does
    not show that flag, so this follows the known list.
    """
    if driver is None:
        return True
    return driver in USER_DMA_DRIVERS or "vfio" in driver


IOMMU_OFF_REMEDY = ("the IOMMU is off (the kernel made no IOMMU groups): enable VT-d/AMD-Vi "
                    "in the firmware and boot with intel_iommu=on (or amd_iommu=on), or "
                    "accept unsafe no-IOMMU mode (`modprobe vfio enable_unsafe_noiommu_mode=1`)")


def host_has_iommu_groups(on: Optional[Host] = None) -> bool:
    """Whether the kernel made any IOMMU group (none: the IOMMU is off or absent)."""
    try:
        return bool(os.listdir((on or host()).sys_path(IOMMU_GROUPS)))
    except OSError:
        return False


def group_number(devpath: str) -> Optional[int]:
    """The IOMMU group of the device at sysfs path ``devpath`` (its ``iommu_group`` link)."""
    name = link_name(os.path.join(devpath, "iommu_group"))
    return int(name) if name is not None and name.isdigit() else None


def group_entries(group: int, on: Optional[Host] = None) -> List[Tuple[str, Optional[str]]]:
    """(name, driver) of every device in IOMMU group ``group``, PCI or not, sorted by name."""
    devdir = (on or host()).sys_path(IOMMU_GROUPS, str(group), "devices")
    try:
        names = sorted(os.listdir(devdir))
    except FileNotFoundError:
        return []
    return [(n, link_name(os.path.join(devdir, n, "driver"))) for n in names]


def group_blockers(group: int, on: Optional[Host] = None) -> List[Tuple[str, str]]:
    """(device, driver) of each member of ``group`` whose driver keeps it from VFIO."""
    return [(name, drv) for name, drv in group_entries(group, on)
            if drv is not None and not driver_allows_user_dma(drv)]


def not_viable_error(group: int, blockers: List[Tuple[str, str]], *,
                     device: Optional[str] = None,
                     path: Optional[str] = None) -> errors.NotViableError:
    """The error for a group held back by ``blockers``: names each and how to free it."""
    named = ", ".join(f"{name} bound to {drv}" for name, drv in blockers)
    binds = "; ".join(f"`pyvfio bind {name}`" if is_bdf(name) else
                      f"unbind {name} from {drv}" for name, drv in blockers)
    return errors.NotViableError(
        f"IOMMU group {group} is not viable: {named}", device=device, path=path,
        remedy=f"hand every device of group {group} to vfio-pci (or unbind it): {binds}")


def vfio_group_path(devpath: str, device: str, on: Optional[Host] = None) -> str:
    """``/dev/vfio/N`` (``/dev/vfio/noiommu-N`` in no-IOMMU mode) for a device's group."""
    group = group_number(devpath)
    if group is None:
        raise errors.NotFoundError(
            "not in an IOMMU group", device=device,
            remedy="enable the IOMMU (intel_iommu=on or amd_iommu=on on the kernel command "
                   "line), or for a machine without one load vfio with "
                   "enable_unsafe_noiommu_mode=1 and bind the device to vfio-pci")
    name = read_text(os.path.join(devpath, "iommu_group", "name"))
    node = f"noiommu-{group}" if name == "vfio-noiommu" else str(group)
    return (on or host()).dev_path("vfio", node)


def vfio_cdev_path(devpath: str, on: Optional[Host] = None) -> Optional[str]:
    """``/dev/vfio/devices/vfioX`` from ``<device>/vfio-dev/vfioX``, None without one.

    VFIO registers ``vfio-dev/vfioX`` for every device it drives, but gives it a
    character device (a ``dev`` attribute) only with CONFIG_VFIO_DEVICE_CDEV.
    """
    base = os.path.join(devpath, "vfio-dev")
    try:
        names = sorted(n for n in os.listdir(base) if n.startswith("vfio"))
    except OSError:
        return None
    for name in names:
        if os.path.exists(os.path.join(base, name, "dev")):
            return (on or host()).dev_path("vfio", "devices", name)
    return None
