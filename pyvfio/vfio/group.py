"""A VFIO group: ``/dev/vfio/N``, the unit of isolation the IOMMU can give.

All devices of an IOMMU group must be given to VFIO (or be unbound) before
the group is *viable*; a viable group is attached to a container, and only
then, once the container has an IOMMU model, hands out device fds.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Union

from pyvfio import errors
from pyvfio.core import argsz
from pyvfio.core import syscalls
from pyvfio.core.handle import Handle
from pyvfio.core.sysfs import host
from pyvfio.core.uapi import ffi, lib

__all__ = ["Group"]


class Group(Handle):
    """An open VFIO group node.

    ``group`` is the group number, ``"noiommu-N"``, or a path to the node.
    """

    def __init__(self, group: Union[int, str]) -> None:
        #: The machine whose /dev and sysfs hold the group.
        self.host = host()
        if isinstance(group, int) or str(group).isdigit() or str(group).startswith("noiommu-"):
            self.path = self.host.dev_path("vfio", str(group))
        else:
            self.path = str(group)
        self.name = os.path.basename(self.path)
        self.number = int(self.name.rsplit("-", 1)[-1])
        self.noiommu = self.name.startswith("noiommu-")
        self.container = None
        self.fd: Optional[int] = syscalls.open(self.path, os.O_RDWR)

    @property
    def closed(self) -> bool:
        return self._closed or getattr(self, "fd", None) is None

    def _check_open(self) -> int:
        if self._closed or self.fd is None:
            raise errors.ClosedError(f"VFIO group {self.path}", path=self.path)
        return self.fd

    @property
    def status(self) -> int:
        """``VFIO_GROUP_GET_STATUS`` flags (VIABLE, CONTAINER_SET)."""
        p = argsz.new("struct vfio_group_status")
        syscalls.ioctl(self._check_open(), lib.VFIO_GROUP_GET_STATUS, p)
        return int(p.flags)

    @property
    def viable(self) -> bool:
        return bool(self.status & lib.VFIO_GROUP_FLAGS_VIABLE)

    def check_viable(self) -> None:
        """Raise :class:`NotViableError` naming the group's devices bound to host drivers."""
        if self.viable:
            return
        from pyvfio import pci
        blockers = pci.group_blockers(self.number, self.host)
        if blockers:
            raise pci.not_viable_error(self.number, blockers, path=self.path)
        raise errors.NotViableError(f"IOMMU group {self.number} is not viable", path=self.path)

    def set_container(self, container: Any) -> None:
        """``VFIO_GROUP_SET_CONTAINER``: attach the group to ``container``."""
        self.check_viable()
        fdp = ffi.new("int *", container.fd)
        syscalls.ioctl(self._check_open(), lib.VFIO_GROUP_SET_CONTAINER, fdp)
        self.container = container
        container.groups.append(self)

    def unset_container(self) -> None:
        """``VFIO_GROUP_UNSET_CONTAINER``: detach from the container."""
        if self.container is None or self.fd is None:
            return
        try:
            syscalls.ioctl(self.fd, lib.VFIO_GROUP_UNSET_CONTAINER)
        finally:
            container, self.container = self.container, None
            if self in container.groups:
                container.groups.remove(self)
            if not container.groups:
                # the kernel released the IOMMU driver with the last group, and with it
                # every mapping, window and registration: forget them too
                container._iommu_released()

    def get_device_fd(self, name: str) -> int:
        """``VFIO_GROUP_GET_DEVICE_FD``: an fd for device ``name`` (a BDF or mdev UUID)."""
        fd = self._check_open()
        if self.container is None or self.container.iommu_type is None:
            raise errors.InvalidArgumentError(
                "the group needs a container with an IOMMU model first", path=self.path,
                device=name, remedy="group.set_container(c); c.set_iommu()")
        cname = ffi.new("char[]", name.encode())
        dfd = syscalls.ioctl(fd, lib.VFIO_GROUP_GET_DEVICE_FD, cname, device=name)
        return syscalls.adopt(dfd, f"{self.path}:{name}")

    def _release(self) -> None:
        """Detach from the container and close the group node."""
        try:
            self.unset_container()
        finally:
            if self.fd is not None:
                syscalls.close(self.fd)
            self.fd = None

    def __repr__(self) -> str:
        return f"<Group {self.path}{' closed' if self.fd is None else ''}>"
