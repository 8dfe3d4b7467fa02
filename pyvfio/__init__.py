"""pyvfio: drive real devices from Python through VFIO, iommufd, vhost, vDPA and UIO.

The layers, from the kernel up:

- :mod:`pyvfio.core.uapi` — the uAPI headers compiled with cffi (``ffi``, ``lib``);
- :mod:`pyvfio.core.syscalls` — every system call, errno → :mod:`pyvfio.errors`;
- :mod:`pyvfio.core.argsz` — VFIO's argsz protocol and capability chains;
- objects named after kernel concepts (``Container``, ``Group``, ``Device``,
  ``Region``, ``Irq``, ``DmaBuffer``, ``IommuFd`` …), imported lazily from here;
- the ``pyvfio`` command line and :mod:`pyvfio.lab`.

``import pyvfio`` loads nothing heavy: names are resolved on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, List

if TYPE_CHECKING:   # what type checkers see; at run time the names load on first use
    from pyvfio.core.iova import IovaAllocator
    from pyvfio.core.memory import DmaBuffer
    from pyvfio.errors import PyvfioError
    from pyvfio.iommufd import IommuFd
    from pyvfio.pci import PciDevice
    from pyvfio.vfio.container import Container
    from pyvfio.vfio.device import Device
    from pyvfio.vfio.group import Group
    from pyvfio.vfio.irq import Irq
    from pyvfio.vfio.open import open_device
    from pyvfio.vfio.region import Region

__version__ = "0.1.0"     # the one place; pyproject.toml reads it

# public name -> module that defines it
_LAZY = {
    "PyvfioError": "errors",
    "PciDevice": "pci",
    "Container": "vfio.container",
    "Group": "vfio.group",
    "IommuFd": "iommufd",
    "Device": "vfio.device",
    "Region": "vfio.region",
    "Irq": "vfio.irq",
    "DmaBuffer": "core.memory",
    "IovaAllocator": "core.iova",
    "open_device": "vfio.open",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyvfio' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = ["PyvfioError", "PciDevice", "Container", "Group", "IommuFd", "Device", "Region", "Irq",
           "DmaBuffer", "IovaAllocator", "open_device", "__version__"]


def __dir__() -> List[str]:
    return sorted(list(globals()) + list(_LAZY))
