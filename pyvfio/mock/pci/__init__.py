"""The mock's PCI bus: device models, functions bound to host drivers, the sysfs tree.

Family ``pci`` (configuration: ``devices``, the :class:`PciFunction` models
on the bus, and ``dma_mask_bits``, the DMA mask of models that do not set
their own).  Its :attr:`Pci.tree` is the fake sysfs (:class:`SysfsTree`),
which also answers writes to sysfs attributes (binding, SR-IOV, mdevs) and
modprobe as the kernel would.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, List, Optional, Sequence, Tuple

from pyvfio.mock.core.family import Family, register
from pyvfio.mock.pci.edu import EduModel
from pyvfio.mock.pci.function import BarSpec, HostFunction, PciFunction
from pyvfio.mock.pci.sysfs import SysfsTree

__all__ = ["Pci", "PciFunction", "BarSpec", "HostFunction", "EduModel", "SysfsTree"]


@register
class Pci(Family):
    """The PCI bus of the mock machine."""

    name = "pci"
    requires = ("process",)

    @dataclasses.dataclass
    class Config:
        devices: Sequence[PciFunction] = ()
        dma_mask_bits: Optional[int] = None

    def __init__(self, kernel: Any, config: "Pci.Config") -> None:
        super().__init__(kernel, config)
        self.models: List[PciFunction] = list(config.devices)
        self.host_functions: List[HostFunction] = []
        seen = set()
        for model in self.models:
            if model.bdf in seen:
                raise ValueError(f"two devices at {model.bdf}")
            seen.add(model.bdf)
            if getattr(model, "dma_mask_bits", 0) is None and config.dma_mask_bits:
                model.dma_mask_bits = config.dma_mask_bits
            model.faults_log = kernel.process.faults
        #: The fake sysfs and /dev, and the stand-in kernel's reactions to writes.
        self.tree = SysfsTree(os.path.dirname(kernel.host.sysfs))

    def setup(self) -> None:
        self.kernel.add_writer(self.kernel.host.sysfs, self.tree.write)

    def modprobe(self, module: str) -> Optional[Tuple[int, str]]:
        status, message = self.tree.modprobe(module)
        return (status, message) if status == 0 else None

    def add_companion(self, model: PciFunction) -> HostFunction:
        """A function next to ``model``, in its group, bound to a host driver."""
        taken = {f.bdf for f in self.all_functions()}
        for fn in range(1, 8):
            f = (model.function + fn) % 8
            bdf = f"{model.segment:04x}:{model.bus:02x}:{model.slot:02x}.{f}"
            if bdf not in taken:
                hf = HostFunction(bdf, model.group, model.segment, model.bus,
                                  (model.slot << 3) | f)
                self.host_functions.append(hf)
                return hf
        raise ValueError(f"no free function next to {model.bdf} for the host-bound device")

    def all_functions(self) -> List[Any]:
        return list(self.models) + list(self.host_functions)

    def functions_on_bus(self, segment: int, bus: int) -> List[Any]:
        return [f for f in self.all_functions() if f.segment == segment and f.bus == bus]

    def model(self, bdf: str) -> PciFunction:
        """The device model at ``bdf``."""
        for m in self.models:
            if m.bdf == bdf.lower():
                return m
        raise KeyError(bdf)

    def shutdown(self) -> None:
        for m in self.models:
            m.close()
