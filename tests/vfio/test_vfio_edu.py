"""QEMU's edu device driven through VFIO: registers, DMA, interrupts, isolation.

Each test runs through each VFIO path: the legacy container (type1v2),
iommufd with the device cdev, and no-IOMMU mode; on the real kernel in the
lab guests and against the mock on the host.  The result line names which.
"""
from __future__ import annotations

import time

import pytest

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.memory import DmaBuffer
from pyvfio.drivers.edu import DMA_BUFFER_SIZE, IRQ_DMA_DONE, Edu

pytestmark = pytest.mark.device




def test_identification_and_liveness(edu, vfio_edu):
    assert edu.bar.read32(0x00) == 0x010000ED
    assert edu.version == (1, 0)
    assert edu.liveness(0x12345678) == 0xEDCBA987
    assert edu.liveness(0) == 0xFFFFFFFF
    assert edu.device.info.is_pci and edu.device.info.num_regions >= 9
    assert edu.bar.size == 1 << 20


def test_config_space_through_vfio(edu):
    cfg = edu.device.config
    assert (cfg.vendor_id, cfg.device_id) == (0x1234, 0x11E8)
    assert cfg.class_code == 0x00FF00
    assert cfg.bus_master and cfg.memory_enable      # set by the driver
    assert cfg.msi() is not None


def test_factorial(edu):
    assert edu.factorial(10) == 3628800
    assert edu.factorial(12) == 479001600
    assert edu.factorial(0) == 1


@pytest.mark.parametrize("size", [1, 64, 2048, DMA_BUFFER_SIZE - 1])
def test_dma_round_trip(edu, vfio_edu, size):
    with DmaBuffer(3 * 4096) as buf:
        pattern = bytes((i * 7 + 3) & 0xFF for i in range(size))
        buf.write(0, pattern)
        buf.write(4096, b"\0" * size)
        src = edu.device.bus_address(buf, 0)
        dst = edu.device.bus_address(buf, 4096)
        edu.to_device(src, size)             # RAM -> device buffer (device reads RAM)
        edu.from_device(dst, size)           # device buffer -> RAM (device writes RAM)
        assert buf.read(4096, size) == pattern
        assert buf.read(4096 + size, 16) == b"\0" * 16     # nothing past the transfer


def test_msi_delivered_to_eventfd(edu, vfio_edu):
    msi = edu.device.msi
    assert msi.count == 1 and msi.info.eventfd
    msi.enable()
    assert msi.pending() == 0
    edu.raise_irq(0x5)
    assert msi.wait(timeout=10) == 1         # one raise write: one MSI
    assert edu.irq_status == 0x5
    edu.ack_irq(0x5)
    assert edu.irq_status == 0
    msi.disable()
    assert msi.eventfds == []


def test_dma_completion_msi(edu, vfio_edu):
    msi = edu.device.msi
    msi.enable()
    with DmaBuffer(4096) as buf:
        buf.write(0, b"pyvfio!" * 8)
        edu.to_device(edu.device.bus_address(buf), 56, irq=True)
        assert msi.wait(timeout=10) == 1     # one transfer: one completion MSI
        assert edu.irq_status & IRQ_DMA_DONE
        edu.ack_irq(IRQ_DMA_DONE)


def test_intx_mask_and_unmask(edu, vfio_edu):
    intx = edu.device.intx
    assert intx.count == 1 and intx.info.maskable and intx.info.automasked
    intx.enable()
    edu.raise_irq(0x1)                       # the line is asserted...
    assert intx.wait(timeout=10) == 1        # ...VFIO signals once and masks it
    time.sleep(0.3)
    assert intx.pending() == 0               # automasked: no second interrupt
    edu.ack_irq(0x1)                         # the device deasserts
    intx.unmask()
    time.sleep(0.3)
    assert intx.pending() == 0               # nothing pending once served
    intx.mask()
    edu.raise_irq(0x2)                       # asserted while masked: held back
    time.sleep(0.3)
    assert intx.pending() == 0
    intx.unmask()                            # still asserted: delivered on unmask
    assert intx.wait(timeout=10) == 1
    edu.ack_irq(0x2)
    intx.unmask()


def test_dma_to_unmapped_iova_is_blocked(edu, vfio_edu):
    if vfio_edu.path == "noiommu":
        pytest.skip("no-IOMMU mode has no translation to block DMA")
    with DmaBuffer(4096) as buf:
        m = edu.device.dma.map(buf, dma_mask_bits=28)
        iova = m.iova
        edu.device.dma.unmap(m)
        buf.write(0, b"\x55" * 64)
        try:
            edu.from_device(iova, 64)        # the IOMMU faults the write
        except errors.TimedOutError:
            pass
        assert buf.read(0, 64) == b"\x55" * 64


def test_iova_outside_usable_ranges_is_refused_before_the_kernel(edu, vfio_edu):
    if vfio_edu.path == "noiommu":
        pytest.skip("no I/O address space without an IOMMU")
    ranges = edu.device.dma.iova_ranges()
    assert ranges
    last = ranges[-1][1]
    with DmaBuffer(4096) as buf:              # one page: 4 KiB, or 64 KiB on a 64K kernel
        with pytest.raises(errors.IovaError) as ei:
            edu.device.dma.map(buf, iova=last + 1 + buf.size * 15)
        assert "outside the usable IOVA ranges" in str(ei.value)
        assert edu.device.dma.mappings == []


def test_bar_access_past_the_end_raises_instead_of_sigbus(edu):
    with pytest.raises(errors.OutOfBoundsError) as ei:
        edu.bar.read32(edu.bar.size)
    assert "outside region 0" in str(ei.value) and edu.device.name in str(ei.value)
    with pytest.raises(errors.OutOfBoundsError):
        edu.bar.write64(edu.bar.size - 4, 0)
    with pytest.raises(errors.InvalidArgumentError):
        edu.bar.read32(2)                    # misaligned


def test_closed_device_refuses_use(vfio_edu):
    dev = vfio_edu.open()
    bar = dev.bar(0)
    dev.close()
    with pytest.raises(errors.ClosedError):
        bar.read32(0)
    with pytest.raises(errors.ClosedError):
        dev.region(0)
    dev.close()                              # closing twice is harmless


def test_device_reset_restores_registers(edu):
    if not edu.device.info.can_reset:
        pytest.skip("edu offers no reset method here")
    edu.bar.write32(0x04, 0x1)
    edu.device.reset()
    assert edu.bar.read32(0x00) == 0x010000ED


def test_msi_awaited_from_asyncio(edu):
    import asyncio
    msi = edu.device.msi
    msi.enable()

    async def raise_then_wait():
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, edu.raise_irq, 0x10)
        return await msi.wait_async(timeout=10)

    assert asyncio.run(raise_then_wait()) == 1
    assert edu.irq_status == 0x10
    edu.ack_irq(0x10)
    with pytest.raises(errors.TimedOutError):
        asyncio.run(msi.wait_async(timeout=0.2))
