"""Where the kernel's file systems are: one :class:`Host` instead of roots
threaded through every call.

Every family reads sysfs, /dev and /proc through the current host
(:func:`host`).  Tests point it at a fake tree with :func:`use_host`; nothing
else in the library names ``/sys`` or ``/dev``.
"""
from __future__ import annotations

import contextlib
import errno as _errno
import os
import threading
from dataclasses import dataclass, replace
from typing import Iterator, Optional

from pyvfio import errors
from pyvfio.core import syscalls

__all__ = ["Host", "host", "use_host", "read_text", "link_name", "write_attr"]


@dataclass(frozen=True)
class Host:
    """The roots of the kernel's file systems as this process sees them."""
    #: sysfs root (``/sys``).
    sysfs: str = "/sys"
    #: device-node root (``/dev``).
    dev: str = "/dev"
    #: procfs root (``/proc``).
    proc: str = "/proc"

    def sys_path(self, *parts: str) -> str:
        """A path below the sysfs root: ``host.sys_path("class", "uio")``."""
        return os.path.join(self.sysfs, *parts)

    def dev_path(self, *parts: str) -> str:
        """A path below the device-node root: ``host.dev_path("vhost-net")``."""
        return os.path.join(self.dev, *parts)

    def proc_path(self, *parts: str) -> str:
        """A path below the procfs root: ``host.proc_path("self", "pagemap")``."""
        return os.path.join(self.proc, *parts)

    def with_roots(self, *, sysfs: Optional[str] = None, dev: Optional[str] = None,
                   proc: Optional[str] = None) -> "Host":
        """A copy with some roots replaced."""
        return replace(self, **{k: v for k, v in
                                (("sysfs", sysfs), ("dev", dev), ("proc", proc)) if v is not None})


_local = threading.local()
_default = Host()


def host() -> Host:
    """The host in effect (the real one unless :func:`use_host` says otherwise)."""
    return getattr(_local, "host", None) or _default


@contextlib.contextmanager
def use_host(new: Host) -> Iterator[Host]:
    """Make ``new`` the host for this thread inside the ``with`` block."""
    old = getattr(_local, "host", None)
    _local.host = new
    try:
        yield new
    finally:
        _local.host = old


# --------------------------------------------------------------------------- attributes
def write_attr(path: str, value: str, *, device: Optional[str] = None,
               remedy: Optional[str] = None) -> None:
    """Write ``value`` to the sysfs file ``path``; failures name the file and the value."""
    try:
        syscalls.write_file(path, value.encode())
    except errors.PyvfioError:
        raise
    except OSError as exc:
        err = exc.errno if exc.errno is not None else _errno.EIO
        if err in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
            cls: type = errors.PermissionDeniedError
            if err == _errno.EROFS:
                remedy = ("sysfs is mounted read-only here (a container?): do this on the "
                          "host, or remount /sys read-write")
            elif os.geteuid() == 0:
                remedy = ("the kernel refused root: sysfs may be read-only in this container "
                          "(`grep sysfs /proc/mounts`) or kernel lockdown forbids it "
                          "(`cat /sys/kernel/security/lockdown`)")
            else:
                remedy = ("run as root: sysfs attributes that bind drivers, create devices "
                          "or enable VFs are writable by root only")
        else:
            cls = type(errors.from_errno(err))
        shown = value.strip() or repr(value)
        raise cls(f"cannot write {shown!r} to {path}: {os.strerror(err)}", errno=err,
                  op="sysfs write", path=path, device=device, remedy=remedy) from None


def read_text(path: str, device: Optional[str] = None) -> Optional[str]:
    """The stripped contents of a sysfs file, None when it does not exist."""
    try:
        data = syscalls.read_file(path, device=device, op="sysfs read")
    except FileNotFoundError:
        return None
    return data.decode(errors="replace").strip()


def link_name(path: str) -> Optional[str]:
    """The last component of a symlink's target, None when there is no link."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None
