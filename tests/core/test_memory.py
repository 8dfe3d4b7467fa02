"""DMA buffers and IOVA allocation."""
from __future__ import annotations


import pytest

from pyvfio import errors

from pyvfio.core import syscalls
from pyvfio.core.iova import IovaAllocator
from pyvfio.core.memory import HUGE_1G, HUGE_2M, DmaBuffer
from pyvfio.drivers.edu import Edu


# -- IOVA allocator (host) ------------------------------------------------------
@pytest.mark.host
def test_allocator_stays_inside_the_reported_ranges():
    # an Intel IOMMU: everything but the MSI window 0xfee00000-0xfeefffff
    a = IovaAllocator([(0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)])
    first = a.alloc(0x1000)
    assert first == 0
    big = a.alloc(0xFEE00000 - 0x1000)         # exactly fills the rest of the first range
    assert big == 0x1000
    nxt = a.alloc(0x2000)
    assert nxt == 0xFEF00000                     # skips the reserved MSI window
    assert a.used == ((0, 0x1000), (0x1000, 0xFEE00000), (0xFEF00000, 0xFEF02000))


@pytest.mark.host
def test_allocator_honours_the_device_dma_mask_and_alignment():
    a = IovaAllocator([(0x1000, (1 << 48) - 1)])
    iova = a.alloc(2 << 20, align=2 << 20, dma_mask_bits=28)
    assert iova == 2 << 20 and iova + (2 << 20) <= 1 << 28
    with pytest.raises(errors.IovaError):
        a.alloc(1 << 28, dma_mask_bits=28)       # cannot fit below 256 MiB any more


@pytest.mark.host
def test_fixed_iova_outside_ranges_or_overlapping_is_refused():
    a = IovaAllocator([(0, 0xFEDFFFFF), (0xFEF00000, 0xFFFFFFFF)])
    with pytest.raises(errors.IovaError) as ei:
        a.reserve(0xFEE00000, 0x1000)
    assert "[0x0-0xfedfffff], [0xfef00000-0xffffffff]" in str(ei.value)
    a.reserve(0x10000, 0x4000)
    with pytest.raises(errors.IovaError, match="overlaps"):
        a.reserve(0x12000, 0x1000)
    with pytest.raises(errors.IovaError, match="aligned"):
        a.reserve(0x20001, 0x1000)
    a.free(0x10000)
    assert a.reserve(0x12000, 0x1000) == 0x12000


# -- buffers (host) ------------------------------------------------------------------
@pytest.mark.host
@pytest.mark.parametrize("kind", ["anonymous", "memfd"])
def test_buffer_kinds_are_page_aligned_memory(kind):
    before = syscalls.open_fds()
    with DmaBuffer(5000, kind) as buf:
        assert buf.size == 8192 and buf.vaddr % 4096 == 0
        buf.write(4096, b"abc")
        assert buf.read(4096, 3) == b"abc" and bytes(buf.view[4096:4099]) == b"abc"
        assert (buf.fd is not None) == (kind == "memfd")
        with pytest.raises(errors.OutOfBoundsError):
            buf.read(8190, 4)
    assert syscalls.open_fds() == before and syscalls.live_mappings() == []


@pytest.mark.host
def test_buffer_close_refuses_while_a_memoryview_is_alive_and_loses_nothing():
    buf = DmaBuffer(4096)
    view = buf.view
    with pytest.raises(errors.BusyError) as ei:
        buf.close()
    assert "release memoryviews" in ei.value.remedy
    view.release()
    buf.close()
    assert buf.closed and syscalls.live_mappings() == []
    with pytest.raises(errors.ClosedError):
        buf.read(0, 1)


# -- hugetlb through the real IOMMU (lab) --------------------------------------------------
def _reserve(size: int, count: int) -> bool:
    path = f"/sys/kernel/mm/hugepages/hugepages-{size >> 10}kB/nr_hugepages"
    try:
        with open(path, "w") as f:
            f.write(str(count))
        with open(path) as f:
            return int(f.read()) >= count
    except OSError:
        return False


@pytest.mark.device
@pytest.mark.parametrize("page", [HUGE_2M, HUGE_1G], ids=["2M", "1G"])
def test_hugetlb_buffer_dma_through_edu(vfio_edu, page):
    if vfio_edu.target.kind != "real":
        pytest.skip("hugetlb pages are reserved in the lab guest, not on the host")
    if vfio_edu.path == "noiommu":
        pytest.skip("covered by the anonymous-buffer tests")
    if not _reserve(page, 1):
        pytest.skip(f"the guest could not reserve a {page >> 20} MiB huge page")
    dev = vfio_edu.open()
    try:
        edu = Edu(dev)
        with DmaBuffer(page, "hugetlb", page_size=page) as buf:
            assert buf.size == page
            m = dev.dma.map(buf, dma_mask_bits=28 if page == HUGE_2M else None)
            assert m.size == page
            tail = page - 4096                       # the last page of the huge page
            buf.write(tail, b"huge!" * 100)
            if m.iova + page <= 1 << 28:
                edu.to_device(m.iova + tail, 500)
                edu.from_device(m.iova + 4096, 500)
                assert buf.read(4096, 500) == b"huge!" * 100
    finally:
        dev.close()
        _reserve(page, 0)
