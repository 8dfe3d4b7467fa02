"""Where the kernel's file systems are: one :class:`Host` instead of roots
threaded through every call.

Every family reads sysfs, /dev and /proc through the current host
(:func:`host`).  Tests point it at a fake tree with :func:`use_host`; nothing
else in the library names ``/sys`` or ``/dev``.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, replace
from typing import Iterator, Optional

__all__ = ["Host", "host", "use_host"]


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
