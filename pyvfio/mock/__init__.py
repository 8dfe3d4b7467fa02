"""A mock kernel for pyvfio, made of one module per kernel family.

:class:`MockKernel` answers the system calls of :mod:`pyvfio.core.syscalls`
with the semantics of Linux 6.12 for a fake ``/dev`` and ``/sys`` under a
directory of the caller's.  Install it with :func:`mock_kernel` (or
``with kernel.installed():``), which also makes the fake tree the current
:func:`pyvfio.core.sysfs.host`::

    with mock_kernel(tmp_path, devices=[EduModel("0000:00:10.0", group=5)]) as mock:
        fd = syscalls.open(mock.devroot + "/vfio/vfio")
        ...

On leaving the block :func:`mock_kernel` checks that nothing leaked: every
descriptor opened inside it closed, no DMA mapping or locked memory left.

Layout (no module imports :mod:`pyvfio.mock.kernel` but this one)::

    kernel.py      the fd table and node registry; nothing family-specific
    core/          family.py (Family, MockFile, KernelState, register), uaccess.py
                   (argument copying), caps.py, process.py (family "process")
    iommu.py       family "iommu": the platform IOMMU (aperture, page sizes, sPAPR windows)
    iommufd.py     family "iommufd": /dev/iommu
    pci/           family "pci": PciFunction, EduModel, SysfsTree (the one fake sysfs)
    vfio/          family "vfio": container, groups, vfio-pci, type1, sPAPR TCE
    kvm.py         family "kvm": /dev/kvm with LoongArch ONE_REG rules, the KVM-VFIO device
    uio.py         family "uio": uio_pci_generic and uio_msi, /sys/class/uio, /dev/uioN
    vhost.py       family "vhost": /dev/vhost-net (loopback data path), -vsock, -scsi, /dev/net/tun

Adding a family (mock/vhost, mock/uio, mock/kvm, mock/vdpa ...)
----------------------------------------------------------------
1. Subclass :class:`~pyvfio.mock.core.family.Family` in your module, give it a
   ``name`` (it becomes ``kernel.<name>``), the families it needs first in
   ``requires``, and a ``Config`` dataclass: its fields are your keyword
   arguments of :class:`MockKernel` (a field name may belong to one family
   only; ``MockKernel.options()`` lists them all).
2. Decorate it with :func:`~pyvfio.mock.core.family.register`.
3. In ``setup()`` build your part of the fake tree below ``kernel.host``
   (``kernel.host.dev_path("vhost-net")``, ``kernel.host.sys_path(...)``)
   and claim your nodes: ``kernel.add_node(path, factory)``, where
   ``factory(path)`` returns a :class:`~pyvfio.mock.core.family.MockFile`
   subclass answering ``ioctl(cmd, addr)``, ``rw(offset, size, data)``,
   ``mmap(...)`` and ``release()`` with the kernel's errnos (raise
   ``fail(errno.X)``; read arguments with ``copy_args``/``copy_from_user``).
   ``kernel.add_writer(prefix, fn)`` takes writes to sysfs attributes below
   ``prefix``; override ``modprobe(module)`` to provide modules.
4. Report what a test left behind in ``leaks()``; let device models run in
   ``service()`` (called around every system call); free host resources in
   ``shutdown()``.
5. Import your module below, so that it registers with every kernel.

A family sees the kernel only through
:class:`~pyvfio.mock.core.family.KernelState` (``install``, ``file_of``,
``files``, ``family``, ``add_node``, ``add_writer``, ``host``) and other
families as ``kernel.<name>``: import their modules, never ``kernel.py``.
System calls no family claims go to the real kernel.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, List, Set

from pyvfio.core import syscalls
from pyvfio.mock.core import process as _process  # noqa: F401  (registers "process")
from pyvfio.mock import iommu as _iommu  # noqa: F401  (registers "iommu")
from pyvfio.mock import iommufd as _iommufd  # noqa: F401  (registers "iommufd")
from pyvfio.mock import kvm as _kvm  # noqa: F401  (registers "kvm")
from pyvfio.mock import vfio as _vfio  # noqa: F401  (registers "vfio")
from pyvfio.mock import uio as _uio  # noqa: F401  (registers "uio")
from pyvfio.mock import vhost as _vhost  # noqa: F401  (registers "vhost")
from pyvfio.mock import vdpa as _vdpa  # noqa: F401  (registers "vdpa")
from pyvfio.mock.core.uaccess import DmaFault
from pyvfio.mock.kernel import MockKernel
from pyvfio.mock.pci import BarSpec, EduModel, PciFunction, SysfsTree

__all__ = ["MockKernel", "EduModel", "PciFunction", "BarSpec", "DmaFault", "SysfsTree",
           "mock_kernel", "MockLeakError"]


class MockLeakError(AssertionError):
    """Descriptors, mappings or locked memory outlived a :func:`mock_kernel` block."""


@contextlib.contextmanager
def mock_kernel(tmp_path: "os.PathLike[str] | str", *, check_leaks: bool = True,
                **config: Any) -> Iterator[MockKernel]:
    """Install a :class:`MockKernel` as the syscall backend and host for the ``with`` block.

    ``config`` goes to :class:`MockKernel`.  On exit, descriptors opened
    through :mod:`pyvfio.core.syscalls` inside the block and still open are closed
    and, with ``check_leaks``, reported by raising :class:`MockLeakError`
    (together with mock descriptors, DMA mappings and locked memory left).
    """
    mock = MockKernel(tmp_path, **config)
    before = set(syscalls.open_fds())
    maps_before = len(syscalls.live_mappings())
    problems: List[str] = []
    with mock.installed():
        try:
            yield mock
        except BaseException:
            _cleanup(before)
            mock.shutdown()
            raise
        for fd, path in sorted(syscalls.open_fds().items()):
            if fd not in before:
                problems.append(f"fd {fd} ({path}) not closed")
        maps = syscalls.live_mappings()
        problems += [f"mapping not unmapped: {d}" for d in maps[maps_before:]]
        problems += [p for p in mock.leaks() if not p.startswith("fd ")]
        _cleanup(before)
        problems += [p for p in mock.leaks() if p not in problems]
    mock.shutdown()
    if problems and check_leaks:
        raise MockLeakError("leaked in the mock kernel:\n  " + "\n  ".join(problems))


def _cleanup(before: Set[int]) -> None:
    for fd in list(syscalls.open_fds()):
        if fd not in before:
            try:
                syscalls.close(fd)
            except OSError:
                pass
