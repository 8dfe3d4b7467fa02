"""pyvfio.vfio.mdev against a fake sysfs.

Two parents: the ``mtty`` sample (a virtual device, types ``mtty-1`` with two
instances left and ``mtty-2`` with one) and a GVT-g-like PCI parent at
0000:00:02.0 (type ``i915-GVTg_V5_4``).  The stand-in kernel answers writes to
``create`` and ``remove`` as the mdev core does.
"""
from __future__ import annotations

import errno
import os
import uuid
from typing import Iterator

import pytest

from pyvfio.mock.pci.sysfs import SysfsTree
from pyvfio import errors
from pyvfio.core.sysfs import Host, use_host
from pyvfio.vfio import mdev

pytestmark = pytest.mark.host

U1 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
U2 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1002"
MTTY_TYPES = {
    "mtty-1": {"name": "Single port serial", "description": "1 port", "available": 2},
    "mtty-2": {"name": "Dual port serial", "description": "2 ports", "available": 1},
}


@pytest.fixture
def fs(tmp_path) -> Iterator[SysfsTree]:
    fake = SysfsTree(tmp_path)
    fake.add_mdev_parent("mtty", MTTY_TYPES)
    fake.add_device("0000:00:02.0", 0x8086, 0x3E92, class_code=0x030000, driver="i915",
                    group=0)
    fake.add_mdev_parent("0000:00:02.0", {"i915-GVTg_V5_4": {"available": 2}},
                         driver="vfio_mdev")
    with fake.installed():
        yield fake


@pytest.fixture
def mtty(fs) -> mdev.MdevParent:
    return mdev.MdevParent("mtty")


class TestParentsAndTypes:
    def test_parents_are_the_mdev_bus_entries(self, fs):
        assert [p.name for p in mdev.parents()] == ["0000:00:02.0", "mtty"]

    def test_types_and_their_attributes(self, mtty):
        types = mtty.types()
        assert [t.id for t in types] == ["mtty-1", "mtty-2"]
        one, two = types
        assert (one.name, one.description, one.device_api, one.available_instances) == (
            "Single port serial", "1 port", "vfio-pci", 2)
        assert (two.name, two.available_instances) == ("Dual port serial", 1)
        assert one.parent == mtty

    def test_optional_attributes_read_as_none(self, fs):
        gvt = mdev.MdevParent("0000:00:02.0")
        (only,) = gvt.types()
        assert (only.id, only.name, only.description) == ("i915-GVTg_V5_4", None, None)

    def test_unknown_parent(self, fs):
        with pytest.raises(errors.NotFoundError) as info:
            mdev.MdevParent("mbochs")
        assert info.value.message == "no mdev parent mbochs (parents: 0000:00:02.0, mtty)"

    def test_unknown_type_lists_the_offered_ones(self, mtty):
        with pytest.raises(errors.NotFoundError) as info:
            mtty.type("mtty-4")
        assert info.value.remedy == "choose one of its types: mtty-1, mtty-2"


class TestCreateRemove:
    def test_create_writes_the_uuid_and_returns_the_mdev(self, fs, mtty):
        m = mtty.create("mtty-2", U1)
        assert fs.writes == [
            ("class/mdev_bus/mtty/mdev_supported_types/mtty-2/create", U1.encode())]
        assert m.uuid == U1
        assert m.path == os.path.join(fs.sysfs, "bus/mdev/devices", U1)
        assert m.parent == mtty
        assert m.type.id == "mtty-2"
        assert m.driver == "mtty"
        assert m.iommu_group == 1  # a group of its own; group 0 is the GPU's
        assert mtty.type("mtty-2").available_instances == 0
        assert mtty.type("mtty-2").devices() == [m]
        assert mdev.devices() == [m]
        assert mdev.get(U1) == m

    def test_uuid_is_canonicalised(self, fs, mtty):
        m = mtty.create("mtty-1", U1.upper())
        assert m.uuid == U1
        assert fs.writes[0][1] == U1.encode()

    def test_random_uuid_when_none_is_given(self, mtty):
        m = mtty.create("mtty-1")
        assert uuid.UUID(m.uuid).version == 4
        assert m.exists

    def test_pci_parent(self, fs):
        gvt = mdev.MdevParent("0000:00:02.0")
        m = gvt.create("i915-GVTg_V5_4", U2)
        assert m.parent.name == "0000:00:02.0"
        assert m.driver == "vfio_mdev"
        assert m.iommu_group == 1  # group 0 is the GPU's
        assert gvt.devices() == [m]

    def test_vfio_nodes(self, fs, mtty):
        m = mtty.create("mtty-1", U1)
        assert m.vfio_group_path() == os.path.join(fs.devroot, "vfio", str(m.iommu_group))
        assert m.vfio_cdev_path() is None
        fs.add_vfio_cdev(os.path.realpath(m.path), 2)
        assert m.vfio_cdev_path() == os.path.join(fs.devroot, "vfio", "devices", "vfio2")

    def test_remove_writes_1_and_frees_the_instance(self, fs, mtty):
        m = mtty.create("mtty-2", U1)
        fs.writes.clear()
        m.remove()
        assert fs.writes == [(f"bus/mdev/devices/{U1}/remove", b"1")]
        assert not m.exists
        assert mtty.type("mtty-2").available_instances == 1
        assert mtty.devices() == []
        with pytest.raises(errors.NotFoundError, match=f"no mdev {U1}"):
            mdev.get(U1)

    def test_context_manager_removes_on_exit(self, fs, mtty):
        with mtty.create("mtty-1", U1) as m:
            assert m.exists
        assert not m.exists
        assert fs.writes[-1] == (f"bus/mdev/devices/{U1}/remove", b"1")

    def test_context_manager_removes_on_exception(self, mtty):
        with pytest.raises(RuntimeError):
            with mtty.create("mtty-1", U1) as m:
                raise RuntimeError("test failure")
        assert not m.exists
        assert mtty.type("mtty-1").available_instances == 2

    def test_context_manager_tolerates_an_early_remove(self, fs, mtty):
        with mtty.create("mtty-1", U1) as m:
            m.remove()
        assert fs.writes_to(f"bus/mdev/devices/{U1}/remove") == [b"1"]


class TestErrors:
    def test_exhausted_type_is_busy_and_says_what_to_do(self, fs, mtty):
        mtty.create("mtty-2", U1)
        fs.writes.clear()
        with pytest.raises(errors.BusyError) as info:
            mtty.create("mtty-2", U2)
        exc = info.value
        assert exc.errno == errno.EUSERS
        assert exc.message == f"no instances of mdev type mtty-2 left on mtty (its mdevs: {U1})"
        assert "remove an mdev of this type" in exc.remedy
        assert exc.remedy.endswith("mtty-1 (2 left)")
        assert fs.writes == []

    def test_kernel_eusers_is_busy_too(self, fs, mtty):
        fs.fail_next_write("class/mdev_bus/mtty/mdev_supported_types/mtty-1/create",
                           errno.EUSERS)
        with pytest.raises(errors.BusyError, match="no instances of mdev type mtty-1 left"):
            mtty.create("mtty-1", U1)

    def test_uuid_in_use(self, mtty):
        mtty.create("mtty-1", U1)
        with pytest.raises(errors.BusyError) as info:
            mtty.create("mtty-1", U1)
        assert info.value.message == f"an mdev {U1} exists already"
        assert info.value.errno == errno.EEXIST

    def test_bad_uuid(self, fs, mtty):
        with pytest.raises(errors.InvalidArgumentError, match="not a UUID: 'vm-1'"):
            mtty.create("mtty-1", "vm-1")
        assert fs.writes == []

    def test_non_root(self, monkeypatch, fs, mtty):
        fs.unprivileged = True
        monkeypatch.setattr(os, "geteuid", lambda: 1000)     # a user, not root
        with pytest.raises(errors.PermissionDeniedError) as info:
            mtty.create("mtty-1", U1)
        assert info.value.path.endswith("mdev_supported_types/mtty-1/create")
        assert "run as root" in info.value.remedy

    def test_no_mdev_bus_means_no_parents(self, tmp_path):
        with use_host(Host(sysfs=str(tmp_path))):
            assert mdev.parents() == []
            assert mdev.devices() == []
