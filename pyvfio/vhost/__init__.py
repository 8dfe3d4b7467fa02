"""vhost: the kernel's virtio device back ends, driven from Python.

:class:`VhostBackend` is one vhost file descriptor with an ioctl method per
``VHOST_*`` request; :mod:`~pyvfio.vhost.net` (vhost-net and a TAP),
:mod:`~pyvfio.vhost.vsock` and :mod:`~pyvfio.vhost.scsi` (with a LIO target
made through configfs) add each node's own ioctls.  The driver side of the
rings is :mod:`pyvfio.virtio`.
"""
from pyvfio.vhost.backend import DirtyLog, IotlbMsg, VhostBackend, VhostFeatures
from pyvfio.vhost.net import RX, TX, Tap, VhostNet, VirtioNet

__all__ = ["VhostBackend", "DirtyLog", "IotlbMsg", "VhostFeatures", "VhostNet", "Tap",
           "VirtioNet", "RX", "TX"]
