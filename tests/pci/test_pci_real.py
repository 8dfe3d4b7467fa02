"""pyvfio.pci against the real kernel: binding emulated devices in a lab guest.

These tests write to sysfs, so they run only inside a lab guest
(``PYVFIO_LAB=1``: root, QEMU's emulated devices, a throw-away system); on any
other machine they are skipped::

    python3 -m pyvfio lab run -- python3 -m pytest -q tests/test_pci_real.py

The edu device (1234:11e8) has no in-kernel driver, so it starts unbound; an
emulated e1000e (8086:10d3) or igb (8086:10c9, SR-IOV) is used when the guest
has one.
"""
from __future__ import annotations

import os
from typing import Iterator, List

import pytest

from pyvfio import errors, pci
from pyvfio.cli import main
from pyvfio.core import syscalls
from pyvfio.lab import in_guest

pytestmark = pytest.mark.device

EDU = (0x1234, 0x11E8)
E1000E = (0x8086, 0x10D3)
IGB = (0x8086, 0x10C9)
NOIOMMU_PARAM = "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode"


def _lab_devices(ids) -> List[pci.PciDevice]:
    if not in_guest():
        pytest.skip("needs the lab guest")
    found = pci.find(vendor=ids[0], device=ids[1])
    if not found:
        pytest.skip(f"no {ids[0]:04x}:{ids[1]:04x} device in this guest")
    return found


def _iommu() -> bool:
    """Whether the guest has an IOMMU (the lab says so; else: any device has a group)."""
    said = os.environ.get("PYVFIO_LAB_IOMMU")
    if said in ("on", "off"):
        return said == "on"
    return any(d.iommu_group is not None and d.driver != "vfio-pci" for d in pci.devices())


def _noiommu_mode() -> bool:
    try:
        with open(NOIOMMU_PARAM) as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


@pytest.fixture(scope="module", autouse=True)
def noiommu_mode() -> Iterator[None]:
    """In a guest without an IOMMU, turn vfio's no-IOMMU mode on for these tests."""
    if not in_guest() or _iommu() or not os.path.exists(NOIOMMU_PARAM):
        yield
        return
    before = "Y" if _noiommu_mode() else "N"
    with open(NOIOMMU_PARAM, "w") as f:
        f.write("Y")
    try:
        yield
    finally:
        with open(NOIOMMU_PARAM, "w") as f:
            f.write(before)


def _vfio_usable(dev: pci.PciDevice) -> None:
    """Skip where vfio-pci cannot take the device: no IOMMU and no no-IOMMU mode."""
    if dev.iommu_group is None and not _noiommu_mode():
        pytest.skip("no IOMMU group and vfio's no-IOMMU mode is off")


@pytest.fixture
def edu() -> Iterator[pci.PciDevice]:
    dev = _lab_devices(EDU)[0]
    yield dev
    # leave the edu as the guest had it (no driver, no override), whatever the test did
    if (dev.driver, dev.driver_override) != (None, None):
        dev.reprobe()


def test_ids_are_the_config_space_ids(edu):
    with open(os.path.join(edu.path, "config"), "rb") as f:
        config = f.read(64)
    assert (edu.vendor, edu.device) == EDU
    assert edu.vendor == int.from_bytes(config[0:2], "little")
    assert edu.device == int.from_bytes(config[2:4], "little")
    assert edu.revision == config[8]
    assert edu.class_code == int.from_bytes(config[9:12], "little") == 0x00FF00
    assert edu.header_type == 0
    assert edu.name in [d.name for d in pci.devices()]


def test_edu_starts_without_a_driver(edu):
    assert edu.driver is None
    assert edu.driver_override is None


def test_bind_to_vfio_pci_and_back(edu):
    _vfio_usable(edu)
    assert edu.bind("vfio-pci") is None
    try:
        assert edu.driver == "vfio-pci"
        assert os.readlink(os.path.join(edu.path, "driver")).endswith("/drivers/vfio-pci")
        assert edu.driver_override == "vfio-pci"
        assert os.path.islink(os.path.join("/sys/bus/pci/drivers/vfio-pci", edu.name))
        edu.check_bound("vfio-pci")
    finally:
        assert edu.restore() is None
    assert edu.driver is None
    assert edu.driver_override is None
    with pytest.raises(errors.NotBoundError):
        edu.check_bound()


def test_group_viability_follows_the_drivers(edu):
    if edu.iommu_group is None:
        pytest.skip("the guest has no IOMMU")
    members = edu.group_members()
    assert edu in members
    group_dir = f"/sys/kernel/iommu_groups/{edu.iommu_group}/devices"
    assert sorted(m.name for m in members) == sorted(os.listdir(group_dir))
    want = all(pci.driver_allows_user_dma(m.driver) for m in members)
    assert edu.group_viable() is want
    with edu.bound("vfio-pci"):
        want = all(pci.driver_allows_user_dma(m.driver) for m in members)
        assert edu.group_viable() is want
        if want:
            edu.check_viable()


def test_vfio_nodes_exist_once_bound(edu):
    _vfio_usable(edu)
    with edu.bound("vfio-pci"):
        group_node = edu.vfio_group_path()
        assert os.path.exists(group_node), group_node
        if edu.iommu_group is not None and not _iommu():
            assert os.path.basename(group_node) == f"noiommu-{edu.iommu_group}"
        cdev = edu.vfio_cdev_path()
        if cdev is not None:  # kernels with CONFIG_VFIO_DEVICE_CDEV
            assert os.path.exists(cdev), cdev
    assert edu.vfio_cdev_path() is None


def test_cli_bind_and_unbind(edu, capsys):
    _vfio_usable(edu)
    assert main(["bind", edu.name]) == 0
    assert capsys.readouterr().out == f"{edu.name}: (no driver) -> vfio-pci\n"
    assert edu.driver == "vfio-pci"
    assert main(["unbind", "--reprobe", edu.name]) == 0
    assert capsys.readouterr().out == f"{edu.name}: vfio-pci -> (no driver)\n"
    assert edu.driver is None and edu.driver_override is None


def test_ls_shows_the_edu(edu, capsys):
    assert main(["ls", "--vendor", "1234", "--device", "11e8"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert edu.name in [r.split()[0] for r in rows]


def _with_host_driver(dev: pci.PciDevice, module: str) -> None:
    """Load the host driver (the guest has no udev to do it); it probes the device."""
    if dev.driver is None:
        syscalls.modprobe(module)
    assert dev.driver == module


def test_host_driver_comes_back_after_bound():
    nic = _lab_devices(E1000E)[0]
    _with_host_driver(nic, "e1000e")
    _vfio_usable(nic)
    with nic.bound("vfio-pci"):
        assert nic.driver == "vfio-pci"
    assert nic.driver == "e1000e"
    assert nic.driver_override is None


def test_sriov_vfs_appear_and_go():
    pf = _lab_devices(IGB)[0]
    _with_host_driver(pf, "igb")
    if pf.sriov_totalvfs == 0:
        pytest.skip("the igb PF is not SR-IOV capable here")
    try:
        pf.sriov_numvfs = 2
        vfs = pf.virtfns()
        assert len(vfs) == 2 == pf.sriov_numvfs
        for vf in vfs:
            assert vf.is_vf and vf.physfn == pf
            assert vf.vendor == pf.vendor
        pf.sriov_numvfs = 1  # the kernel wants 0 in between: pyvfio writes it
        assert [v.name for v in pf.virtfns()] == [vfs[0].name]
    finally:
        pf.sriov_numvfs = 0
    assert pf.virtfns() == []
