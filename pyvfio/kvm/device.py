"""KVM devices (KVM_CREATE_DEVICE): attributes, and the KVM-VFIO device.

A device fd answers KVM_HAS/SET/GET_DEVICE_ATTR on ``(group, attr)`` pairs
whose ``addr`` points at the value.  The KVM-VFIO device
(KVM_DEV_TYPE_VFIO) tells KVM which VFIO groups or device cdevs the VM
uses, so that KVM and VFIO can coordinate (coherent DMA, the VM's KVM
pointer for drivers that need it, sPAPR TCE tables).
"""
from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING, Any, Dict, Optional

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.handle import Handle
from pyvfio.core.uapi import ffi, lib
from pyvfio.kvm.vm import fd_of

if TYPE_CHECKING:
    from pyvfio.kvm.vm import Vm

__all__ = ["Device", "VfioDevice"]


class Device(Handle):
    """A device made by :meth:`Vm.create_device`."""

    def __init__(self, vm: "Vm", dev_type: int, fd: int) -> None:
        self.vm = vm
        self.type = dev_type
        self.fd = fd
        self.name = f"kvm-device type {dev_type} of {vm.name}"

    def fileno(self) -> int:
        self._check_open()
        return self.fd

    def _release(self) -> None:
        syscalls.close(self.fd)
        if not self.vm.closed:
            self.vm._forget(self)

    def _attr(self, request: int, group: int, attr: int, addr: int = 0) -> int:
        self._check_open()
        arg = ffi.new("struct kvm_device_attr *", {"group": group, "attr": attr, "addr": addr})
        return syscalls.ioctl(self.fd, request, arg, device=self.name)

    def has_attr(self, group: int, attr: int) -> bool:
        """KVM_HAS_DEVICE_ATTR: whether the device knows ``(group, attr)``."""
        try:
            self._attr(lib.KVM_HAS_DEVICE_ATTR, group, attr)
        except errors.PyvfioError as exc:
            if exc.errno == _errno.ENXIO:
                return False
            raise
        return True

    def set_attr(self, group: int, attr: int, value: Any = None, ctype: str = "uint64_t") -> None:
        """KVM_SET_DEVICE_ATTR: ``value`` (an int stored as ``ctype``, bytes, or a cdata
        pointer) at ``addr``; None passes addr 0."""
        if value is None:
            self._attr(lib.KVM_SET_DEVICE_ATTR, group, attr, 0)
            return
        if isinstance(value, int):
            buf = ffi.new(ctype + " *", value)
        elif isinstance(value, (bytes, bytearray)):
            buf = ffi.new("char[]", bytes(value))
        else:
            buf = value
        self._attr(lib.KVM_SET_DEVICE_ATTR, group, attr, int(ffi.cast("uintptr_t", buf)))

    def get_attr(self, group: int, attr: int, ctype: str = "uint64_t") -> int:
        """KVM_GET_DEVICE_ATTR: the value at ``addr`` read as ``ctype``."""
        buf = ffi.new(ctype + " *")
        self._attr(lib.KVM_GET_DEVICE_ATTR, group, attr, int(ffi.cast("uintptr_t", buf)))
        return int(buf[0])


class VfioDevice(Device):
    """The KVM-VFIO device: KVM_DEV_VFIO_FILE_ADD/DEL of VFIO group or device cdev fds.

    ``file`` is a :class:`pyvfio.group.Group`, a cdev-opened
    :class:`pyvfio.device.Device`, or their fd.
    """

    def __init__(self, vm: "Vm", dev_type: int, fd: int) -> None:
        super().__init__(vm, dev_type, fd)
        self.name = f"kvm-vfio device of {vm.name}"
        self.files: Dict[int, Any] = {}

    def _file(self, request_attr: int, file: Any) -> int:
        fd = fd_of(file, "VFIO file", self.name)
        what = getattr(file, "path", None) or syscalls.path_of(fd) or f"fd {fd}"
        try:
            self.set_attr(lib.KVM_DEV_VFIO_FILE, request_attr, fd, "int32_t")
        except errors.PyvfioError as exc:
            op = "KVM_DEV_VFIO_FILE_ADD" if request_attr == lib.KVM_DEV_VFIO_FILE_ADD \
                else "KVM_DEV_VFIO_FILE_DEL"
            if exc.errno == _errno.EINVAL and request_attr == lib.KVM_DEV_VFIO_FILE_ADD:
                raise errors.InvalidArgumentError(
                    f"{what} is not a VFIO group or VFIO device file", errno=_errno.EINVAL,
                    op=op, device=self.name,
                    remedy="pass a pyvfio Group (/dev/vfio/N) or a Device opened through its "
                           "cdev (/dev/vfio/devices/vfioX)") from None
            if exc.errno == _errno.EEXIST:
                raise errors.ExistsError(f"{what} is already added to this VM", errno=exc.errno,
                                       op=op, device=self.name,
                                       remedy="add each VFIO file once") from None
            if exc.errno == _errno.ENOENT:
                raise errors.NotFoundError(f"{what} was not added to this VM", errno=exc.errno,
                                           op=op, device=self.name,
                                           remedy="delete only files added with file_add") from None
            exc.message = f"{exc.message} ({what})"
            raise
        return fd

    def file_add(self, file: Any) -> None:
        """KVM_DEV_VFIO_FILE_ADD: tell KVM the VM uses this VFIO group or device."""
        fd = self._file(lib.KVM_DEV_VFIO_FILE_ADD, file)
        self.files[fd] = file

    def file_del(self, file: Any) -> None:
        """KVM_DEV_VFIO_FILE_DEL: the VM no longer uses it."""
        fd = self._file(lib.KVM_DEV_VFIO_FILE_DEL, file)
        self.files.pop(fd, None)
