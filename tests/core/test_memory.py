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
    a = IovaAllocator([(0, 0x1FFFFF), (0x300000, (1 << 48) - 1)])
    first = a.alloc(0x1000)
    assert first == 0
    rest = a.alloc(0x1FF000)                     # exactly fills the rest of the first range
    assert rest == 0x1000
    nxt = a.alloc(0x2000)
    assert nxt == 0x300000                       # skips the hole between the ranges
    assert a.used == ((0, 0x1000), (0x1000, 0x200000), (0x300000, 0x302000))


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
    with pytest.raises(errors.IovaError,
                       match=r"\[0x12000-0x12fff\] overlaps the mapping \[0x10000-0x13fff\]"):
        a.reserve(0x12000, 0x1000)
    with pytest.raises(errors.IovaError, match="overlaps the mapping"):
        a.reserve(0xF000, 0x2000)
    with pytest.raises(errors.IovaError, match="aligned"):
        a.reserve(0x20001, 0x1000)
    a.free(0x10000)
    assert a.reserve(0x12000, 0x1000) == 0x12000


@pytest.mark.host
@pytest.mark.parametrize("page", [HUGE_2M, HUGE_1G], ids=["2M", "1G"])
def test_allocator_aligns_to_the_buffer_page_size(page):
    a = IovaAllocator([(0, (1 << 48) - 1)])
    assert a.alloc(0x1000) == 0
    assert a.alloc(0x3000) == 0x1000             # small mappings pack at the IOMMU page size
    assert a.alloc(page, page_size=page) == page  # a huge page lands on its own boundary
    assert a.alloc(0x1000) == 0x4000             # and the gap before it is still used
    assert a.alloc(2 * page, page_size=page) == 2 * page


@pytest.mark.host
def test_allocator_prefers_a_large_page_boundary_for_large_mappings():
    a = IovaAllocator([(0, (1 << 48) - 1)])
    a.alloc(0x1000)
    assert a.alloc(4 << 20) == HUGE_2M           # 4 KiB pages, yet 2 MiB-aligned: THP can use it
    assert a.alloc(HUGE_1G + 0x1000) == HUGE_1G
    # where only a smaller alignment fits, the allocation still succeeds
    b = IovaAllocator([(0x1000, 0x2FFFFF)])
    assert b.alloc(HUGE_2M) == 0x1000
    with pytest.raises(errors.IovaError, match="aligned to 0x200000"):
        b.alloc(0x1000, page_size=HUGE_2M)


@pytest.mark.host
def test_range_past_the_64_bit_space_names_the_last_iova():
    a = IovaAllocator([(0, (1 << 64) - 1)])
    with pytest.raises(errors.IovaError) as ei:
        a.reserve((1 << 64) - 0x1000, 0x2000)
    msg = str(ei.value)
    assert "0x2000 bytes at IOVA 0xfffffffffffff000 do not fit the 64-bit IOVA space" in msg
    assert "(the last IOVA is 0xffffffffffffffff)" in msg
    assert "0x10000000000000fff" not in msg and ei.value.remedy
    assert a.used == ()


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


# -- IOVA alignment on the real IOMMU ----------------------------------------------------------
def _intel_iommu_super_pages() -> "int | None":
    """The VT-d capability's super-page field (bit 0: 2 MiB, bit 1: 1 GiB), or None."""
    import glob
    for path in glob.glob("/sys/class/iommu/dmar*/intel-iommu/cap"):
        with open(path) as f:
            return (int(f.read().strip(), 16) >> 34) & 0xF
    return None


def _translation_leaves(bdf: str, iova: int, size: int) -> "list[list[int]] | None":
    """The page-table paths debugfs shows for [iova, iova+size) of ``bdf`` (None: no debugfs)."""
    import os
    for path in (f"/sys/kernel/debug/iommu/intel/{bdf}/domain_translation_struct",
                 "/sys/kernel/debug/iommu/intel/domain_translation_struct"):
        if os.path.exists(path):
            break
    else:
        return None
    with open(path) as f:
        text = f.read()
    leaves = []
    for line in text.splitlines():
        pfn, bar, rest = line.partition("|")
        if not bar or not pfn.strip().startswith("0x"):
            continue
        if iova >> 12 <= int(pfn, 16) < (iova + size) >> 12:
            leaves.append([int(w, 16) for w in rest.split()])
    return leaves


@pytest.mark.device
def test_2m_buffer_lands_on_a_2m_boundary_after_other_mappings(vfio_edu, capsys):
    """A 2 MiB buffer mapped after a 4 KiB one gets a 2 MiB-aligned IOVA, and DMA reaches it.

    In the lab the buffer is one 2 MiB hugetlb page; where the guest kernel has
    the VT-d debugfs (the full kernel), its page table shows whether the
    IOMMU mapped it with one 2 MiB page (it does when the emulated VT-d
    reports super-page support in its capability register).
    """
    if vfio_edu.path == "noiommu":
        pytest.skip("no IOMMU: the device sees physical addresses, there is no IOVA")
    real = vfio_edu.target.kind == "real"
    if real and not _reserve(HUGE_2M, 1):
        pytest.skip("the guest could not reserve a 2 MiB huge page")
    dev = vfio_edu.open()
    try:
        edu = Edu(dev)
        kind = "hugetlb" if real else "anonymous"     # the host has no huge pages reserved
        with DmaBuffer(4096) as small, DmaBuffer(HUGE_2M, kind) as big:
            m1 = dev.dma.map(small, dma_mask_bits=28)
            m2 = dev.dma.map(big, dma_mask_bits=28)
            assert m2.iova % HUGE_2M == 0
            assert m2.iova == (m1.iova + 4096 + HUGE_2M - 1) // HUGE_2M * HUGE_2M
            big.write(HUGE_2M - 4096, b"aligned!" * 64)
            edu.to_device(m2.iova + HUGE_2M - 4096, 512)
            edu.from_device(m1.iova, 512)
            assert small.read(0, 512) == b"aligned!" * 64
            if real:
                leaves = _translation_leaves(vfio_edu.bdf, m2.iova, HUGE_2M)
                sps = _intel_iommu_super_pages()
                with capsys.disabled():
                    print(f"\n  2 MiB buffer at IOVA {m2.iova:#x} (after {m1.iova:#x}); VT-d "
                          f"super-page field {sps}; debugfs leaves "
                          f"{'n/a' if leaves is None else len(leaves)}")
                if leaves is not None:
                    if sps and sps & 1:
                        # one leaf, a PDE with the page-size bit (7) set
                        assert len(leaves) == 1 and leaves[0][-1] >> 7 & 1, leaves[:3]
                    else:
                        assert len(leaves) == 512       # no super pages: 512 4 KiB PTEs
            dev.dma.unmap(m2)
            dev.dma.unmap(m1)
    finally:
        dev.close()
        if real:
            _reserve(HUGE_2M, 0)
