"""The mock's VFIO: container, groups, device files, vfio-pci, type1 and sPAPR TCE.

Family ``vfio`` (configuration: ``noiommu``, ``dma_entry_limit``,
``max_io_width``) binds every model of the pci family to its vfio-pci and
claims ``/dev/vfio/*``.
"""
from pyvfio.mock.vfio.subsystem import Vfio

__all__ = ["Vfio"]
