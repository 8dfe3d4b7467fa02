"""What every family of the mock kernel builds on.

- :mod:`~pyvfio.mock.core.family` — :class:`Family`, :class:`MockFile`, the
  :class:`KernelState` protocol and :func:`register`;
- :mod:`~pyvfio.mock.core.uaccess` — the kernel side of user memory: argument
  copies (``copy_args`` checks argsz and flags as the kernel does), user
  eventfds, DMA faults and translations;
- :mod:`~pyvfio.mock.core.caps` — VFIO capability chains;
- :mod:`~pyvfio.mock.core.process` — family ``process``: locked-memory
  accounting, capabilities, ``/proc/self/pagemap``.
"""
from pyvfio.mock.core.family import Family, KernelState, MockFile, register, registered
from pyvfio.mock.core.process import Accounting, Process
from pyvfio.mock.core.uaccess import DmaFault, EventFd, Translation, copy_args, fail

__all__ = ["Family", "KernelState", "MockFile", "register", "registered", "Accounting", "Process",
           "DmaFault", "EventFd", "Translation", "copy_args", "fail"]
