"""Closing a device that still has mappings, buffers and interrupts: clean, in the kernel's order.

The mappings go while the IOMMU still exists (the group still attached to
its container, the IOAS still alive), then the device, then the group and
the container.  Every test checks that nothing leaks: file descriptors and
process mappings are back to where they started.
"""
from __future__ import annotations

import pytest

from pyvfio.core.memory import PAGE_SIZE as PAGE     # 4 KiB, or 64 KiB on POWER's 64K kernels
from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.memory import DmaBuffer
from pyvfio.drivers.edu import Edu

pytestmark = pytest.mark.device


def test_with_block_ending_with_live_mappings_buffers_and_irqs(vfio_edu):
    fds, maps = syscalls.open_fds(), syscalls.live_mappings()
    buf = DmaBuffer(2 * PAGE)
    with vfio_edu.open() as dev:
        edu = Edu(dev)
        dev.msi.enable()
        if dev.dma is not None:
            m1 = dev.dma.map(buf, size=PAGE, dma_mask_bits=28)
            m2 = dev.dma.map(buf, offset=PAGE, size=PAGE, dma_mask_bits=28)
            assert len(dev.dma.mappings) == 2 and m1.iova != m2.iova
        buf.write(0, b"live" * 16)
        edu.to_device(dev.bus_address(buf), 64)
        edu.raise_irq(0x1)
        assert dev.msi.wait(timeout=10) == 1
        edu.ack_irq(0x1)
    # the block ended with two mappings, an enabled MSI and a mapped BAR
    assert dev.closed
    if dev.dma is not None:
        assert dev.dma.closed and dev.dma.mappings == []
    assert buf.spaces == set()
    assert buf.read(0, 8) == b"livelive"          # the buffer outlives the device
    buf.close()
    assert syscalls.open_fds() == fds
    assert syscalls.live_mappings() == maps


def test_buffer_closed_inside_the_block_unmaps_itself(vfio_edu):
    if vfio_edu.path == "noiommu":
        pytest.skip("no I/O address space without an IOMMU")
    fds, maps = syscalls.open_fds(), syscalls.live_mappings()
    with vfio_edu.open() as dev:
        with DmaBuffer(PAGE) as buf:
            dev.dma.map(buf, dma_mask_bits=28)
            assert len(dev.dma.mappings) == 1
        assert dev.dma.mappings == []
    assert syscalls.open_fds() == fds and syscalls.live_mappings() == maps


def test_unmap_returns_the_bytes_unmapped(vfio_edu):
    if vfio_edu.path == "noiommu":
        pytest.skip("no I/O address space without an IOMMU")
    with vfio_edu.open() as dev, DmaBuffer(3 * PAGE) as buf:
        m = dev.dma.map(buf, dma_mask_bits=28)
        assert dev.dma.unmap(m) == 3 * PAGE
        assert dev.dma.mappings == []


def test_unmap_inside_a_mapping_names_the_mapping(vfio_edu):
    if vfio_edu.path == "noiommu":
        pytest.skip("no I/O address space without an IOMMU")
    with vfio_edu.open() as dev, DmaBuffer(2 * PAGE) as buf:
        m = dev.dma.map(buf, dma_mask_bits=28)
        with pytest.raises(errors.IovaError) as ei:
            dev.dma.unmap(m.iova + PAGE)
        assert f"IOVA {m.iova + PAGE:#x} lies inside the mapping at {m.iova:#x}" in str(ei.value)
        assert ei.value.remedy == f"unmap the whole mapping at IOVA {m.iova:#x}"
        assert ei.value.device == dev.dma.name
        assert dev.dma.mappings == [m]           # refused: nothing changed
        with pytest.raises(errors.IovaError, match="no mapping at IOVA 0x"):
            dev.dma.unmap(m.iova + 0x100000)


def test_overlapping_map_in_the_kernel_is_exists_error(vfio_edu):
    """A fixed-IOVA map over a mapping the library does not know of: EEXIST from the kernel."""
    if vfio_edu.path == "noiommu":
        pytest.skip("no I/O address space without an IOMMU")
    with vfio_edu.open() as dev, DmaBuffer(PAGE) as a, DmaBuffer(PAGE) as b:
        if getattr(dev.dma, "iommu_name", "").startswith("spapr"):
            pytest.skip("sPAPR's MAP_DMA replaces a mapped TCE without EEXIST: the library's "
                        "own overlap check is the only one (tests/vfio/test_spapr.py)")
        m = dev.dma.map(a, dma_mask_bits=28)
        dev.dma.allocator.free(m.iova)           # forget it here; the kernel still has it
        try:
            with pytest.raises(errors.ExistsError) as ei:
                dev.dma.map(b, iova=m.iova)
            assert ei.value.errno == 17 and "unmap the mapping that overlaps" in ei.value.remedy
        finally:
            dev.dma.allocator.reserve(m.iova, m.size)


@pytest.mark.host
@pytest.mark.parametrize("model", ["spapr", "spapr_v2"])
def test_spapr_container_closes_with_live_mappings(tmp_path, model):
    """The sPAPR TCE backend, which no kernel here offers (the mock follows vfio_iommu_spapr_tce)."""
    from pyvfio import mock
    from pyvfio.vfio.open import open_device
    fds, maps = syscalls.open_fds(), syscalls.live_mappings()
    kernel = mock.MockKernel(str(tmp_path), devices=[mock.EduModel(bdf="0000:00:10.0", group=5)],
                             iommu="spapr")
    with kernel.installed():
        with DmaBuffer(2 * 4096) as buf:
            with open_device("0000:00:10.0", iommu="container", iommu_model=model) as dev:
                m = dev.dma.map(buf)
                Edu(dev).to_device(m.iova, 64)
                assert len(dev.dma.mappings) == 1
            assert dev.dma.closed and buf.spaces == set()
    assert syscalls.open_fds() == fds and syscalls.live_mappings() == maps
