"""Opening a VFIO device: the policy that picks the path and opens everything needed.

:func:`open_device` locates the device in sysfs (a PCI address or an mdev
UUID), checks it is bound to VFIO, then takes iommufd when ``/dev/iommu`` and
the device's cdev exist, the legacy container and group otherwise.  The
returned :class:`~pyvfio.vfio.device.Device` closes all of it, in order, when
it is closed.
"""
from __future__ import annotations

import os
import re
from typing import Any, Optional

from pyvfio import errors
from pyvfio.core import args, argsz
from pyvfio.core import syscalls
from pyvfio.core.sysfs import host
from pyvfio.core.uapi import lib
from pyvfio.vfio.device import Device

__all__ = ["open_device"]


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def _locate(name: str) -> Any:
    """The sysfs view of ``name``: a PciDevice, or an Mdev for a UUID; checked bound to VFIO."""
    if _UUID.match(name):
        from pyvfio.vfio import mdev
        return mdev.get(name)
    from pyvfio import pci
    dev = pci.get(name)
    driver = dev.driver
    if not driver or "vfio" not in driver:
        raise errors.NotBoundError(
            f"not bound to vfio-pci (driver: {driver or 'none'})", device=dev.name,
            remedy=dev.bind_remedy("vfio-pci"))
    return dev


def open_device(name: str, *, iommu: str = "auto",
                allow_noiommu: bool = False, iommu_model: Optional[str] = None) -> Device:
    """Open VFIO device ``name`` (a PCI address or an mdev UUID) with its own IOMMU context.

    ``iommu`` chooses the path: ``"iommufd"`` (cdev + /dev/iommu),
    ``"container"`` (group + /dev/vfio/vfio), or ``"auto"``: iommufd when both
    nodes exist, the container otherwise.  ``iommu_model`` picks the
    container's IOMMU (type1v2, spapr_v2, noiommu...; best offered if None).
    ``allow_noiommu`` must be set to use a no-IOMMU group.
    """
    if not isinstance(name, str):
        raise errors.ArgumentTypeError(
            f"the device name must be a str (a PCI address or an mdev UUID), not {name!r}")
    args.choice(iommu, "iommu", ("auto", "iommufd", "container"), device=name)
    allow_noiommu = args.boolean(allow_noiommu, "allow_noiommu", device=name)
    if iommu_model is not None and not isinstance(iommu_model, str):
        raise errors.ArgumentTypeError(f"iommu_model must be a str or None, not {iommu_model!r}",
                                       device=name)
    where = _locate(name)
    name = where.name if hasattr(where, "address") else name
    cdev = where.vfio_cdev_path()
    has_iommufd = os.path.exists(host().dev_path("iommu"))
    if iommu == "iommufd" or (iommu == "auto" and cdev and has_iommufd and not allow_noiommu):
        if not cdev:
            raise errors.NotFoundError(
                "the device has no VFIO cdev", device=name,
                remedy="needs a kernel with CONFIG_VFIO_DEVICE_CDEV=y, or use iommu='container'")
        return _open_iommufd(name, cdev)
    group_path = where.vfio_group_path()
    if not os.path.exists(group_path):
        raise errors.NotFoundError("no VFIO group node", device=name, path=group_path,
                                   remedy=f"bind the device to vfio-pci: pyvfio bind {name}")
    return _open_container(name, group_path, allow_noiommu, iommu_model)


def _open_iommufd(name: str, cdev: str) -> Device:
    from pyvfio.iommufd import IommuFd
    ictx = IommuFd()
    fd = None
    try:
        ioas = ictx.ioas()
        fd = syscalls.open(cdev, os.O_RDWR, device=name)
        bind = argsz.new("struct vfio_device_bind_iommufd", iommufd=ictx.fd)
        syscalls.ioctl(fd, lib.VFIO_DEVICE_BIND_IOMMUFD, bind, device=name)
        attach = argsz.new("struct vfio_device_attach_iommufd_pt", pt_id=ioas.id)
        syscalls.ioctl(fd, lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach, device=name)
    except BaseException:
        if fd is not None:
            syscalls.close(fd)
        ictx.close()
        raise
    dev = Device(fd, name, dma=ioas, owned=[ictx], path=cdev)
    dev.dev_id = bind.out_devid
    return dev


def _open_container(name: str, group_path: str,
                    allow_noiommu: bool, iommu_model: Optional[str]) -> Device:
    from pyvfio.vfio.container import Container
    from pyvfio.vfio.group import Group
    noiommu = os.path.basename(group_path).startswith("noiommu-")
    if noiommu and not allow_noiommu:
        raise errors.PermissionDeniedError(
            "the device's group is a no-IOMMU group: DMA is not isolated", device=name,
            path=group_path, remedy="pass allow_noiommu=True to accept that")
    container = Container()
    group = None
    try:
        group = Group(group_path)
        group.set_container(container)
        container.set_iommu(iommu_model or ("noiommu" if noiommu else None),
                            allow_noiommu=allow_noiommu)
        fd = group.get_device_fd(name)
    except BaseException:
        if group is not None:
            group.close()
        container.close()
        raise
    dma = None if noiommu else container
    return Device(fd, name, dma=dma, group=group, owned=[container, group], path=group_path)
