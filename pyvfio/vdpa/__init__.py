"""vDPA: management over the ``vdpa`` netlink family, ``/dev/vhost-vdpa-N`` devices, and
VDUSE devices served from Python.

- :mod:`pyvfio.vdpa.netlink`: management devices and vDPA devices (create, delete, show).
- :mod:`pyvfio.vdpa.device`: a vhost-vdpa device: status protocol, config space,
  virtqueues, IOTLB address spaces.
- :mod:`pyvfio.vdpa.vduse`: the device side, in this process, through ``/dev/vduse``.
"""
from __future__ import annotations

__all__ = ["netlink", "device", "vduse"]
