"""A mock kernel for pyvfio: VFIO, iommufd and an edu-compatible PCI device.

:class:`MockKernel` answers the system calls of :mod:`pyvfio.core.syscalls` with
the semantics of Linux 6.12 for a fake ``/dev`` and ``/sys`` under a
directory of the caller's; :class:`EduModel` is QEMU's educational device.
Install it with :func:`mock_kernel` (or ``syscalls.use(MockKernel(...))``)::

    with mock_kernel(tmp_path, devices=[EduModel("0000:00:10.0", group=5)]) as mock:
        fd = syscalls.open(mock.devroot + "/vfio/vfio")
        ...

On leaving the block :func:`mock_kernel` checks that nothing leaked: every
descriptor opened inside it closed, no DMA mapping or locked memory left.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, List, Set

from pyvfio.core import syscalls
from pyvfio.mock._util import DmaFault
from pyvfio.mock.edu import BarSpec, EduModel, PciFunction
from pyvfio.mock.kernel import MockKernel

__all__ = ["MockKernel", "EduModel", "PciFunction", "BarSpec", "DmaFault", "mock_kernel",
           "MockLeakError"]


class MockLeakError(AssertionError):
    """Descriptors, mappings or locked memory outlived a :func:`mock_kernel` block."""


@contextlib.contextmanager
def mock_kernel(tmp_path: "os.PathLike[str] | str", *, check_leaks: bool = True,
                **config: Any) -> Iterator[MockKernel]:
    """Install a :class:`MockKernel` as the syscall backend for the ``with`` block.

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
