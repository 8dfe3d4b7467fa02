"""Exceptions raised by pyvfio.

Every failure is a :class:`PyvfioError`, which is also an :class:`OSError`, so
``except OSError`` keeps working.  An error carries what the kernel said
(``errno``), what was asked of it (``op``: the ioctl or syscall name), which
file or device it concerned (``path``/``device``) and, where one is known, the
``remedy``.  :func:`from_errno` picks the most specific class for an errno.
"""
from __future__ import annotations

import errno as _errno
import os
from typing import Any, Dict, Optional, Tuple, Type

__all__ = [
    "PyvfioError", "NotFoundError", "PermissionDeniedError", "NotSupportedError",
    "BusyError", "MemlockError", "InvalidArgumentError", "ClosedError",
    "OutOfBoundsError", "NotViableError", "IovaError", "ModuleMissingError",
    "NotBoundError", "TimedOutError", "ExistsError", "RegisterIdError", "QueueFullError",
    "NotReadyError", "VdpaStatusError", "ArgumentTypeError", "from_errno",
]


class PyvfioError(OSError):
    """Base class: an OSError that names the operation, the device and a remedy."""

    default_remedy: Optional[str] = None

    def __init__(self, message: str, *, errno: Optional[int] = None,
                 op: Optional[str] = None, path: Optional[str] = None,
                 device: Optional[str] = None, remedy: Optional[str] = None) -> None:
        if errno is None:
            super().__init__(message)
        else:
            super().__init__(errno, message)
        self.message = message
        self.op = op
        self.path = path
        self.device = device
        self.remedy = remedy if remedy is not None else self._default_remedy()

    def _default_remedy(self) -> Optional[str]:
        return self.default_remedy

    def __str__(self) -> str:
        parts = []
        if self.op:
            parts.append(self.op)
        where = self.device or self.path
        if where:
            parts.append(str(where))
        head = ": ".join(parts)
        text = f"{head}: {self.message}" if head else self.message
        if self.errno is not None:
            name = _errno.errorcode.get(self.errno, str(self.errno))
            text += f" [{name}]"
        if self.remedy:
            text += f"\n  remedy: {self.remedy}"
        return text

    def __reduce__(self) -> Tuple[Any, ...]:  # keep keyword state through pickling (pytest-xdist, multiprocessing)
        return (_rebuild, (type(self), self.message, self.errno, self.op, self.path,
                           self.device, self.remedy))


def _rebuild(cls: Type["PyvfioError"], message: str, errno: Optional[int], op: Optional[str],
             path: Optional[str], device: Optional[str], remedy: Optional[str]) -> "PyvfioError":
    return cls(message, errno=errno, op=op, path=path, device=device, remedy=remedy)


class NotFoundError(PyvfioError, FileNotFoundError):
    """ENOENT/ENODEV/ENXIO: the node, module or device is not there."""
    default_remedy = ("load the kernel module (e.g. `modprobe vfio-pci`) and bind the "
                      "device to its driver (`pyvfio bind BDF`)")


class PermissionDeniedError(PyvfioError, PermissionError):
    """EPERM/EACCES: the caller may not use this node."""
    default_remedy = ("run as root, or give your user the device node "
                      "(e.g. `chown $USER /dev/vfio/N`) and a sufficient RLIMIT_MEMLOCK")

    def _default_remedy(self) -> Optional[str]:
        if os.geteuid() == 0:       # advising root to run as root helps nobody
            return ("the kernel refused root: a capability is missing (a container or "
                    "user namespace?), or a security module (SELinux, AppArmor, lockdown) "
                    "forbids it; see `dmesg | tail`")
        return self.default_remedy


class NotSupportedError(PyvfioError):
    """ENOTTY/EOPNOTSUPP/ENOSYS: the kernel or device lacks this operation."""
    default_remedy = ("not supported by this device or kernel: check the kernel "
                      "version and its configuration (CONFIG_*) for this feature")


class BusyError(PyvfioError):
    """EBUSY: the device, group or resource is already in use."""
    default_remedy = ("another process or container holds it: close it there first "
                      "(see `lsof` on the node)")


class MemlockError(PyvfioError, MemoryError):
    """ENOMEM while pinning memory for DMA: the locked-memory limit is too low."""
    default_remedy = ("raise RLIMIT_MEMLOCK: `ulimit -l unlimited`, a memlock line in "
                      "/etc/security/limits.conf, or LimitMEMLOCK= in a systemd unit")


class InvalidArgumentError(PyvfioError, ValueError):
    """EINVAL: the kernel rejected an argument."""


class ArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument of the wrong type (a float offset, a bool count, a str size...).

    Both a :class:`TypeError` and an :class:`InvalidArgumentError`, so
    ``except ValueError`` and ``except TypeError`` both catch it; raised before
    anything reaches the kernel, naming the argument and the device.
    """

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("errno", _errno.EINVAL)
        super().__init__(message, **kw)


class ClosedError(PyvfioError, ValueError):
    """The handle was closed; the object can no longer be used."""

    def __init__(self, what: str, **kw: Any) -> None:
        kw.setdefault("errno", _errno.EBADF)
        kw.setdefault("remedy", "open it again; use it inside its `with` block")
        super().__init__(f"{what} is closed", **kw)


class OutOfBoundsError(PyvfioError, IndexError):
    """An access outside a region, BAR or buffer, refused before it reaches the device."""

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("errno", _errno.EFAULT)
        super().__init__(message, **kw)


class NotViableError(PyvfioError):
    """The IOMMU group is not viable: another device in it is bound to a host driver."""
    default_remedy = ("bind every device of the group to vfio-pci (or unbind them): "
                      "`pyvfio bind BDF` for each")


class IovaError(PyvfioError, ValueError):
    """An IOVA outside the IOMMU's usable ranges, or an overlapping mapping."""


class ExistsError(PyvfioError, FileExistsError):
    """EEXIST: the kernel already has it (an overlapping DMA mapping, a device ID, an mdev)."""
    default_remedy = ("it already exists: for a DMA mapping, unmap the mapping that overlaps "
                      "the range or let pyvfio choose the IOVA (iova=None); for an ID or node, "
                      "remove the existing one first")


class ModuleMissingError(NotFoundError):
    """A kernel module the operation needs is not loaded and could not be loaded."""


class NotBoundError(PyvfioError):
    """The device is not bound to the driver the operation needs."""


class RegisterIdError(InvalidArgumentError):
    """A KVM ONE_REG register id or name that does not fit: unknown name, wrong size."""
    default_remedy = "build register ids with pyvfio.kvm.regs and size values by the id"


class TimedOutError(PyvfioError, TimeoutError):
    """Waiting for the device (interrupt, DMA, reset) took longer than allowed."""

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("errno", _errno.ETIMEDOUT)
        super().__init__(message, **kw)


class QueueFullError(BusyError):
    """A virtqueue has no free descriptors for another buffer."""
    default_remedy = ("collect used buffers (get_used()/wait()) before adding more, or "
                      "create the queue with a larger size")

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("errno", _errno.ENOSPC)
        super().__init__(message, **kw)


class NotReadyError(PyvfioError):
    """The object is not set up far enough for this operation (e.g. kick before setup)."""

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("errno", _errno.EINVAL)
        super().__init__(message, **kw)


class VdpaStatusError(InvalidArgumentError):
    """A virtio status-protocol rule was broken on a vDPA device (the message names the rule):
    status bits only cleared by a reset, set in order, features fixed after FEATURES_OK,
    vrings programmed between FEATURES_OK and DRIVER_OK."""


_BY_ERRNO = {
    _errno.ENOENT: NotFoundError, _errno.ENODEV: NotFoundError, _errno.ENXIO: NotFoundError,
    _errno.EPERM: PermissionDeniedError, _errno.EACCES: PermissionDeniedError,
    _errno.ENOTTY: NotSupportedError, _errno.EOPNOTSUPP: NotSupportedError,
    _errno.ENOSYS: NotSupportedError,
    _errno.EBUSY: BusyError,
    _errno.EEXIST: ExistsError,
    _errno.EINVAL: InvalidArgumentError,
    _errno.EBADF: PyvfioError,
    _errno.ETIMEDOUT: TimedOutError,
}


def from_errno(err: int, *, op: Optional[str] = None, path: Optional[str] = None,
               device: Optional[str] = None, remedy: Optional[str] = None,
               dma: bool = False) -> PyvfioError:
    """Build the most specific exception for ``err`` raised by ``op`` on ``path``.

    ``dma=True`` marks operations that pin memory, where ENOMEM means the
    locked-memory limit rather than a shortage of memory.
    """
    message = os.strerror(err)
    cls: Type[PyvfioError]
    if err == _errno.ENOMEM and dma:
        cls = MemlockError
        message = "cannot pin memory for DMA (locked-memory limit reached)"
    else:
        cls = _BY_ERRNO.get(err, PyvfioError)
    if cls is TimedOutError:
        return TimedOutError(message, op=op, path=path, device=device, remedy=remedy)
    return cls(message, errno=err, op=op, path=path, device=device, remedy=remedy)
