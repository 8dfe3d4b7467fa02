"""sPAPR TCE (POWER's IOMMU) through VFIO containers, v1 and v2.

Each test runs against the real kernel in the lab's ppc64le guest (QEMU's
pseries machine: Debian's ppc64el 6.12 kernel, each edu on its own PHB, so in
its own IOMMU group), and against the mock as both a pseries guest and a
PowerNV host (the mock's two platforms).  Where the platforms differ (window
size, TCE page sizes, levels, EEH) the test says what each one answers; the
kernel's answers that the library turns into a rule of its own (an IOVA
already mapped, a window full) are checked before the kernel sees the call.
"""
from __future__ import annotations

import contextlib
import mmap
import errno
from types import SimpleNamespace

import pytest

from pyvfio import errors
from pyvfio.core import argsz, syscalls
from pyvfio.core.memory import DmaBuffer
from pyvfio.core.uapi import lib
from pyvfio.vfio.container import Container
from pyvfio.vfio.group import Group

pytestmark = pytest.mark.device

EDU = (0x1234, 0x11E8)
DDW_START = 1 << 59
K4, K64, M2, M16 = 1 << 12, 1 << 16, 1 << 21, 1 << 24
PAGE = mmap.PAGESIZE            # this kernel's page: 4 KiB, or 64 KiB on the 64K kernel
#: What each platform answers (the pseries values measured in the lab's guest).
PLATFORM = {
    "pseries": SimpleNamespace(dma32=(0, 1 << 30), pgsizes=K4 | K64 | M2 | M16, levels=1,
                               eeh=0),
    "powernv": SimpleNamespace(dma32=(0, 2 << 30), pgsizes=K4 | K64 | M2 | (1 << 30),
                               levels=5, eeh=1),
}


@pytest.fixture(params=["pseries", "powernv"])
def spapr(request, lab_target, tmp_path):
    """Two edu functions in two IOMMU groups, and how to put them in a container."""
    platform = request.param
    with contextlib.ExitStack() as stack:
        if lab_target.kind == "real":
            if lab_target.arch != "ppc64le":
                pytest.skip(f"sPAPR TCE is POWER's IOMMU; this guest is {lab_target.arch}")
            if platform != "pseries":
                pytest.skip("the lab's POWER guest is a pseries machine (PowerNV: mock only)")
            from pyvfio import pci
            edus = pci.find(vendor=EDU[0], device=EDU[1])
            if len(edus) < 2:
                pytest.skip("the guest has fewer than two edu devices")
            groups = []
            for dev in edus[:2]:
                stack.enter_context(dev.bound("vfio-pci"))
                groups.append(dev.iommu_group)
        else:
            from pyvfio.mock import EduModel, MockKernel
            # edu with a 64-bit DMA mask, as the lab's ppc64le guest has it (DDWs start at 1 << 59)
            kernel = MockKernel(str(tmp_path), iommu="spapr", spapr_platform=platform,
                                dma_mask_bits=64,
                                devices=[EduModel(bdf="0000:00:10.0", group=5),
                                         EduModel(bdf="0000:00:11.0", group=6)])
            stack.enter_context(kernel.installed())
            groups = [5, 6]

        def container(model: str, ngroups: int = 1, iommu: bool = True) -> Container:
            c = stack.enter_context(Container())
            for n in groups[:ngroups]:
                g = stack.enter_context(Group(n))
                g.set_container(c)
            if iommu:
                c.set_iommu(model)
            return c

        yield SimpleNamespace(platform=platform, facts=PLATFORM[platform], groups=groups,
                              container=container, buffer=lambda *a, **k: stack.enter_context(
                                  DmaBuffer(*a, **k)))


def _raw_map(c: Container, buf: DmaBuffer, iova: int, size: int = PAGE) -> None:
    p = argsz.new("struct vfio_iommu_type1_dma_map", vaddr=buf.vaddr, iova=iova, size=size,
                  flags=lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE)
    syscalls.ioctl(c.fd, lib.VFIO_IOMMU_MAP_DMA, p)


def _raw_unmap(c: Container, iova: int, size: int = PAGE) -> None:
    p = argsz.new("struct vfio_iommu_type1_dma_unmap", iova=iova, size=size)
    syscalls.ioctl(c.fd, lib.VFIO_IOMMU_UNMAP_DMA, p)


@pytest.mark.parametrize("model", ["spapr", "spapr_v2"])
def test_info(spapr, model):
    c = spapr.container(model)
    info = c.spapr_info()
    f = spapr.facts
    assert (info.dma32_window_start, info.dma32_window_size) == f.dma32
    if model == "spapr":
        assert (info.flags, info.pgsizes, info.max_dynamic_windows, info.levels) == (0, 0, 0, 0)
    else:
        assert info.flags == lib.VFIO_IOMMU_SPAPR_INFO_DDW
        assert (info.pgsizes, info.max_dynamic_windows, info.levels) == (f.pgsizes, 2, f.levels)
    assert c.windows == [f.dma32]
    assert c.check_extension(lib.VFIO_SPAPR_TCE_IOMMU) == 1
    assert c.check_extension(lib.VFIO_SPAPR_TCE_v2_IOMMU) == 1
    assert c.check_extension(lib.VFIO_TYPE1v2_IOMMU) == 0
    # EEH: QEMU offers it only on PHBs of passed-through host devices, never for edu
    assert c.check_extension(lib.VFIO_EEH) == f.eeh


def test_info_before_set_iommu_is_einval(spapr):
    c = spapr.container("spapr", iommu=False)
    p = argsz.new("struct vfio_iommu_spapr_tce_info")
    with pytest.raises(errors.InvalidArgumentError) as exc:
        syscalls.ioctl(c.fd, lib.VFIO_IOMMU_SPAPR_TCE_GET_INFO, p)
    assert exc.value.errno == errno.EINVAL


@pytest.mark.parametrize("model", ["spapr", "spapr_v2"])
def test_map_needs_enable_or_registration_and_the_library_does_it(spapr, model):
    c = spapr.container(model)
    buf = spapr.buffer(PAGE)
    with pytest.raises(errors.PermissionDeniedError) as exc:     # kernel: EPERM
        _raw_map(c, buf, 0x100000)
    assert exc.value.errno == errno.EPERM
    m = c.map(buf, iova=0x100000)                 # v1: ENABLE, v2: REGISTER_MEMORY first
    assert (m.iova, m.size) == (0x100000, PAGE)
    if model == "spapr_v2":
        with pytest.raises(errors.BusyError) as exc:             # kernel: EBUSY
            c.register_memory(buf.vaddr, PAGE)
        assert exc.value.errno == errno.EBUSY
    else:
        with pytest.raises(errors.NotSupportedError):            # v1 has no preregistration
            c.register_memory(buf.vaddr, PAGE)
    c.unmap(m)
    assert c.mappings == []


@pytest.mark.parametrize("model", ["spapr", "spapr_v2"])
def test_map_outside_the_window(spapr, model):
    c = spapr.container(model)
    buf = spapr.buffer(PAGE)
    end = sum(spapr.facts.dma32)
    c.map(buf, iova=0)                            # enables / registers
    with pytest.raises(errors.NotFoundError) as exc:             # kernel: ENXIO
        _raw_map(c, buf, end + PAGE)
    assert exc.value.errno == errno.ENXIO
    with pytest.raises(errors.IovaError, match="usable"):        # the library: before the kernel
        c.map(buf, iova=end)
    assert [m.iova for m in c.mappings] == [0]


@pytest.mark.parametrize("model", ["spapr", "spapr_v2"])
def test_map_over_a_mapped_iova(spapr, model):
    c = spapr.container(model)
    a, b = spapr.buffer(PAGE), spapr.buffer(PAGE)
    c.map(a, iova=0x200000)
    if model == "spapr_v2":
        c.register_memory(b.vaddr, PAGE)
    _raw_map(c, b, 0x200000)          # the kernel silently replaces the TCE: no EEXIST
    _raw_map(c, a, 0x200000)          # (and back, so the library's record stays true)
    with pytest.raises(errors.IovaError, match="overlaps the mapping"):
        c.map(b, iova=0x200000)       # the library refuses what the kernel would replace
    assert [(m.iova, m.vaddr) for m in c.mappings] == [(0x200000, a.vaddr)]


def test_dynamic_windows(spapr):
    c = spapr.container("spapr_v2")
    f = spapr.facts
    start = c.create_window(1 << 30, page_shift=16)
    assert start == DDW_START
    assert c.windows == [f.dma32, (DDW_START, 1 << 30)]
    with pytest.raises(errors.BusyError, match="2 DMA windows") as exc:
        c.create_window(1 << 30, page_shift=12)
    assert exc.value.errno == errno.ENOSPC
    assert c.windows == [f.dma32, (DDW_START, 1 << 30)]
    with pytest.raises(errors.InvalidArgumentError, match="TCE page") as exc:
        c.create_window(1 << 30, page_shift=13)
    # the default window can be removed and made again, at the same place
    c.remove_window(DDW_START)
    c.remove_window(0)
    assert c.windows == []
    assert c.create_window(f.dma32[1], page_shift=12) == 0
    assert c.windows == [f.dma32]


def test_default_window_made_again_beside_a_dynamic_one(spapr):
    """pseries makes window 0 with ibm,reset-pe-dma-window, which it refuses while a
    dynamic window exists (EPERM); PowerNV programs any free table slot."""
    c = spapr.container("spapr_v2")
    f = spapr.facts
    c.create_window(1 << 30, page_shift=16)
    c.remove_window(0)
    if spapr.platform == "pseries":
        with pytest.raises(errors.PermissionDeniedError) as exc:
            c.create_window(f.dma32[1], page_shift=12)
        assert exc.value.errno == errno.EPERM
        assert c.windows == [(DDW_START, 1 << 30)]
    else:
        assert c.create_window(f.dma32[1], page_shift=12) == 0
        assert c.windows == [f.dma32, (DDW_START, 1 << 30)]


def test_levels_beyond_the_platform_are_refused(spapr):
    c = spapr.container("spapr_v2")
    with pytest.raises(errors.InvalidArgumentError, match="levels"):
        c.create_window(1 << 30, page_shift=12, levels=spapr.facts.levels + 1)
    assert c.windows == [spapr.facts.dma32]


def test_v1_takes_one_group(spapr):
    c = spapr.container("spapr")
    g = Group(spapr.groups[1])
    try:
        with pytest.raises(errors.BusyError) as exc:
            g.set_container(c)
        assert exc.value.errno == errno.EBUSY
    finally:
        g.close()
    assert len(c.groups) == 1


def test_after_the_last_group_leaves_the_container_has_no_iommu(spapr):
    c = spapr.container("spapr_v2")
    c.groups[0].unset_container()
    p = argsz.new("struct vfio_iommu_spapr_tce_info")
    with pytest.raises(errors.InvalidArgumentError) as exc:
        syscalls.ioctl(c.fd, lib.VFIO_IOMMU_SPAPR_TCE_GET_INFO, p)
    assert exc.value.errno == errno.EINVAL


@pytest.fixture
def spapr_edu(spapr, lab_target):
    """One edu opened through a container with ``model``'s IOMMU (a factory)."""
    from pyvfio.drivers.edu import Edu
    from pyvfio.vfio.open import open_device
    opened = []

    def open_edu(model: str) -> Edu:
        if lab_target.kind == "real":
            from pyvfio import pci
            bdf = pci.find(vendor=EDU[0], device=EDU[1])[0].name
        else:
            bdf = "0000:00:10.0"
        dev = open_device(bdf, iommu="container", iommu_model=model)
        opened.append(dev)
        return Edu(dev)

    yield open_edu
    for dev in reversed(opened):
        dev.close()


def _round_trip(edu, buf, src_iova: int, dst_iova: int, size: int = 256) -> bytes:
    pattern = bytes((i * 13 + 5) & 0xFF for i in range(size))
    buf.write(0, pattern)
    buf.write(buf.size // 2, b"\0" * size)
    edu.to_device(src_iova, size)            # the device reads RAM through the TCEs
    edu.from_device(dst_iova, size)          # and writes it back through them
    assert buf.read(buf.size // 2, size) == pattern
    return pattern


@pytest.mark.parametrize("model", ["spapr", "spapr_v2"])
def test_edu_dma_through_the_default_window_with_msi(spapr, spapr_edu, model):
    edu = spapr_edu(model)
    c = edu.device.dma
    assert c.iommu_name == model
    buf = spapr.buffer(2 * PAGE)
    m = c.map(buf)                        # inside the 32-bit window, below edu's 28-bit mask
    assert m.iova + m.size <= spapr.facts.dma32[1]
    _round_trip(edu, buf, m.iova, m.iova + PAGE)
    msi = edu.device.msi
    msi.enable()
    edu.raise_irq(0x1)
    assert msi.wait(timeout=10) == 1
    edu.ack_irq(0x1)
    msi.disable()
    c.unmap(m)
    assert c.mappings == []


@pytest.mark.parametrize("page_shift", [12, 16, 21])
def test_edu_dma_through_a_dynamic_window(spapr, spapr_edu, lab_target, page_shift):
    """A DDW at 1 << 59 with 4K, 64K or 2M TCEs.  A TCE page larger than the
    kernel's page needs memory backed by pages at least that large: hugetlbfs."""
    tce = 1 << page_shift
    if lab_target.kind == "mock" and tce > PAGE:
        pytest.skip("the mock's preregistration models base pages only (no hugetlb TCEs)")
    if lab_target.kind == "real":
        with open("/proc/sys/vm/nr_hugepages", "w") as f:
            f.write("4")
    edu = spapr_edu("spapr_v2")
    c = edu.device.dma
    start = c.create_window(1 << 30, page_shift=page_shift)
    assert start == DDW_START
    buf = spapr.buffer(2 * max(tce, PAGE), **({"kind": "hugetlb"} if tce > PAGE else {}))
    m = c.map(buf, iova=start + 16 * tce)
    half = buf.size // 2
    _round_trip(edu, buf, m.iova, m.iova + half)
    c.unmap(m)
    c.remove_window(start)
    assert c.windows == [spapr.facts.dma32]
