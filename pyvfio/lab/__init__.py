"""pyvfio lab: run pyvfio, its tests and your drivers against real kernel
drivers and emulated PCI devices in a throw-away QEMU guest.

The guest boots Debian's ``stock`` 6.12 kernel or the lab's ``full`` kernel
(built from Debian's source with IOMMUFD, VFIO cdev/no-IOMMU, vdpa_sim, mtty,
...), shares the host's root file system read-only (with a tmpfs overlay) and
the working directory read-write, runs one command as root and powers off::

    pyvfio lab run --device edu -- python3 -m pytest -m device tests/

Importing this package is cheap: the submodules load on first use.
"""
from __future__ import annotations

import os

__all__ = ["in_guest"]


def in_guest() -> bool:
    """True inside a lab guest (environment ``PYVFIO_LAB=1``)."""
    return os.environ.get("PYVFIO_LAB") == "1"
