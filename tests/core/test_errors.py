"""Failures become pyvfio exceptions that name the call, the node, the errno and a remedy."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from pyvfio import errors

from pyvfio.core import syscalls
from pyvfio.core.uapi import lib

pytestmark = pytest.mark.host


def test_ioctl_on_dev_null_is_not_supported():
    fd = syscalls.open("/dev/null")
    try:
        with pytest.raises(errors.NotSupportedError) as ei:
            syscalls.ioctl(fd, lib.VFIO_GET_API_VERSION)
    finally:
        syscalls.close(fd)
    e = ei.value
    assert isinstance(e, OSError) and e.errno == errno.ENOTTY
    assert e.op == "VFIO_GET_API_VERSION" and e.path == "/dev/null"
    text = str(e)
    assert "VFIO_GET_API_VERSION: /dev/null" in text and "[ENOTTY]" in text
    assert "not supported by this device or kernel" in text


def test_missing_node_names_the_module_remedy(tmp_path):
    path = str(tmp_path / "vfio" / "42")
    with pytest.raises(errors.NotFoundError) as ei:
        syscalls.open(path, device="0000:00:10.0")
    e = ei.value
    assert e.errno == errno.ENOENT and isinstance(e, FileNotFoundError)
    assert e.path == path and e.device == "0000:00:10.0"
    assert "modprobe" in e.remedy and "pyvfio bind" in e.remedy


def test_enodev_maps_like_enoent():
    e = errors.from_errno(errno.ENODEV, op="open", path="/dev/vfio/7")
    assert isinstance(e, errors.NotFoundError) and "modprobe" in str(e)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_permission_denied_names_ownership_remedy(tmp_path):
    node = tmp_path / "node"
    node.write_bytes(b"")
    os.chmod(node, 0o600)
    os.chmod(tmp_path, 0o755)
    code = f"""
import os, sys
sys.path[:0] = {sys.path!r}
from pyvfio import errors
from pyvfio.core import syscalls
syscalls.backend()
os.setgid(65534); os.setuid(65534)     # after the imports: nobody cannot read them
try:
    syscalls.open({str(node)!r})
except errors.PermissionDeniedError as e:
    print(e.errno, e.path, '|', e.remedy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    num, path, remedy = out.stdout.split(None, 2)
    assert int(num) == errno.EACCES and path == str(node)
    assert "root" in remedy and "chown" in remedy


def test_dma_enomem_is_the_memlock_limit():
    e = errors.from_errno(errno.ENOMEM, op="VFIO_IOMMU_MAP_DMA", path="/dev/vfio/vfio", dma=True)
    assert isinstance(e, errors.MemlockError) and isinstance(e, MemoryError)
    assert "ulimit -l" in e.remedy and "LimitMEMLOCK" in e.remedy
    plain = errors.from_errno(errno.ENOMEM, op="mmap")
    assert type(plain) is errors.PyvfioError


class _BusyKernel(syscalls.Kernel):
    """The real kernel, except that ioctls answer EBUSY (as a second group open would)."""

    def ioctl(self, fd, request, arg):
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))


def test_ebusy_names_the_holder_remedy():
    fd = syscalls.open("/dev/null")
    try:
        with syscalls.use(_BusyKernel()):
            with pytest.raises(errors.BusyError) as ei:
                syscalls.ioctl(fd, lib.VFIO_GROUP_SET_CONTAINER, device="0000:00:10.0")
    finally:
        syscalls.close(fd)
    assert ei.value.errno == errno.EBUSY and "already in use" not in ei.value.remedy
    assert "close it there first" in ei.value.remedy and ei.value.device == "0000:00:10.0"


def test_close_twice_is_refused_and_fd_accounting():
    before = syscalls.open_fds()
    fd = syscalls.open("/dev/null")
    assert syscalls.open_fds()[fd] == "/dev/null"
    syscalls.close(fd)
    assert syscalls.open_fds() == before
    with pytest.raises(errors.ClosedError):
        syscalls.close(fd)


def test_errors_pickle_with_their_details():
    import pickle
    e = errors.from_errno(errno.EBUSY, op="VFIO_GROUP_SET_CONTAINER", path="/dev/vfio/3",
                          device="0000:00:10.0")
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is errors.BusyError and (e2.op, e2.path, e2.device, e2.errno) == (
        e.op, e.path, e.device, e.errno)


def test_ambiguous_ioctl_numbers_are_named_by_node():
    # VFIO_IOMMU_UNMAP_DMA and VFIO_DEVICE_QUERY_GFX_PLANE share a number
    assert lib.VFIO_IOMMU_UNMAP_DMA == lib.VFIO_DEVICE_QUERY_GFX_PLANE
    assert syscalls.ioctl_name(lib.VFIO_IOMMU_UNMAP_DMA, "/dev/vfio/vfio") == "VFIO_IOMMU_UNMAP_DMA"
    assert syscalls.ioctl_name(lib.VFIO_GROUP_GET_STATUS, "/dev/vfio/12") == "VFIO_GROUP_GET_STATUS"
    assert syscalls.ioctl_name(lib.VFIO_DEVICE_RESET, "/dev/vfio/devices/vfio0") == "VFIO_DEVICE_RESET"


@pytest.mark.host
def test_eexist_is_exists_error_with_a_remedy():
    e = errors.from_errno(errno.EEXIST, op="VFIO_IOMMU_MAP_DMA", device="0000:00:10.0")
    assert type(e) is errors.ExistsError and isinstance(e, FileExistsError)
    assert e.errno == errno.EEXIST and e.device == "0000:00:10.0"
    assert "unmap the mapping that overlaps" in e.remedy and "iova=None" in e.remedy
    assert str(e).startswith("VFIO_IOMMU_MAP_DMA: 0000:00:10.0: File exists [EEXIST]")
