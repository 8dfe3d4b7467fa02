"""VFIO: devices owned by a user-space driver, their regions, interrupts and IOMMU context.

- :mod:`~pyvfio.vfio.open` — :func:`open_device`, the policy that picks iommufd or a container;
- :mod:`~pyvfio.vfio.container` — ``/dev/vfio/vfio`` and its IOMMU models (type1, sPAPR TCE, no-IOMMU);
- :mod:`~pyvfio.vfio.group` — ``/dev/vfio/<group>``;
- :mod:`~pyvfio.vfio.device` — :class:`Device`: regions, interrupts, reset, features;
- :mod:`~pyvfio.vfio.region`, :mod:`~pyvfio.vfio.irq`, :mod:`~pyvfio.vfio.features`;
- :mod:`~pyvfio.vfio.mdev` — mediated devices (``/sys/class/mdev_bus``).

The submodules load the compiled binding; this package imports none of them
until asked.
"""
