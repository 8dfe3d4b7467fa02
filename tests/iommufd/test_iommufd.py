"""iommufd: I/O address spaces, copies between them, options, hardware info."""
from __future__ import annotations

import os

import pytest

from pyvfio import errors

from pyvfio.core import syscalls
from pyvfio.core.memory import DmaBuffer
from pyvfio.drivers.edu import Edu
from pyvfio.iommufd import IommuFd
from pyvfio.core.uapi import lib

pytestmark = [pytest.mark.device,
              pytest.mark.parametrize("vfio_edu", ["iommufd"], indirect=True)]


@pytest.fixture
def edu_iommufd(vfio_edu):
    if vfio_edu.target.kind == "real" and not os.path.exists("/dev/iommu"):
        pytest.skip(f"kernel {vfio_edu.target.kernel} has no IOMMUFD")
    before = syscalls.open_fds()
    dev = vfio_edu.open()
    yield dev
    dev.close()
    assert syscalls.open_fds() == before


def test_ioas_ranges_and_device_binding(edu_iommufd):
    dev = edu_iommufd
    ranges = dev.dma.iova_ranges()
    assert ranges and all(s <= e for s, e in ranges)
    assert dev.dev_id is not None and dev.dev_id > 0
    assert "IOAS" in dev.dma.name


def test_ioas_copy_makes_the_same_pages_visible_elsewhere(edu_iommufd, vfio_edu):
    dev = edu_iommufd
    ictx = dev._owned[0]
    assert isinstance(ictx, IommuFd)
    other = ictx.ioas()
    with DmaBuffer(8192) as buf:
        m = other.map(buf)                          # mapped in an IOAS the device is NOT in
        copy_iova = dev.dma.copy(other, m.iova, m.size)
        assert [x.iova for x in dev.dma.mappings] == [copy_iova]
        # the device reaches the pages through the copy
        buf.write(0, b"copied pages " * 8)
        edu = Edu(dev)
        edu.to_device(copy_iova, 104)
        edu.from_device(copy_iova + 4096, 104)
        assert buf.read(4096, 104) == b"copied pages " * 8
        dev.dma.unmap(copy_iova)
        other.unmap(m)
    other.close()
    assert other.closed and other not in ictx.ioas_list


def test_ioas_option_and_hw_info(edu_iommufd, vfio_edu):
    ictx = edu_iommufd._owned[0]
    mode = ictx.option(lib.IOMMU_OPTION_RLIMIT_MODE)
    assert mode in (0, 1)
    if vfio_edu.target.kind == "real":
        info = ictx.hw_info(edu_iommufd.dev_id)
        assert info["type"] == lib.IOMMU_HW_INFO_TYPE_INTEL_VTD    # QEMU's intel-iommu
        assert len(info["data"]) > 0


def test_destroyed_ioas_refuses_use(edu_iommufd):
    ictx = edu_iommufd._owned[0]
    ioas = ictx.ioas()
    ioas.close()
    with pytest.raises(errors.ClosedError):
        ioas.map(vaddr=0x1000, size=0x1000)
