"""The KVM-VFIO device: KVM_DEV_VFIO_FILE_ADD/DEL with an edu device's group or cdev.

In a lab guest with nested KVM (an SVM guest CPU) this is the real kernel;
without /dev/kvm in the guest it skips.  On the host it runs against the mock
kernel (the host has no VFIO devices to give a VM).
"""
from __future__ import annotations

import errno

import pytest

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.eventfd import EventFd
from pyvfio.kvm import Kvm, VfioDevice
from pyvfio.core.uapi import lib

from kvm_support import _kvm_usable, label

pytestmark = pytest.mark.device


@pytest.fixture
def kvm_for(request, vfio_edu):
    """A Kvm of the same kernel as ``vfio_edu``: real in a guest, the mock's on the host."""
    if vfio_edu.target.kind == "real":
        why = _kvm_usable()
        if why:
            pytest.skip(why)
        with Kvm() as kvm:
            yield kvm
        return
    vfio_edu.mock.kvm.enable()             # vfio_edu installed the mock as syscalls and host
    label(request, "mock")
    with Kvm() as kvm:
        yield kvm


def test_file_add_del_group_or_cdev(vfio_edu, kvm_for):
    fds = dict(syscalls.open_fds())
    with vfio_edu.open() as dev, kvm_for.create_vm() as vm:
        kvfio = vm.create_vfio_device()
        assert isinstance(kvfio, VfioDevice)
        assert kvfio.has_attr(lib.KVM_DEV_VFIO_FILE, lib.KVM_DEV_VFIO_FILE_ADD)
        assert kvfio.has_attr(lib.KVM_DEV_VFIO_FILE, lib.KVM_DEV_VFIO_FILE_DEL)
        assert not kvfio.has_attr(lib.KVM_DEV_VFIO_FILE, 77)
        # the group for the container and no-IOMMU paths, the device cdev for iommufd
        file = dev if vfio_edu.path == "iommufd" else dev.group
        kvfio.file_add(file)
        assert list(kvfio.files.values()) == [file]
        with pytest.raises(errors.ExistsError, match="already added") as e:
            kvfio.file_add(file)
        assert e.value.errno == errno.EEXIST
        kvfio.file_del(file)
        assert kvfio.files == {}
        with pytest.raises(errors.NotFoundError, match="was not added") as e:
            kvfio.file_del(file)
        assert e.value.errno == errno.ENOENT
        kvfio.file_add(file)               # added again, left for the VM's close to drop
    assert syscalls.open_fds() == fds


def test_non_vfio_fd_refused_clearly(vfio_edu, kvm_for):
    fds = dict(syscalls.open_fds())
    with kvm_for.create_vm() as vm, EventFd("not vfio") as efd:
        kvfio = vm.create_vfio_device()
        with pytest.raises(errors.InvalidArgumentError, match="not a VFIO group or VFIO device") as e:
            kvfio.file_add(efd)
        assert e.value.errno == errno.EINVAL
        assert e.value.op == "KVM_DEV_VFIO_FILE_ADD" and "cdev" in e.value.remedy
        assert kvfio.files == {}
        efd.close()
        with pytest.raises(errors.ClosedError):
            kvfio.file_add(efd)
    assert syscalls.open_fds() == fds
