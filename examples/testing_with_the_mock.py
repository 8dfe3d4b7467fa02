"""Test a userspace driver without hardware: pyvfio's mock kernel and its edu model.

Runs anywhere (no root, no IOMMU, no device): the mock answers every system
call pyvfio makes with Linux 6.12's semantics for a fake /dev and /sys.

    python examples/testing_with_the_mock.py
"""
import tempfile

from pyvfio import open_device, DmaBuffer
from pyvfio.drivers.edu import Edu
from pyvfio.mock import EduModel, mock_kernel

BDF = "0000:00:10.0"

with tempfile.TemporaryDirectory() as root:
    # a machine with an edu device in IOMMU group 5, type1 IOMMU, iommufd too
    with mock_kernel(root, devices=[EduModel(bdf=BDF, group=5)], iommu="type1",
                     iommufd=True) as mock:
        with open_device(BDF) as dev:            # the driver code under test, unchanged
            edu = Edu(dev)
            assert edu.factorial(10) == 3628800
            dev.msi.enable()
            with DmaBuffer(4096) as buf:
                buf.write(0, b"hello, device")
                edu.to_device(dev.bus_address(buf), 13, irq=True)   # DMA, then an MSI
                assert dev.msi.wait(timeout=5) == 1
                edu.from_device(dev.bus_address(buf, 2048), 13)
                assert buf.read(2048, 13) == b"hello, device"
        # the model records what the device did: 2 DMA transfers, no IOMMU fault
        model = mock.pci.model(BDF)
        assert (model.dma_count, model.faults) == (2, [])
    # leaving mock_kernel checked that no fd, mapping or pinned page leaked
print("driver tested against the mock: factorial, DMA both ways, MSI, no leaks")
