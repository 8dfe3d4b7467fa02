"""The mock kernel (pyvfio.mock) driven with raw VFIO/iommufd ioctls through pyvfio.core.syscalls.

These are the calls a driver makes (QEMU, DPDK, pyvfio's own objects), with
the values and errnos Linux 6.12 gives on QEMU's q35 + VT-d + edu; the
behaviours no kernel here offers (sPAPR TCE) follow vfio_iommu_spapr_tce.c.
"""
from __future__ import annotations

import contextlib
import errno
import mmap
import os
import select
import struct
from typing import Any, Iterator, List, Tuple

import pytest

from pyvfio import errors

from pyvfio.core import argsz, syscalls
from pyvfio.mock import EduModel, MockKernel, MockLeakError, mock_kernel
from pyvfio.core.uapi import ffi, lib

pytestmark = pytest.mark.host

EDU = "0000:00:10.0"
CFG = lib.VFIO_PCI_CONFIG_REGION_INDEX << 40
T, NONE, BOOL, EFD = (lib.VFIO_IRQ_SET_ACTION_TRIGGER, lib.VFIO_IRQ_SET_DATA_NONE,
                      lib.VFIO_IRQ_SET_DATA_BOOL, lib.VFIO_IRQ_SET_DATA_EVENTFD)
MASK, UNMASK = lib.VFIO_IRQ_SET_ACTION_MASK, lib.VFIO_IRQ_SET_ACTION_UNMASK
RW = lib.VFIO_DMA_MAP_FLAG_READ | lib.VFIO_DMA_MAP_FLAG_WRITE


# -- helpers -------------------------------------------------------------------------------

@contextlib.contextmanager
def raises_errno(err: int) -> Iterator[Any]:
    with pytest.raises(OSError) as ei:
        yield ei
    assert ei.value.errno == err, f"expected {errno.errorcode[err]}, got {ei.value!r}"


def ioctl(fd: int, req: int, arg: Any = None, **kw: Any) -> int:
    return syscalls.ioctl(fd, req, arg, **kw)


def open_container(mock: MockKernel, group: int = 5, iommu: int = lib.VFIO_TYPE1v2_IOMMU,
                   name: str = "") -> Tuple[int, int]:
    c = syscalls.open(mock.devroot + "/vfio/vfio")
    g = syscalls.open(f"{mock.devroot}/vfio/{name or group}")
    ioctl(g, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", c))
    if iommu is not None:
        ioctl(c, lib.VFIO_SET_IOMMU, iommu)
    return c, g


def device_fd(g: int, bdf: str = EDU) -> int:
    fd = ioctl(g, lib.VFIO_GROUP_GET_DEVICE_FD, ffi.new("char[]", bdf.encode()))
    return syscalls.adopt(fd, f"device {bdf}")


def close(*fds: int) -> None:
    for fd in fds:
        syscalls.close(fd)


class Buf:
    """Anonymous shared memory for DMA, with its address."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.map = syscalls.mmap(-1, size)
        self._ptr = ffi.from_buffer(self.map)
        self.addr = int(ffi.cast("uintptr_t", self._ptr))

    def close(self) -> None:
        ffi.release(self._ptr)
        syscalls.munmap(self.map)

    def __enter__(self) -> "Buf":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def dma_map(c: int, vaddr: int, iova: int, size: int, flags: int = RW, **kw: Any) -> int:
    p = argsz.new("struct vfio_iommu_type1_dma_map", flags=flags, vaddr=vaddr, iova=iova, size=size)
    return ioctl(c, lib.VFIO_IOMMU_MAP_DMA, p, **kw)


def dma_unmap(c: int, iova: int, size: int, flags: int = 0) -> int:
    p = argsz.new("struct vfio_iommu_type1_dma_unmap", flags=flags, iova=iova, size=size)
    ioctl(c, lib.VFIO_IOMMU_UNMAP_DMA, p)
    return p.size


def rd(d: int, off: int, n: int = 4) -> int:
    return int.from_bytes(syscalls.pread(d, n, off), "little")


def wr(d: int, off: int, value: int, n: int = 4) -> None:
    syscalls.pwrite(d, value.to_bytes(n, "little"), off)


def bus_master(d: int, on: bool = True) -> None:
    cmd = rd(d, CFG + 4, 2)
    wr(d, CFG + 4, (cmd | 0x6) if on else (cmd & ~0x4), 2)


def edu_dma(d: int, src: int, dst: int, count: int, to_ram: bool, irq: bool = False) -> None:
    wr(d, 0x80, src, 8)
    wr(d, 0x88, dst, 8)
    wr(d, 0x90, count, 8)
    wr(d, 0x98, 1 | (2 if to_ram else 0) | (4 if irq else 0), 8)
    assert rd(d, 0x98) & 1 == 0            # done when the start bit reads back clear


def set_irqs(d: int, index: int, flags: int, start: int, count: int, data: bytes = b"") -> int:
    p = argsz.new_var("struct vfio_irq_set", "data", len(data), index=index, flags=flags,
                      start=start, count=count)
    for i, b in enumerate(data):
        p.ptr.data[i] = b
    return ioctl(d, lib.VFIO_DEVICE_SET_IRQS, p.ptr)


def efd_data(*fds: int) -> bytes:
    return b"".join(struct.pack("<i", fd) for fd in fds)


def pending(efd: int) -> int:
    """Read an eventfd's counter if it is set (0 if not)."""
    p = select.poll()
    p.register(efd, select.POLLIN)
    if not p.poll(0):
        return 0
    return int.from_bytes(syscalls.read(efd, 8), "little")


def type1_caps(c: int) -> dict:
    info = argsz.get_info(c, lib.VFIO_IOMMU_GET_INFO, "struct vfio_iommu_type1_info")
    out: dict = {"pgsizes": info.iova_pgsizes, "flags": info.flags, "nbytes": info.nbytes}
    for cap in argsz.caps(info, info.cap_offset, argsz.IOMMU_TYPE1_CAPS):
        if cap.id == lib.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
            out["ranges"] = [(cap.data.iova_ranges[i].start, cap.data.iova_ranges[i].end)
                             for i in range(cap.data.nr_iovas)]
        elif cap.id == lib.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
            out["avail"] = cap.data.avail
        elif cap.id == lib.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION:
            out["migration"] = (cap.data.flags, cap.data.pgsize_bitmap, cap.data.max_dirty_bitmap_size)
    return out


@pytest.fixture
def mock(tmp_path):
    with mock_kernel(tmp_path, devices=[EduModel(EDU, group=5)]) as k:
        yield k


@pytest.fixture
def edu(mock):
    """A container (type1v2), the group and the edu device fd, bus master on."""
    c, g = open_container(mock)
    d = device_fd(g)
    bus_master(d)
    yield mock, c, g, d
    close(d, g, c)


# -- nodes, sysfs, pass-through -------------------------------------------------------------

def test_device_nodes_and_sysfs_are_standard_linux(tmp_path):
    with mock_kernel(tmp_path, devices=[EduModel(EDU, group=5), EduModel("0000:01:00.0", group=9)]) as k:
        for node in ("vfio/vfio", "vfio/5", "vfio/9", "vfio/devices/vfio0", "vfio/devices/vfio1", "iommu"):
            assert os.path.exists(os.path.join(k.devroot, node))
        dev = os.path.join(k.sysfs, "bus", "pci", "devices", EDU)
        read = lambda name: open(os.path.join(dev, name)).read().strip()   # noqa: E731
        assert (read("vendor"), read("device"), read("class")) == ("0x1234", "0x11e8", "0x00ff00")
        assert os.path.basename(os.readlink(os.path.join(dev, "driver"))) == "vfio-pci"
        assert os.path.basename(os.readlink(os.path.join(dev, "iommu_group"))) == "5"
        assert os.listdir(os.path.join(dev, "vfio-dev")) == ["vfio0"]
        assert os.listdir(os.path.join(k.sysfs, "kernel", "iommu_groups", "5", "devices")) == [EDU]
        assert open(os.path.join(k.sysfs, "kernel", "iommu_groups", "5", "reserved_regions")).read() \
            == "0x00000000fee00000 0x00000000feefffff msi\n"
        # behind a root port: the device directory sits under the bridge
        behind = os.path.realpath(os.path.join(k.sysfs, "bus", "pci", "devices", "0000:01:00.0"))
        assert behind.endswith("pci0000:00/0000:00:1c.0/0000:01:00.0")
        with open(os.path.join(dev, "config"), "rb") as f:
            assert f.read(4) == bytes.fromhex("3412e811")


def test_other_paths_and_eventfds_are_the_real_kernel(mock):
    fd = syscalls.open(os.devnull)
    with raises_errno(errno.ENOTTY):
        ioctl(fd, lib.VFIO_GET_API_VERSION)
    close(fd)
    efd = syscalls.eventfd(0, 0)
    syscalls.write(efd, (3).to_bytes(8, "little"))
    assert syscalls.poll([(efd, select.POLLIN)], 0)
    assert pending(efd) == 3
    close(efd)
    with pytest.raises(errors.NotFoundError):
        syscalls.open(mock.devroot + "/vfio/42")


# -- container and group --------------------------------------------------------------------

def test_api_version_and_extensions(mock):
    c = syscalls.open(mock.devroot + "/vfio/vfio")
    assert ioctl(c, lib.VFIO_GET_API_VERSION) == 0
    ext = lambda e: ioctl(c, lib.VFIO_CHECK_EXTENSION, e)      # noqa: E731
    assert ext(lib.VFIO_TYPE1_IOMMU) == ext(lib.VFIO_TYPE1v2_IOMMU) == ext(lib.VFIO_UNMAP_ALL) == 1
    assert ext(lib.VFIO_UPDATE_VADDR) == 0           # only once a type1 IOMMU is set
    assert ext(lib.VFIO_SPAPR_TCE_IOMMU) == ext(lib.VFIO_NOIOMMU_IOMMU) == ext(lib.VFIO_EEH) == 0
    with raises_errno(errno.EINVAL):                 # no group yet
        ioctl(c, lib.VFIO_SET_IOMMU, lib.VFIO_TYPE1v2_IOMMU)
    with raises_errno(errno.EINVAL):                 # IOMMU ioctls before SET_IOMMU
        ioctl(c, lib.VFIO_IOMMU_GET_INFO, argsz.new("struct vfio_iommu_type1_info"))
    g = syscalls.open(mock.devroot + "/vfio/5")
    ioctl(g, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", c))
    with raises_errno(errno.ENODEV):                 # no sPAPR IOMMU on this machine
        ioctl(c, lib.VFIO_SET_IOMMU, lib.VFIO_SPAPR_TCE_IOMMU)
    with raises_errno(errno.EINVAL):                 # nesting: the IOMMU cannot
        ioctl(c, lib.VFIO_SET_IOMMU, lib.VFIO_TYPE1_NESTING_IOMMU)
    assert ioctl(c, lib.VFIO_SET_IOMMU, lib.VFIO_TYPE1v2_IOMMU) == 0
    with raises_errno(errno.EINVAL):                 # once only
        ioctl(c, lib.VFIO_SET_IOMMU, lib.VFIO_TYPE1v2_IOMMU)
    assert ext(lib.VFIO_UPDATE_VADDR) == 1
    assert ext(lib.VFIO_DMA_CC_IOMMU) == 0           # QEMU's VT-d has no snoop control
    with raises_errno(errno.ENOTTY):                 # a sPAPR ioctl on type1
        ioctl(c, lib.VFIO_IOMMU_ENABLE)
    close(g, c)


def test_group_status_and_exclusive_open(mock):
    g = syscalls.open(mock.devroot + "/vfio/5")
    st = argsz.new("struct vfio_group_status")
    ioctl(g, lib.VFIO_GROUP_GET_STATUS, st)
    assert st.flags == lib.VFIO_GROUP_FLAGS_VIABLE
    with pytest.raises(errors.BusyError):
        syscalls.open(mock.devroot + "/vfio/5")
    with raises_errno(errno.EINVAL):
        ioctl(g, lib.VFIO_GROUP_UNSET_CONTAINER)
    with raises_errno(errno.EBADF):
        ioctl(g, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", 999))
    null = syscalls.open(os.devnull)
    with raises_errno(errno.EBADFD):
        ioctl(g, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", null))
    c = syscalls.open(mock.devroot + "/vfio/vfio")
    ioctl(g, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", c))
    ioctl(g, lib.VFIO_GROUP_GET_STATUS, st)
    assert st.flags == lib.VFIO_GROUP_FLAGS_VIABLE | lib.VFIO_GROUP_FLAGS_CONTAINER_SET
    with raises_errno(errno.EINVAL):
        ioctl(g, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", c))
    close(null, g, c)


def test_get_device_fd_rules(mock):
    c, g = open_container(mock, iommu=None)
    name = ffi.new("char[]", EDU.encode())
    with raises_errno(errno.EINVAL):                 # the container has no IOMMU yet
        ioctl(g, lib.VFIO_GROUP_GET_DEVICE_FD, name)
    ioctl(c, lib.VFIO_SET_IOMMU, lib.VFIO_TYPE1v2_IOMMU)
    with raises_errno(errno.ENODEV):
        ioctl(g, lib.VFIO_GROUP_GET_DEVICE_FD, ffi.new("char[]", b"0000:00:1f.7"))
    with raises_errno(errno.EINVAL):                 # a VF token for a device that is no PF/VF
        ioctl(g, lib.VFIO_GROUP_GET_DEVICE_FD,
              ffi.new("char[]", (EDU + " vf_token=2ab74924-c335-45f4-9b16-8569e5b08258").encode()))
    d1, d2 = device_fd(g), device_fd(g)              # the group path may open a device twice
    assert d1 != d2
    with raises_errno(errno.EBUSY):                  # devices hold the container
        ioctl(g, lib.VFIO_GROUP_UNSET_CONTAINER)
    close(d1, d2)
    ioctl(g, lib.VFIO_GROUP_UNSET_CONTAINER)
    close(g, c)


def test_non_viable_group(tmp_path):
    with mock_kernel(tmp_path, devices=[EduModel(EDU, group=5, viable=False)]) as k:
        members = sorted(os.listdir(os.path.join(k.sysfs, "kernel", "iommu_groups", "5", "devices")))
        assert members == [EDU, "0000:00:10.1"]
        drv = os.readlink(os.path.join(k.sysfs, "bus", "pci", "devices", "0000:00:10.1", "driver"))
        assert os.path.basename(drv) == "e1000e"
        g = syscalls.open(k.devroot + "/vfio/5")
        st = argsz.new("struct vfio_group_status")
        ioctl(g, lib.VFIO_GROUP_GET_STATUS, st)
        assert st.flags == 0
        c = syscalls.open(k.devroot + "/vfio/vfio")
        with raises_errno(errno.EPERM):
            ioctl(g, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", c))
        close(g, c)


# -- type1 ----------------------------------------------------------------------------------

def test_iommu_info_argsz_growth_and_capability_chain(mock):
    c, g = open_container(mock)
    small = argsz.new("struct vfio_iommu_type1_info")
    ioctl(c, lib.VFIO_IOMMU_GET_INFO, small)
    assert small.argsz == 120 and small.cap_offset == 0     # the caps did not fit
    assert small.flags == lib.VFIO_IOMMU_INFO_PGSIZES | lib.VFIO_IOMMU_INFO_CAPS
    caps = type1_caps(c)
    assert caps["nbytes"] == 120
    assert caps["pgsizes"] == 0x1000 | 0x200000 | 0x40000000
    assert caps["ranges"] == [(0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)]
    assert caps["migration"] == (0, 0x1000, 0x10000000)
    assert caps["avail"] == 65535
    with Buf(0x4000) as buf:
        dma_map(c, buf.addr, 0x100000, 0x4000)
        assert type1_caps(c)["avail"] == 65534
        assert dma_unmap(c, 0x100000, 0x4000) == 0x4000
    close(g, c)


@pytest.mark.parametrize("iova,size,flags,vaddr_off,err", [
    (0x1000800, 0x1000, RW, 0, errno.EINVAL),        # misaligned IOVA
    (0x1000000, 0, RW, 0, errno.EINVAL),             # zero size
    (0x1000000, 0x1000, 0, 0, errno.EINVAL),         # neither read nor write
    (0x1000000, 0x1000, RW, 0x10, errno.EINVAL),     # misaligned vaddr
    (0xFEE00000, 0x1000, RW, 0, errno.EINVAL),       # the MSI window is reserved
    (1 << 48, 0x1000, RW, 0, errno.EINVAL),          # beyond the 48-bit aperture
    (0xFED00000, 0x200000, RW, 0, errno.EINVAL),     # straddles into the MSI window
])
def test_map_dma_refusals(mock, iova, size, flags, vaddr_off, err):
    c, g = open_container(mock)
    with Buf(0x4000) as buf:
        with raises_errno(err):
            dma_map(c, buf.addr + vaddr_off, iova, size, flags)
    assert mock.vfio.mappings() == []
    close(g, c)


def test_map_overlap_bad_vaddr_and_unmap_rules_v2(mock):
    c, g = open_container(mock)
    with Buf(0x10000) as buf:
        with raises_errno(errno.EFAULT):             # nothing mapped at that address
            dma_map(c, 0x1000, 0x1000000, 0x1000)
        dma_map(c, buf.addr, 0x1000000, 0x4000)
        with raises_errno(errno.EEXIST):
            dma_map(c, buf.addr + 0x8000, 0x1002000, 0x4000)
        dma_map(c, buf.addr + 0x8000, 0x1004000, 0x4000)
        with raises_errno(errno.EINVAL):             # v2: no bisecting a mapping
            dma_unmap(c, 0x1001000, 0x1000)
        with raises_errno(errno.EINVAL):
            dma_unmap(c, 0x1000800, 0x1000)
        with raises_errno(errno.EINVAL):             # UNMAP_ALL takes no range
            dma_unmap(c, 0x1000, 0, lib.VFIO_DMA_UNMAP_FLAG_ALL)
        assert dma_unmap(c, 0x3000000, 0x1000) == 0  # nothing there: success, size 0
        assert dma_unmap(c, 0x1000000, 0x8000) == 0x8000     # both mappings at once
        dma_map(c, buf.addr, 0x1000000, 0x4000)
        dma_map(c, buf.addr, 0x2000000, 0x4000)      # the same memory twice is allowed
        assert dma_unmap(c, 0, 0, lib.VFIO_DMA_UNMAP_FLAG_ALL) == 0x8000
    assert mock.process.locked_bytes == 0
    close(g, c)


def test_unmap_rules_v1(mock):
    c, g = open_container(mock, iommu=lib.VFIO_TYPE1_IOMMU)
    with Buf(0x4000) as buf:
        dma_map(c, buf.addr, 0x1000000, 0x4000)
        assert dma_unmap(c, 0x1001000, 0x1000) == 0          # offset into a mapping: nothing
        assert dma_unmap(c, 0x1000000, 0x1000) == 0x4000     # covers its start: all of it
    close(g, c)


def test_dma_entry_limit_gives_enospc(tmp_path):
    with mock_kernel(tmp_path, devices=[EduModel(EDU, group=5)], dma_entry_limit=2) as k:
        c, g = open_container(k)
        with Buf(0x3000) as buf:
            dma_map(c, buf.addr, 0x100000, 0x1000)
            dma_map(c, buf.addr + 0x1000, 0x200000, 0x1000)
            assert type1_caps(c)["avail"] == 0
            with raises_errno(errno.ENOSPC):
                dma_map(c, buf.addr + 0x2000, 0x300000, 0x1000)
            dma_unmap(c, 0, 0, lib.VFIO_DMA_UNMAP_FLAG_ALL)
        close(g, c)


def test_memlock_limit_gives_enomem_and_memlock_error(tmp_path):
    with mock_kernel(tmp_path, devices=[EduModel(EDU, group=5)], memlock=64 << 10) as k:
        c, g = open_container(k)
        with Buf(0x40000) as buf:
            dma_map(c, buf.addr, 0x100000, 0x10000)          # exactly the limit
            assert k.process.locked_bytes == 0x10000
            with raises_errno(errno.ENOMEM):
                dma_map(c, buf.addr + 0x10000, 0x200000, 0x1000)
            with pytest.raises(errors.MemlockError) as ei:
                dma_map(c, buf.addr + 0x10000, 0x200000, 0x1000, dma=True)
            assert ei.value.errno == errno.ENOMEM and ei.value.op == "VFIO_IOMMU_MAP_DMA"
            dma_unmap(c, 0x100000, 0x10000)
            assert k.process.locked_bytes == 0
            dma_map(c, buf.addr, 0x100000, 0x10000)
        close(g, c)                                   # releasing the container unpins all
        assert k.process.locked_bytes == 0


# -- the device fd --------------------------------------------------------------------------

def test_device_info_regions_and_irqs(edu):
    mock, c, g, d = edu
    info = argsz.new("struct vfio_device_info")
    ioctl(d, lib.VFIO_DEVICE_GET_INFO, info)
    assert info.flags == lib.VFIO_DEVICE_FLAGS_PCI           # no reset method on the root bus
    assert (info.num_regions, info.num_irqs) == (9, 5)

    def region(index):
        r = argsz.new("struct vfio_region_info", index=index)
        ioctl(d, lib.VFIO_DEVICE_GET_REGION_INFO, r)
        return r.flags, r.size, r.offset

    rw = lib.VFIO_REGION_INFO_FLAG_READ | lib.VFIO_REGION_INFO_FLAG_WRITE
    assert region(0) == (rw, 1 << 20, 0)                     # pread/pwrite only in the mock
    assert region(1) == (0, 0, 1 << 40)
    assert region(lib.VFIO_PCI_ROM_REGION_INDEX) == (0, 0, 6 << 40)
    assert region(lib.VFIO_PCI_CONFIG_REGION_INDEX) == (rw, 256, 7 << 40)
    with raises_errno(errno.EINVAL):
        region(lib.VFIO_PCI_VGA_REGION_INDEX)

    def irq(index):
        r = argsz.new("struct vfio_irq_info", index=index)
        ioctl(d, lib.VFIO_DEVICE_GET_IRQ_INFO, r)
        return r.flags, r.count

    ev, mk, am, nr = (lib.VFIO_IRQ_INFO_EVENTFD, lib.VFIO_IRQ_INFO_MASKABLE,
                      lib.VFIO_IRQ_INFO_AUTOMASKED, lib.VFIO_IRQ_INFO_NORESIZE)
    assert irq(lib.VFIO_PCI_INTX_IRQ_INDEX) == (ev | mk | am, 1)
    assert irq(lib.VFIO_PCI_MSI_IRQ_INDEX) == (ev | nr, 1)
    assert irq(lib.VFIO_PCI_MSIX_IRQ_INDEX) == (ev | nr, 0)
    assert irq(lib.VFIO_PCI_REQ_IRQ_INDEX) == (ev | nr, 1)
    with raises_errno(errno.EINVAL):                         # ERR is for PCIe devices only
        irq(lib.VFIO_PCI_ERR_IRQ_INDEX)
    with raises_errno(errno.EINVAL):                         # BIND_IOMMUFD: cdev fds only
        ioctl(d, lib.VFIO_DEVICE_BIND_IOMMUFD, argsz.new("struct vfio_device_bind_iommufd"))
    with raises_errno(errno.ENOTTY):
        ioctl(d, lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT, argsz.new("struct vfio_device_attach_iommufd_pt"))


def test_config_space_through_vfio(edu):
    mock, c, g, d = edu
    hdr = syscalls.pread(d, 64, CFG)
    assert struct.unpack_from("<HH", hdr, 0) == (0x1234, 0x11E8)
    assert hdr[8] == 0x10 and hdr[9:12] == bytes.fromhex("00ff00")      # revision, class
    assert struct.unpack_from("<H", hdr, 6)[0] & 0x10                    # capabilities list
    assert hdr[0x34] == 0x40 and hdr[0x3D] == 1                          # MSI cap, INTA
    assert syscalls.pread(d, 4, CFG + 0x40) == bytes.fromhex("05008000")  # MSI, last, 64-bit
    assert rd(d, CFG + 4, 2) == 0x107        # I/O, memory (firmware, kernel), master (us), SERR
    wr(d, CFG + 0x10, 0xFFFFFFFF)
    assert rd(d, CFG + 0x10) == 0xFFF00000   # BAR0 sizing: 1 MiB, 32-bit memory
    wr(d, CFG + 0x14, 0xFFFFFFFF)
    assert rd(d, CFG + 0x14) == 0            # no BAR1
    with raises_errno(errno.EFAULT):
        syscalls.pread(d, 8, CFG + 0xFC)
    wr(d, CFG + 0x42, 0x0081, 2)             # MSI enable is the SET_IRQS ioctl's, not ours
    assert rd(d, CFG + 0x42, 2) == 0x0080


def test_edu_registers_and_factorial(edu):
    mock, c, g, d = edu
    assert rd(d, 0x00) == 0x010000ED
    wr(d, 0x04, 0x12345678)
    assert rd(d, 0x04) == 0xEDCBA987
    wr(d, 0x08, 10)
    assert rd(d, 0x20) & 1 == 0
    assert rd(d, 0x08) == 3628800
    wr(d, 0x08, 13)
    assert rd(d, 0x08) == 6227020800 % (1 << 32)     # 32-bit arithmetic, as QEMU's
    assert rd(d, 0x40000) == 0xFFFFFFFF              # the DMA buffer is not on the BAR


def test_bar_access_widths_bounds_and_memory_enable(edu):
    mock, c, g, d = edu
    assert syscalls.pread(d, 8, 0x00) == b"\xff" * 8         # 8-byte access below 0x80
    wr(d, 0x80, 0x1122334455667788, 8)
    assert rd(d, 0x80, 8) == 0x1122334455667788              # 8-byte DMA registers
    assert syscalls.pread(d, 1, 0x00) == b"\0"               # below edu's 4-byte minimum
    assert rd(d, (1 << 20) - 4) == 0xFFFFFFFF
    with pytest.raises(errors.OutOfBoundsError):             # short read at the end
        syscalls.pread(d, 8, (1 << 20) - 4)
    with raises_errno(errno.EINVAL):
        syscalls.pread(d, 4, 1 << 20)
    with raises_errno(errno.EINVAL):
        syscalls.pread(d, 4, 6 << 40)                        # no ROM
    with raises_errno(errno.EINVAL):                         # not mmap-able in the mock
        syscalls.mmap(d, 4096, 0)
    cmd = rd(d, CFG + 4, 2)
    wr(d, CFG + 4, cmd & ~0x2, 2)
    with raises_errno(errno.EIO):                            # memory decoding off
        rd(d, 0)
    wr(d, CFG + 4, cmd, 2)
    assert rd(d, 0) == 0x010000ED


@pytest.mark.parametrize("size", [1, 64, 2048, 4095])
def test_edu_dma_round_trip(edu, size):
    mock, c, g, d = edu
    with Buf(0x3000) as buf:
        dma_map(c, buf.addr, 0x100000, 0x3000)
        pattern = bytes((i * 7 + 3) & 0xFF for i in range(size))
        buf.map[0:size] = pattern
        edu_dma(d, 0x100000, 0x40000, size, to_ram=False)    # RAM -> device buffer
        edu_dma(d, 0x40000, 0x101000, size, to_ram=True)     # device buffer -> RAM
        assert bytes(buf.map[0x1000:0x1000 + size]) == pattern
        assert bytes(buf.map[0x1000 + size:0x1000 + size + 16]) == bytes(16)
        dma_unmap(c, 0x100000, 0x3000)
    assert mock.process.faults == []


def test_dma_to_unmapped_iova_faults_and_leaves_memory(edu):
    mock, c, g, d = edu
    with Buf(0x2000) as buf:
        dma_map(c, buf.addr, 0x100000, 0x1000)
        dma_map(c, buf.addr + 0x1000, 0x200000, 0x1000, flags=lib.VFIO_DMA_MAP_FLAG_READ)
        buf.map[0:64] = bytes(range(64))
        edu_dma(d, 0x100000, 0x40000, 64, to_ram=False)
        dma_unmap(c, 0x100000, 0x1000)
        buf.map[0:64] = b"\x55" * 64
        edu_dma(d, 0x40000, 0x100000, 64, to_ram=True)       # the mapping is gone
        assert bytes(buf.map[0:64]) == b"\x55" * 64
        assert [(f.device, f.iova, f.length, f.write) for f in mock.process.faults] == [(EDU, 0x100000, 64, True)]
        assert "not mapped" in mock.process.faults[0].reason
        edu_dma(d, 0x40000, 0x200000, 64, to_ram=True)       # a read-only mapping
        assert bytes(buf.map[0x1000:0x1040]) == bytes(64)
        assert "write permission" in mock.process.faults[-1].reason
        edu_dma(d, 0x300000, 0x40000, 16, to_ram=False)      # a faulted read gives zeros
        edu_dma(d, 0x40000, 0x100000, 16, to_ram=True)
        assert mock.pci.model(EDU).dma_buf[:16] == bytes(16)
        dma_unmap(c, 0, 0, lib.VFIO_DMA_UNMAP_FLAG_ALL)


def test_dma_and_msi_need_bus_master(edu):
    mock, c, g, d = edu
    efd = syscalls.eventfd()
    set_irqs(d, lib.VFIO_PCI_MSI_IRQ_INDEX, T | EFD, 0, 1, efd_data(efd))
    bus_master(d, False)
    with Buf(0x1000) as buf:
        dma_map(c, buf.addr, 0x100000, 0x1000)
        buf.map[0:16] = b"\x77" * 16
        edu_dma(d, 0x40000, 0x100000, 16, to_ram=True)
        assert bytes(buf.map[0:16]) == b"\x77" * 16
        assert mock.process.faults[-1].reason == "bus master disabled"
        wr(d, 0x60, 1)
        assert pending(efd) == 0                     # the MSI write never left the device
        wr(d, 0x64, 1)
        dma_unmap(c, 0x100000, 0x1000)
    set_irqs(d, lib.VFIO_PCI_MSI_IRQ_INDEX, T | NONE, 0, 0)
    close(efd)


# -- interrupts -----------------------------------------------------------------------------

def test_msi_counted_on_a_real_eventfd(edu):
    mock, c, g, d = edu
    efd = syscalls.eventfd()
    set_irqs(d, lib.VFIO_PCI_MSI_IRQ_INDEX, T | EFD, 0, 1, efd_data(efd))
    wr(d, 0x60, 0x5)
    assert syscalls.poll([(efd, select.POLLIN)], 1)
    assert int.from_bytes(syscalls.read(efd, 8), "little") == 1
    assert rd(d, 0x24) == 0x5
    wr(d, 0x64, 0x5)
    assert rd(d, 0x24) == 0
    wr(d, 0x20, 0x80)                                 # raise an interrupt when the factorial is done
    wr(d, 0x08, 5)
    assert pending(efd) == 1 and rd(d, 0x24) == 1
    wr(d, 0x64, 1)
    with Buf(0x1000) as buf:
        dma_map(c, buf.addr, 0x100000, 0x1000)
        edu_dma(d, 0x100000, 0x40000, 8, to_ram=False, irq=True)
        assert pending(efd) == 1 and rd(d, 0x24) == 0x100
        dma_unmap(c, 0x100000, 0x1000)
    wr(d, 0x64, 0x100)
    set_irqs(d, lib.VFIO_PCI_MSI_IRQ_INDEX, T | NONE, 0, 1)      # loopback trigger
    assert pending(efd) == 1
    with raises_errno(errno.EINVAL):                  # INTx while MSI is on
        set_irqs(d, lib.VFIO_PCI_INTX_IRQ_INDEX, T | EFD, 0, 1, efd_data(efd))
    set_irqs(d, lib.VFIO_PCI_MSI_IRQ_INDEX, T | NONE, 0, 0)      # count 0 + DATA_NONE: off
    wr(d, 0x60, 1)
    assert pending(efd) == 0
    close(efd)


def test_intx_automask_mask_and_unmask(edu):
    mock, c, g, d = edu
    efd, unmask_fd = syscalls.eventfd(), syscalls.eventfd()
    set_irqs(d, lib.VFIO_PCI_INTX_IRQ_INDEX, T | EFD, 0, 1, efd_data(efd))
    wr(d, 0x60, 1)
    assert pending(efd) == 1                          # signalled once, then masked
    assert rd(d, CFG + 6, 2) & 0x08                   # the Interrupt Status bit
    wr(d, 0x60, 2)
    assert pending(efd) == 0                          # automasked
    wr(d, 0x64, 3)                                    # the device deasserts
    set_irqs(d, lib.VFIO_PCI_INTX_IRQ_INDEX, UNMASK | NONE, 0, 1)
    assert pending(efd) == 0
    set_irqs(d, lib.VFIO_PCI_INTX_IRQ_INDEX, MASK | NONE, 0, 1)
    wr(d, 0x60, 4)
    assert pending(efd) == 0                          # held back while masked
    set_irqs(d, lib.VFIO_PCI_INTX_IRQ_INDEX, UNMASK | NONE, 0, 1)
    assert pending(efd) == 1                          # still asserted: delivered on unmask
    wr(d, 0x64, 4)
    set_irqs(d, lib.VFIO_PCI_INTX_IRQ_INDEX, UNMASK | EFD, 0, 1, efd_data(unmask_fd))
    syscalls.write(unmask_fd, (1).to_bytes(8, "little"))        # unmask through an irqfd
    wr(d, 0x60, 8)
    assert pending(efd) == 1
    wr(d, 0x64, 8)
    wr(d, CFG + 4, rd(d, CFG + 4, 2) | 0x400, 2)     # the (virtual) INTx Disable bit masks too
    syscalls.write(unmask_fd, (1).to_bytes(8, "little"))
    wr(d, 0x60, 0x10)
    assert pending(efd) == 0
    wr(d, CFG + 4, rd(d, CFG + 4, 2) & ~0x400, 2)
    assert pending(efd) == 1
    wr(d, 0x64, 0x10)
    with raises_errno(errno.ENOTTY):
        set_irqs(d, lib.VFIO_PCI_INTX_IRQ_INDEX, MASK | EFD, 0, 1, efd_data(efd))
    with raises_errno(errno.EINVAL):
        set_irqs(d, lib.VFIO_PCI_INTX_IRQ_INDEX, T | EFD, 0, 2, efd_data(efd, efd))
    set_irqs(d, lib.VFIO_PCI_INTX_IRQ_INDEX, T | NONE, 0, 0)
    with raises_errno(errno.EINVAL):                  # no INTx handler any more
        set_irqs(d, lib.VFIO_PCI_INTX_IRQ_INDEX, UNMASK | NONE, 0, 1)
    close(efd, unmask_fd)


def test_set_irqs_argument_checks(edu):
    mock, c, g, d = edu
    efd = syscalls.eventfd()
    null = syscalls.open(os.devnull)
    with raises_errno(errno.EINVAL):                  # MSI-X: the device has none
        set_irqs(d, lib.VFIO_PCI_MSIX_IRQ_INDEX, T | EFD, 0, 1, efd_data(efd))
    with raises_errno(errno.ENOTTY):                  # MSI cannot be masked
        set_irqs(d, lib.VFIO_PCI_MSI_IRQ_INDEX, MASK | NONE, 0, 1)
    with raises_errno(errno.EINVAL):                  # two data types
        set_irqs(d, lib.VFIO_PCI_INTX_IRQ_INDEX, T | NONE | BOOL, 0, 1, b"\x01")
    with raises_errno(errno.EINVAL):                  # not an eventfd
        set_irqs(d, lib.VFIO_PCI_INTX_IRQ_INDEX, T | EFD, 0, 1, efd_data(null))
    with raises_errno(errno.EBADF):
        set_irqs(d, lib.VFIO_PCI_INTX_IRQ_INDEX, T | EFD, 0, 1, efd_data(999))
    with raises_errno(errno.EINVAL):                  # no trigger set yet
        set_irqs(d, lib.VFIO_PCI_REQ_IRQ_INDEX, T | NONE, 0, 1)
    set_irqs(d, lib.VFIO_PCI_REQ_IRQ_INDEX, T | EFD, 0, 1, efd_data(efd))
    set_irqs(d, lib.VFIO_PCI_REQ_IRQ_INDEX, T | NONE, 0, 1)
    assert pending(efd) == 1
    set_irqs(d, lib.VFIO_PCI_REQ_IRQ_INDEX, T | NONE, 0, 0)
    close(efd, null)


def test_ioeventfd_writes_the_register(edu):
    mock, c, g, d = edu
    efd, msi = syscalls.eventfd(), syscalls.eventfd()
    set_irqs(d, lib.VFIO_PCI_MSI_IRQ_INDEX, T | EFD, 0, 1, efd_data(msi))
    io = argsz.new("struct vfio_device_ioeventfd", flags=lib.VFIO_DEVICE_IOEVENTFD_32,
                   offset=0x60, data=0x2, fd=efd)
    ioctl(d, lib.VFIO_DEVICE_IOEVENTFD, io)
    with raises_errno(errno.EEXIST):
        ioctl(d, lib.VFIO_DEVICE_IOEVENTFD, io)
    syscalls.write(efd, (1).to_bytes(8, "little"))   # the kernel writes 0x2 to BAR0 + 0x60
    assert rd(d, 0x24) == 0x2 and pending(msi) == 1
    wr(d, 0x64, 2)
    io.fd = -1
    ioctl(d, lib.VFIO_DEVICE_IOEVENTFD, io)
    with raises_errno(errno.ENODEV):
        ioctl(d, lib.VFIO_DEVICE_IOEVENTFD, io)
    set_irqs(d, lib.VFIO_PCI_MSI_IRQ_INDEX, T | NONE, 0, 0)
    close(efd, msi)


# -- resets and features --------------------------------------------------------------------

def test_reset_needs_a_method(tmp_path):
    behind = "0000:01:00.0"
    with mock_kernel(tmp_path, devices=[EduModel(EDU, group=5), EduModel(behind, group=9)]) as k:
        c, g = open_container(k)
        d = device_fd(g)
        with raises_errno(errno.EINVAL):             # alone on the root bus: no reset method
            ioctl(d, lib.VFIO_DEVICE_RESET)
        hr = argsz.new_var("struct vfio_pci_hot_reset_info", "devices", 0)
        with raises_errno(errno.ENODEV):             # and no bus to reset
            ioctl(d, lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, hr.ptr)
        close(d, g, c)
        c, g = open_container(k, group=9)
        d = device_fd(g, behind)
        info = argsz.new("struct vfio_device_info")
        ioctl(d, lib.VFIO_DEVICE_GET_INFO, info)
        assert info.flags == lib.VFIO_DEVICE_FLAGS_PCI | lib.VFIO_DEVICE_FLAGS_RESET
        wr(d, 0x04, 0x12345678)
        bus_master(d)
        ioctl(d, lib.VFIO_DEVICE_RESET)
        assert rd(d, 0x04) == 0xEDCBA987             # QEMU's edu keeps its registers...
        assert rd(d, CFG + 4, 2) == 0x107            # ...and the kernel restores config space
        close(d, g, c)


def test_reset_registers_option(tmp_path):
    with mock_kernel(tmp_path, devices=[EduModel("0000:02:00.0", group=3, reset_registers=True)]) as k:
        c, g = open_container(k, group=3)
        d = device_fd(g, "0000:02:00.0")
        wr(d, 0x04, 0x12345678)
        ioctl(d, lib.VFIO_DEVICE_RESET)
        assert rd(d, 0x04) == 0
        close(d, g, c)


def test_hot_reset_info_and_hot_reset(tmp_path):
    behind = "0000:01:00.0"
    with mock_kernel(tmp_path, devices=[EduModel(behind, group=9)]) as k:
        c, g = open_container(k, group=9)
        d = device_fd(g, behind)
        small = argsz.new_var("struct vfio_pci_hot_reset_info", "devices", 0)
        with raises_errno(errno.ENOSPC):
            ioctl(d, lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, small.ptr)
        assert small.count == 1
        info = argsz.new_var("struct vfio_pci_hot_reset_info", "devices", 1)
        ioctl(d, lib.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, info.ptr)
        dev = info.ptr.devices[0]
        assert (info.flags, dev.group_id, dev.segment, dev.bus, dev.devfn) == (0, 9, 0, 1, 0)

        def hot_reset(fds):
            p = argsz.new_var("struct vfio_pci_hot_reset", "group_fds", len(fds), count=len(fds))
            for i, fd in enumerate(fds):
                p.ptr.group_fds[i] = fd
            return ioctl(d, lib.VFIO_DEVICE_PCI_HOT_RESET, p.ptr)

        with raises_errno(errno.EINVAL):             # group path: groups must be given
            hot_reset([])
        with raises_errno(errno.EINVAL):             # not a group fd
            hot_reset([c])
        with raises_errno(errno.EBADF):
            hot_reset([999])
        assert hot_reset([g]) == 0
        close(d, g, c)


def test_device_features(edu):
    mock, c, g, d = edu
    feat = lambda flags: ioctl(d, lib.VFIO_DEVICE_FEATURE,             # noqa: E731
                               argsz.new("struct vfio_device_feature", flags=flags))
    P, G, S = lib.VFIO_DEVICE_FEATURE_PROBE, lib.VFIO_DEVICE_FEATURE_GET, lib.VFIO_DEVICE_FEATURE_SET
    with raises_errno(errno.ENOTTY):
        feat(P | G | lib.VFIO_DEVICE_FEATURE_MIGRATION)       # edu has no migration driver
    with raises_errno(errno.ENOTTY):
        feat(P | lib.VFIO_DEVICE_FEATURE_DMA_LOGGING_START)
    with raises_errno(errno.ENOTTY):
        feat(P | lib.VFIO_DEVICE_FEATURE_PCI_VF_TOKEN)
    assert feat(P | S | lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY) == 0
    with raises_errno(errno.EINVAL):
        feat(P | G | lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY)
    with raises_errno(errno.EINVAL):                          # GET and SET without PROBE
        feat(G | S | lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY)
    assert feat(S | lib.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY) == 0
    assert rd(d, 0) == 0x010000ED                             # any access wakes it again


def test_sparse_mmap_capability_and_mmap(tmp_path):
    with mock_kernel(tmp_path, devices=[EduModel(EDU, group=5, extra_bar=True)]) as k:
        c, g = open_container(k)
        d = device_fd(g)
        small = argsz.new("struct vfio_region_info", index=2)
        ioctl(d, lib.VFIO_DEVICE_GET_REGION_INFO, small)
        assert small.argsz > ffi.sizeof("struct vfio_region_info") and small.cap_offset == 0
        info = argsz.get_info(d, lib.VFIO_DEVICE_GET_REGION_INFO, "struct vfio_region_info", index=2)
        assert info.size == 64 << 10
        assert info.flags & lib.VFIO_REGION_INFO_FLAG_MMAP and info.flags & lib.VFIO_REGION_INFO_FLAG_CAPS
        (cap,) = argsz.caps(info, info.cap_offset, argsz.REGION_CAPS)
        assert cap.id == lib.VFIO_REGION_INFO_CAP_SPARSE_MMAP
        areas = [(cap.data.areas[i].offset, cap.data.areas[i].size) for i in range(cap.data.nr_areas)]
        assert areas == [(0, 0x4000), (0x8000, 0x8000)]
        m = syscalls.mmap(d, 0x4000, info.offset)
        m[0:4] = b"\x01\x02\x03\x04"
        assert syscalls.pread(d, 4, info.offset) == b"\x01\x02\x03\x04"   # same memory
        wr(d, info.offset + 8, 0xCAFEF00D)
        assert m[8:12] == (0xCAFEF00D).to_bytes(4, "little")
        syscalls.munmap(m)
        with raises_errno(errno.EINVAL):                      # outside the mmap-able areas
            syscalls.mmap(d, 0x1000, info.offset + 0x4000)
        wr(d, CFG + 0x18, 0xFFFFFFFF)
        wr(d, CFG + 0x1C, 0xFFFFFFFF)
        assert (rd(d, CFG + 0x18), rd(d, CFG + 0x1C)) == (0xFFFF000C, 0xFFFFFFFF)   # 64-bit, prefetchable
        close(d, g, c)


# -- sPAPR TCE ------------------------------------------------------------------------------

def _spapr(tmp_path, **kw):
    devs = kw.pop("devices", None) or [EduModel(EDU, group=5)]
    return mock_kernel(tmp_path, devices=devs, iommu="spapr", **kw)


def tce_create(c: int, page_shift: int, size: int, levels: int = 1) -> int:
    p = argsz.new("struct vfio_iommu_spapr_tce_create", page_shift=page_shift,
                  window_size=size, levels=levels)
    ioctl(c, lib.VFIO_IOMMU_SPAPR_TCE_CREATE, p)
    return p.start_addr


def tce_remove(c: int, start: int) -> None:
    ioctl(c, lib.VFIO_IOMMU_SPAPR_TCE_REMOVE, argsz.new("struct vfio_iommu_spapr_tce_remove",
                                                        start_addr=start))


def register(c: int, vaddr: int, size: int, req: int = lib.VFIO_IOMMU_SPAPR_REGISTER_MEMORY) -> int:
    p = argsz.new("struct vfio_iommu_spapr_register_memory", vaddr=vaddr, size=size)
    return ioctl(c, req, p)


def test_spapr_extensions_and_info(tmp_path):
    with _spapr(tmp_path) as k:
        c = syscalls.open(k.devroot + "/vfio/vfio")
        ext = lambda e: ioctl(c, lib.VFIO_CHECK_EXTENSION, e)      # noqa: E731
        assert ext(lib.VFIO_SPAPR_TCE_IOMMU) == ext(lib.VFIO_SPAPR_TCE_v2_IOMMU) == ext(lib.VFIO_EEH) == 1
        assert ext(lib.VFIO_TYPE1v2_IOMMU) == 0
        close(c)
        for kind, flags in ((lib.VFIO_SPAPR_TCE_IOMMU, 0), (lib.VFIO_SPAPR_TCE_v2_IOMMU, 1)):
            c, g = open_container(k, iommu=kind)
            info = argsz.new("struct vfio_iommu_spapr_tce_info")
            ioctl(c, lib.VFIO_IOMMU_SPAPR_TCE_GET_INFO, info)
            assert (info.flags, info.dma32_window_start, info.dma32_window_size) == (flags, 0, 1 << 31)
            if flags:
                assert info.ddw.pgsizes == (1 << 12) | (1 << 16) | (1 << 21) | (1 << 30)
                assert (info.ddw.max_dynamic_windows_supported, info.ddw.levels) == (2, 5)
            else:
                assert info.ddw.pgsizes == 0
                with raises_errno(errno.ENOTTY):     # windows are v2's
                    tce_create(c, 12, 1 << 30)
            close(g, c)


def test_spapr_v2_windows(tmp_path):
    with _spapr(tmp_path) as k:
        c, g = open_container(k, iommu=lib.VFIO_SPAPR_TCE_v2_IOMMU)
        with raises_errno(errno.EINVAL):
            tce_create(c, 13, 1 << 30)               # 8K TCEs are not supported
        with raises_errno(errno.EINVAL):
            tce_create(c, 16, 3 << 30)               # not a power of two
        with raises_errno(errno.EINVAL):
            tce_create(c, 16, 1 << 30, levels=6)
        start = tce_create(c, 16, 1 << 32)           # creates the default window first
        assert start == 1 << 59
        with raises_errno(errno.ENOSPC):             # two windows at most
            tce_create(c, 12, 1 << 30)
        with raises_errno(errno.EINVAL):
            tce_remove(c, 1 << 40)                   # no window there
        tce_remove(c, start)
        tce_remove(c, 0)                             # the default window can go too
        assert tce_create(c, 21, 1 << 30) == 0       # and a new one takes its place
        close(g, c)


def test_spapr_v2_map_inside_windows_of_preregistered_memory(tmp_path):
    with _spapr(tmp_path) as k:
        c, g = open_container(k, iommu=lib.VFIO_SPAPR_TCE_v2_IOMMU)
        with Buf(0x10000) as buf:
            with raises_errno(errno.EPERM):          # nothing registered: not enabled
                dma_map(c, buf.addr, 0x100000, 0x1000)
            register(c, buf.addr, 0x8000)
            with raises_errno(errno.EBUSY):
                register(c, buf.addr, 0x8000)
            with raises_errno(errno.EINVAL):         # overlaps a registered region
                register(c, buf.addr + 0x4000, 0x8000)
            with raises_errno(errno.EINVAL):         # not preregistered
                dma_map(c, buf.addr + 0x8000, 0x100000, 0x1000)
            assert dma_map(c, buf.addr, 0x100000, 0x8000) == 0       # inside the 2 GiB window
            with raises_errno(errno.ENXIO):          # outside every window
                dma_map(c, buf.addr, 1 << 31, 0x1000)
            assert dma_map(c, buf.addr, 0x100800, 0x1000) == 1        # misaligned IOBA: returns 1
            with raises_errno(errno.EINVAL):         # a 64K-page window needs 64K pages
                ddw = tce_create(c, 16, 1 << 30)
                dma_map(c, buf.addr, ddw, 0x10000)
            # DMA through the TCEs
            d = device_fd(g)
            bus_master(d)
            buf.map[0:32] = bytes(range(32))
            edu_dma(d, 0x100000, 0x40000, 32, to_ram=False)
            edu_dma(d, 0x40000, 0x104000, 32, to_ram=True)
            assert bytes(buf.map[0x4000:0x4020]) == bytes(range(32))
            close(d)
            with raises_errno(errno.ENOENT):
                register(c, buf.addr, 0x4000, lib.VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY)
            assert dma_unmap(c, 0x100000, 0x8000) == 0x8000
            register(c, buf.addr, 0x8000, lib.VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY)
        close(g, c)
        assert k.process.locked_bytes == 0


def test_spapr_unregister_while_mapped_keeps_the_memory(tmp_path):
    k = MockKernel(tmp_path, devices=[EduModel(EDU, group=5)], iommu="spapr")
    with syscalls.use(k):
        c, g = open_container(k, iommu=lib.VFIO_SPAPR_TCE_v2_IOMMU)
        with Buf(0x4000) as buf:
            register(c, buf.addr, 0x4000)
            dma_map(c, buf.addr, 0x100000, 0x4000)
            # the kernel drops the container's reference and returns 0: the region stays
            # pinned, accounted and usable (mm_iommu_put's EBUSY is not passed on)
            assert register(c, buf.addr, 0x4000, lib.VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY) == 0
            assert dma_map(c, buf.addr, 0x200000, 0x1000) == 0
            assert any("preregistered" in leak for leak in k.leaks())
            close(g, c)
    k.shutdown()


def test_spapr_v1_enable_and_memlock(tmp_path):
    with _spapr(tmp_path, memlock=1 << 20) as k:
        c, g = open_container(k, iommu=lib.VFIO_SPAPR_TCE_IOMMU)
        with Buf(0x1000) as buf:
            with raises_errno(errno.EPERM):          # v1 maps need VFIO_IOMMU_ENABLE
                dma_map(c, buf.addr, 0x100000, 0x1000)
            with pytest.raises(errors.MemlockError):     # enabling accounts the whole 2 GiB window
                ioctl(c, lib.VFIO_IOMMU_ENABLE, dma=True)
        close(g, c)
    with _spapr(tmp_path / "big") as k:
        c, g = open_container(k, iommu=lib.VFIO_SPAPR_TCE_IOMMU)
        with Buf(0x2000) as buf:
            ioctl(c, lib.VFIO_IOMMU_ENABLE)
            with raises_errno(errno.EBUSY):
                ioctl(c, lib.VFIO_IOMMU_ENABLE)
            assert k.process.locked_bytes == 1 << 31
            assert dma_map(c, buf.addr, 0x100000, 0x2000) == 0
            assert dma_unmap(c, 0x100000, 0x2000) == 0x2000
            ioctl(c, lib.VFIO_IOMMU_DISABLE)
        close(g, c)
        assert k.process.locked_bytes == 0


def test_spapr_v2_register_memlock(tmp_path):
    with _spapr(tmp_path, memlock=64 << 10) as k:
        c, g = open_container(k, iommu=lib.VFIO_SPAPR_TCE_v2_IOMMU)
        with Buf(0x20000) as buf:
            with raises_errno(errno.ENOMEM):
                register(c, buf.addr, 0x20000)
            reg = argsz.new("struct vfio_iommu_spapr_register_memory", vaddr=buf.addr, size=0x20000)
            with pytest.raises(errors.MemlockError):
                ioctl(c, lib.VFIO_IOMMU_SPAPR_REGISTER_MEMORY, reg, dma=True)
            register(c, buf.addr, 0x10000)
            register(c, buf.addr, 0x10000, lib.VFIO_IOMMU_SPAPR_UNREGISTER_MEMORY)
        close(g, c)


def test_spapr_one_group_per_v1_container(tmp_path):
    devs = [EduModel(EDU, group=5), EduModel("0000:00:11.0", group=6)]
    with _spapr(tmp_path, devices=devs) as k:
        c, g = open_container(k, iommu=lib.VFIO_SPAPR_TCE_IOMMU)
        g2 = syscalls.open(k.devroot + "/vfio/6")
        with raises_errno(errno.EBUSY):
            ioctl(g2, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", c))
        close(g, c)
        c, g = open_container(k, iommu=lib.VFIO_SPAPR_TCE_v2_IOMMU)
        ioctl(g2, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", c))     # v2 shares its tables
        close(g2, g, c)


# -- iommufd --------------------------------------------------------------------------------

def ioas_alloc(i: int) -> int:
    p = argsz.new("struct iommu_ioas_alloc")
    ioctl(i, lib.IOMMU_IOAS_ALLOC, p)
    return p.out_ioas_id


def ioas_map(i: int, ioas: int, uva: int, length: int, iova: int = 0, fixed: bool = True,
             flags: int = lib.IOMMU_IOAS_MAP_READABLE | lib.IOMMU_IOAS_MAP_WRITEABLE, **kw: Any) -> int:
    p = argsz.new("struct iommu_ioas_map", ioas_id=ioas, user_va=uva, length=length, iova=iova,
                  flags=flags | (lib.IOMMU_IOAS_MAP_FIXED_IOVA if fixed else 0))
    ioctl(i, lib.IOMMU_IOAS_MAP, p, **kw)
    return p.iova


def ioas_unmap(i: int, ioas: int, iova: int, length: int) -> int:
    p = argsz.new("struct iommu_ioas_unmap", ioas_id=ioas, iova=iova, length=length)
    ioctl(i, lib.IOMMU_IOAS_UNMAP, p)
    return p.length


def iova_ranges(i: int, ioas: int) -> Tuple[List[Tuple[int, int]], int]:
    def make(n):
        rng = ffi.new("struct iommu_iova_range[]", max(n, 1))
        p = argsz.new("struct iommu_ioas_iova_ranges", ioas_id=ioas, num_iovas=n,
                      allowed_iovas=int(ffi.cast("uintptr_t", rng)))
        return p, rng
    p, rng = argsz.call_growing(i, lib.IOMMU_IOAS_IOVA_RANGES, make, lambda a: a[0].num_iovas,
                                start=1, ptr_of=lambda a: a[0])
    return [(rng[k].start, rng[k].last) for k in range(p.num_iovas)], p.out_iova_alignment


def cdev_bind(mock: MockKernel, i: int, index: int = 0) -> Tuple[int, int]:
    d = syscalls.open(f"{mock.devroot}/vfio/devices/vfio{index}")
    b = argsz.new("struct vfio_device_bind_iommufd", iommufd=i)
    ioctl(d, lib.VFIO_DEVICE_BIND_IOMMUFD, b)
    return d, b.out_devid


def attach(d: int, pt_id: int) -> int:
    p = argsz.new("struct vfio_device_attach_iommufd_pt", pt_id=pt_id)
    ioctl(d, lib.VFIO_DEVICE_ATTACH_IOMMUFD_PT, p)
    return p.pt_id


def test_iommufd_iova_ranges_grow_with_emsgsize(mock):
    i = syscalls.open(mock.devroot + "/iommu")
    ioas = ioas_alloc(i)
    assert ioas == 1
    assert iova_ranges(i, ioas) == ([(0, (1 << 64) - 1)], 1)        # no device: no limits
    rng = ffi.new("struct iommu_iova_range[]", 1)
    p = argsz.new("struct iommu_ioas_iova_ranges", ioas_id=ioas, num_iovas=0,
                  allowed_iovas=int(ffi.cast("uintptr_t", rng)))
    with raises_errno(errno.EMSGSIZE):
        ioctl(i, lib.IOMMU_IOAS_IOVA_RANGES, p)
    assert p.num_iovas == 1
    d, devid = cdev_bind(mock, i)
    assert devid == 2
    assert attach(d, ioas) == 3                      # the auto domain's HWPT id
    p.num_iovas = 1
    with raises_errno(errno.EMSGSIZE):
        ioctl(i, lib.IOMMU_IOAS_IOVA_RANGES, p)
    assert p.num_iovas == 2
    assert iova_ranges(i, ioas) == ([(0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)], 0x1000)
    close(d, i)


def test_iommufd_map_unmap_copy(mock):
    i = syscalls.open(mock.devroot + "/iommu")
    ioas, ioas2 = ioas_alloc(i), ioas_alloc(i)
    with Buf(0x10000) as buf:
        # kernel-chosen: the first free IOVA from 4K up, aligned like the buffer (at most its size)
        align = min(0x4000, buf.addr & -buf.addr)
        assert ioas_map(i, ioas, buf.addr, 0x3000, fixed=False) == max(align, 0x1000)
        assert ioas_map(i, ioas, buf.addr, 0x4000, iova=0x100000) == 0x100000
        with raises_errno(errno.EEXIST):
            ioas_map(i, ioas, buf.addr, 0x1000, iova=0x101000)
        with raises_errno(errno.EINVAL):             # neither readable nor writeable
            ioas_map(i, ioas, buf.addr, 0x1000, iova=0x200000, flags=0)
        with raises_errno(errno.EOPNOTSUPP):
            ioas_map(i, ioas, buf.addr, 0x1000, iova=0x200000, flags=1 << 7)
        with raises_errno(errno.ENOENT):
            ioas_map(i, 99, buf.addr, 0x1000)
        # copy a sub-range into another IOAS: it shares the source's pages
        cp = argsz.new("struct iommu_ioas_copy", dst_ioas_id=ioas2, src_ioas_id=ioas, length=0x1000,
                       src_iova=0x101000, dst_iova=0x500000,
                       flags=lib.IOMMU_IOAS_MAP_FIXED_IOVA | lib.IOMMU_IOAS_MAP_READABLE)
        ioctl(i, lib.IOMMU_IOAS_COPY, cp)
        assert cp.dst_iova == 0x500000
        cp.src_iova = 0x800000
        with raises_errno(errno.ENOENT):             # nothing mapped there
            ioctl(i, lib.IOMMU_IOAS_COPY, cp)
        with raises_errno(errno.ENOENT):             # would split an area
            ioas_unmap(i, ioas, 0x101000, 0x1000)
        assert ioas_unmap(i, ioas, 0x100000, 0x4000) == 0x4000
        with raises_errno(errno.ENOENT):
            ioas_unmap(i, ioas, 0x100000, 0x4000)
        assert ioas_unmap(i, ioas, 0, (1 << 64) - 1) == 0x3000
        assert ioas_unmap(i, ioas, 0, (1 << 64) - 1) == 0      # unmap-all of nothing succeeds
        assert ioas_unmap(i, ioas2, 0, (1 << 64) - 1) == 0x1000
        ioctl(i, lib.IOMMU_DESTROY, argsz.new("struct iommu_destroy", id=ioas2))
        with raises_errno(errno.ENOENT):
            ioctl(i, lib.IOMMU_DESTROY, argsz.new("struct iommu_destroy", id=ioas2))
        assert ioas_alloc(i) == ioas2                # ids are reused lowest first
    close(i)


def test_iommufd_cdev_bind_attach_and_dma(mock):
    i = syscalls.open(mock.devroot + "/iommu")
    ioas = ioas_alloc(i)
    d = syscalls.open(mock.devroot + "/vfio/devices/vfio0")
    with raises_errno(errno.EINVAL):                 # nothing works before BIND
        ioctl(d, lib.VFIO_DEVICE_GET_INFO, argsz.new("struct vfio_device_info"))
    null = syscalls.open(os.devnull)
    with raises_errno(errno.EBADFD):
        ioctl(d, lib.VFIO_DEVICE_BIND_IOMMUFD, argsz.new("struct vfio_device_bind_iommufd", iommufd=null))
    g = syscalls.open(mock.devroot + "/vfio/5")
    with raises_errno(errno.EBUSY):                  # the group is open: no cdev binding
        ioctl(d, lib.VFIO_DEVICE_BIND_IOMMUFD, argsz.new("struct vfio_device_bind_iommufd", iommufd=i))
    close(g, null)
    b = argsz.new("struct vfio_device_bind_iommufd", iommufd=i)
    ioctl(d, lib.VFIO_DEVICE_BIND_IOMMUFD, b)
    with pytest.raises(errors.BusyError):            # and the group cannot open now
        syscalls.open(mock.devroot + "/vfio/5")
    hw = argsz.new("struct iommu_hw_info", dev_id=b.out_devid)
    ioctl(i, lib.IOMMU_GET_HW_INFO, hw)
    assert (hw.out_data_type, hw.data_len) == (lib.IOMMU_HW_INFO_TYPE_NONE, 0)
    with raises_errno(errno.EBUSY):                  # the device object belongs to vfio
        ioctl(i, lib.IOMMU_DESTROY, argsz.new("struct iommu_destroy", id=b.out_devid))
    with Buf(0x4000) as buf:
        ioas_map(i, ioas, buf.addr, 0x4000, iova=0x100000)
        hwpt = attach(d, ioas)
        with raises_errno(errno.EBUSY):
            ioctl(i, lib.IOMMU_DESTROY, argsz.new("struct iommu_destroy", id=ioas))
        with raises_errno(errno.EINVAL):             # a 64-byte map is below the 4K alignment now
            ioas_map(i, ioas, buf.addr, 64, fixed=False)
        bus_master(d)
        buf.map[0:16] = b"iommufd-dma-test"
        edu_dma(d, 0x100000, 0x40000, 16, to_ram=False)
        edu_dma(d, 0x40000, 0x102000, 16, to_ram=True)
        assert bytes(buf.map[0x2000:0x2010]) == b"iommufd-dma-test"
        ioctl(d, lib.VFIO_DEVICE_DETACH_IOMMUFD_PT, argsz.new("struct vfio_device_detach_iommufd_pt"))
        with raises_errno(errno.ENOENT):             # the auto domain went with the device
            ioctl(i, lib.IOMMU_DESTROY, argsz.new("struct iommu_destroy", id=hwpt))
        edu_dma(d, 0x40000, 0x103000, 16, to_ram=True)   # detached: blocked
        assert bytes(buf.map[0x3000:0x3010]) == bytes(16)
        assert "blocked" in mock.process.faults[-1].reason
        ioas_unmap(i, ioas, 0, (1 << 64) - 1)
    close(d, i)


def test_iommufd_pins_and_accounts_at_attach(tmp_path):
    with mock_kernel(tmp_path, devices=[EduModel(EDU, group=5)], memlock=16 << 10) as k:
        i = syscalls.open(k.devroot + "/iommu")
        ioas = ioas_alloc(i)
        with Buf(0x8000) as buf:
            ioas_map(i, ioas, buf.addr, 0x8000, iova=0x100000)     # no domain: nothing pinned
            assert k.process.locked_bytes == 0
            d, _ = cdev_bind(k, i)
            with raises_errno(errno.ENOMEM):
                attach(d, ioas)
            ioas_unmap(i, ioas, 0x100000, 0x8000)
            attach(d, ioas)
            with pytest.raises(errors.MemlockError):
                ioas_map(i, ioas, buf.addr, 0x8000, iova=0x100000, dma=True)
            ioas_map(i, ioas, buf.addr, 0x4000, iova=0x100000)
            assert k.process.locked_bytes == 0x4000
            ioas_unmap(i, ioas, 0, (1 << 64) - 1)
            assert k.process.locked_bytes == 0
        close(d, i)


def test_iommufd_options(mock):
    i = syscalls.open(mock.devroot + "/iommu")
    opt = argsz.new("struct iommu_option", option_id=lib.IOMMU_OPTION_RLIMIT_MODE,
                    op=lib.IOMMU_OPTION_OP_SET, val64=1)
    ioctl(i, lib.IOMMU_OPTION, opt)                  # MM accounting, before any object
    opt.op = lib.IOMMU_OPTION_OP_GET
    opt.val64 = 7
    ioctl(i, lib.IOMMU_OPTION, opt)
    assert opt.val64 == 1
    ioas = ioas_alloc(i)
    opt.op = lib.IOMMU_OPTION_OP_SET
    with raises_errno(errno.EBUSY):
        ioctl(i, lib.IOMMU_OPTION, opt)
    huge = argsz.new("struct iommu_option", option_id=lib.IOMMU_OPTION_HUGE_PAGES,
                     op=lib.IOMMU_OPTION_OP_GET, object_id=ioas)
    ioctl(i, lib.IOMMU_OPTION, huge)
    assert huge.val64 == 1
    with raises_errno(errno.EOPNOTSUPP):
        ioctl(i, lib.IOMMU_OPTION, argsz.new("struct iommu_option", option_id=7))
    close(i)


def test_iommufd_vfio_compat_and_the_group_path(mock):
    """A group attached to an iommufd uses its compat IOAS, also answering VFIO ioctls."""
    i = syscalls.open(mock.devroot + "/iommu")
    assert ioctl(i, lib.VFIO_GET_API_VERSION) == 0
    with raises_errno(errno.ENODEV):                 # no compat IOAS yet
        ioctl(i, lib.VFIO_SET_IOMMU, lib.VFIO_TYPE1v2_IOMMU)
    g = syscalls.open(mock.devroot + "/vfio/5")
    ioctl(g, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", i))   # creates the compat IOAS
    v = argsz.new("struct iommu_vfio_ioas", op=lib.IOMMU_VFIO_IOAS_GET)
    ioctl(i, lib.IOMMU_VFIO_IOAS, v)
    assert ioctl(i, lib.VFIO_SET_IOMMU, lib.VFIO_TYPE1v2_IOMMU) == 0
    d = device_fd(g)                                 # bound and attached to the compat IOAS
    caps = type1_caps(i)
    assert caps["nbytes"] == 88 and caps["avail"] == 0xFFFFFFFF and "migration" not in caps
    assert caps["ranges"] == [(0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)]
    with Buf(0x4000) as buf:
        dma_map(i, buf.addr, 0x100000, 0x4000)
        assert ioas_unmap(i, v.ioas_id, 0x100000, 0x4000) == 0x4000     # the same IOAS
        dma_map(i, buf.addr, 0x100000, 0x4000)
        with raises_errno(errno.ENOENT):
            dma_unmap(i, 0x101000, 0x1000)
        assert dma_unmap(i, 0, 0, lib.VFIO_DMA_UNMAP_FLAG_ALL) == 0x4000
    close(d, g, i)


# -- no-IOMMU mode --------------------------------------------------------------------------

def test_noiommu_mode(tmp_path):
    with mock_kernel(tmp_path, devices=[EduModel(EDU, group=5)], iommu="none") as k:
        assert sorted(os.listdir(os.path.join(k.devroot, "vfio"))) == ["noiommu-5", "vfio"]
        c = syscalls.open(k.devroot + "/vfio/vfio")
        assert ioctl(c, lib.VFIO_CHECK_EXTENSION, lib.VFIO_NOIOMMU_IOMMU) == 1
        g = syscalls.open(k.devroot + "/vfio/noiommu-5")
        ioctl(g, lib.VFIO_GROUP_SET_CONTAINER, ffi.new("int *", c))
        assert ioctl(c, lib.VFIO_CHECK_EXTENSION, lib.VFIO_TYPE1v2_IOMMU) == 0
        with raises_errno(errno.ENODEV):
            ioctl(c, lib.VFIO_SET_IOMMU, lib.VFIO_TYPE1v2_IOMMU)
        ioctl(c, lib.VFIO_SET_IOMMU, lib.VFIO_NOIOMMU_IOMMU)
        with raises_errno(errno.ENOTTY):
            dma_map(c, 0x1000, 0, 0x1000)
        d = device_fd(g)
        bus_master(d)
        with Buf(0x2000) as buf:
            pm = syscalls.open("/proc/self/pagemap", os.O_RDONLY)     # the mock's physical memory
            entry = rd(pm, buf.addr // mmap.PAGESIZE * 8, 8)
            close(pm)
            assert entry >> 63 == 1
            phys = (entry & ((1 << 55) - 1)) * mmap.PAGESIZE
            assert phys < 1 << 28
            buf.map[0:8] = b"physical"
            edu_dma(d, phys, 0x40000, 8, to_ram=False)
            edu_dma(d, 0x40000, phys + 0x100, 8, to_ram=True)
            assert bytes(buf.map[0x100:0x108]) == b"physical"
        close(d, g, c)


# -- leaks ----------------------------------------------------------------------------------

def test_leaks_are_reported_and_cleaned_up(tmp_path):
    with pytest.raises(MockLeakError) as ei:
        with mock_kernel(tmp_path, devices=[EduModel(EDU, group=5)]) as k:
            c, g = open_container(k)
            buf = Buf(0x1000)
            dma_map(c, buf.addr, 0x100000, 0x1000)
            devroot = k.devroot
    text = str(ei.value)
    assert f"{devroot}/vfio/vfio" in text and f"{devroot}/vfio/5" in text and "not closed" in text
    assert "type1 mapping iova 0x100000 size 0x1000" in text
    assert "0x1000 bytes still accounted as locked memory" in text
    assert syscalls.open_fds().get(c) is None        # closed on the way out
    buf.close()


def test_closing_the_last_group_deprivileges_the_container(mock):
    c, g = open_container(mock)
    with Buf(0x1000) as buf:
        dma_map(c, buf.addr, 0x100000, 0x1000)
        close(g)                                     # the IOMMU goes with the last group
        assert mock.vfio.mappings() == [] and mock.process.locked_bytes == 0
        with raises_errno(errno.EINVAL):
            dma_map(c, buf.addr, 0x100000, 0x1000)
        assert ioctl(c, lib.VFIO_CHECK_EXTENSION, lib.VFIO_UPDATE_VADDR) == 0
    close(c)


def test_update_vaddr_and_dirty_bitmap(edu):
    mock, c, g, d = edu
    with Buf(0x4000) as old, Buf(0x4000) as new:
        dma_map(c, old.addr, 0x100000, 0x4000)
        assert dma_unmap(c, 0x100000, 0x4000, lib.VFIO_DMA_UNMAP_FLAG_VADDR) == 0x4000
        edu_dma(d, 0x40000, 0x100000, 16, to_ram=True)        # no vaddr now: refused
        assert "invalidated" in mock.process.faults[-1].reason
        with raises_errno(errno.EINVAL):                      # VADDR takes no permissions
            dma_map(c, new.addr, 0x100000, 0x4000, flags=RW | lib.VFIO_DMA_MAP_FLAG_VADDR)
        dma_map(c, new.addr, 0x100000, 0x4000, flags=lib.VFIO_DMA_MAP_FLAG_VADDR)
        mock.pci.model(EDU).dma_buf[:4] = b"abcd"
        edu_dma(d, 0x40000, 0x100000, 4, to_ram=True)
        assert new.map[0:4] == b"abcd"
        ctl = lambda flags: ioctl(c, lib.VFIO_IOMMU_DIRTY_PAGES,             # noqa: E731
                                  argsz.new("struct vfio_iommu_type1_dirty_bitmap", flags=flags))
        ctl(lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_START)
        bits = ffi.new("uint64_t[1]")
        buf = ffi.new("char[]", 8 + ffi.sizeof("struct vfio_iommu_type1_dirty_bitmap_get"))
        hdr = ffi.cast("struct vfio_iommu_type1_dirty_bitmap *", buf)
        hdr.argsz = ffi.sizeof(buf)
        hdr.flags = lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP
        get = ffi.cast("struct vfio_iommu_type1_dirty_bitmap_get *", buf + 8)
        get.iova, get.size = 0x100000, 0x4000
        get.bitmap.pgsize, get.bitmap.size = 0x1000, 8
        get.bitmap.data = ffi.cast("__u64 *", bits)
        ioctl(c, lib.VFIO_IOMMU_DIRTY_PAGES, hdr)
        assert bits[0] == 0b1111                     # every pinned page counts as dirty
        ctl(lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP)
        with raises_errno(errno.EINVAL):             # one operation at a time
            ctl(lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_START | lib.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP)
        dma_unmap(c, 0, 0, lib.VFIO_DMA_UNMAP_FLAG_ALL)


@pytest.mark.host
def test_open_device_in_a_non_viable_group_names_the_culprit(tmp_path):
    from pyvfio.vfio.open import open_device
    from pyvfio.mock import EduModel, MockKernel
    kernel = MockKernel(str(tmp_path), devices=[EduModel(bdf="0000:00:10.0", group=5,
                                                          viable=False)])
    before = syscalls.open_fds()
    with kernel.installed():
        with pytest.raises(errors.NotViableError) as ei:
            open_device("0000:00:10.0", iommu="container")
    text = str(ei.value)
    assert "IOMMU group 5 is not viable" in text and "bound to e1000e" in text
    assert "pyvfio bind" in ei.value.remedy
    assert syscalls.open_fds() == before          # container and group were closed again
