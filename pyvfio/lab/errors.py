"""Exceptions of :mod:`pyvfio.lab`.

They are :class:`pyvfio.errors.PyvfioError` subclasses, so each one carries a
``remedy`` that the command line prints under the message.
"""
from __future__ import annotations

from typing import Any, Optional

from pyvfio.errors import PyvfioError

__all__ = [
    "LabError", "QemuNotFoundError", "AptUnavailableError", "KernelPackageError",
    "ToolMissingError", "KernelBuildError", "KernelConfigError", "ModuleBuildError",
    "BootError", "BootTimeoutError", "CommandTimeoutError", "LabInterrupted",
]


class LabError(PyvfioError):
    """Base class of every failure of the QEMU lab."""


class QemuNotFoundError(LabError):
    """``qemu-system-x86_64`` is not installed."""
    default_remedy = "apt-get install qemu-system-x86"


class AptUnavailableError(LabError):
    """The kernel packages cannot be fetched: no ``apt-get``/``dpkg`` here."""
    default_remedy = ("run the lab on Debian or Ubuntu (it fetches Debian's kernel packages "
                      "with apt-get download), or point PYVFIO_LAB_CACHE at a cache filled "
                      "on such a machine")


class KernelPackageError(LabError):
    """A Debian kernel package could not be found or downloaded."""
    default_remedy = ("run `apt-get update`; the 6.12 kernel packages come from "
                      "bookworm-backports: enable that suite in the apt sources")


class ToolMissingError(LabError):
    """A host program the lab needs (busybox, gcc-12, make, ...) is missing."""


class KernelBuildError(LabError):
    """Building the ``full`` kernel or out-of-tree modules failed."""


class KernelConfigError(KernelBuildError):
    """``make olddefconfig`` dropped options the lab's config fragment asks for."""


class ModuleBuildError(KernelBuildError):
    """An out-of-tree module failed to build."""


class BootError(LabError):
    """The guest stopped without reporting the command's exit status."""

    def __init__(self, message: str, *, console_tail: str = "", **kw: Any) -> None:
        if console_tail:
            message = f"{message}\n--- last lines of the guest console ---\n{console_tail}"
        super().__init__(message, **kw)
        self.console_tail = console_tail


class BootTimeoutError(BootError):
    """The guest did not finish within the time allowed."""
    default_remedy = ("allow more time with --timeout (everything runs under TCG software "
                      "emulation), or look at the console lines above for a hang")


class CommandTimeoutError(BootError):
    """The command in the guest ran longer than allowed."""
    default_remedy = "allow more time with --timeout (everything runs under TCG software emulation)"


class LabInterrupted(LabError):
    """The lab was stopped by a signal (Ctrl-C, SIGTERM); the guest was torn down."""

    def __init__(self, message: str, *, signum: Optional[int] = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.signum = signum
