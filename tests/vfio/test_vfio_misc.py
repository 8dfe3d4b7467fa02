"""VFIO beyond edu's registers: hot reset, device features, mdev, the info/reset CLI.

These run on the real kernel in the lab guests (the mock has no igb, mtty or
runtime PM); on the host they are skipped with the reason.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pyvfio import errors, pci
from pyvfio.vfio.open import open_device

pytestmark = pytest.mark.device


def _need_guest(lab_target):
    if lab_target.kind != "real":
        pytest.skip("needs the real kernel in a lab guest (no such model in the mock)")


def _one(lab_target, vendor, device, what):
    _need_guest(lab_target)
    if not lab_target.iommu:
        pytest.skip("needs the emulated IOMMU")
    found = pci.find(vendor=vendor, device=device)
    if not found:
        pytest.skip(f"the guest has no emulated {what}")
    return found[0]


def test_hot_reset_of_igb_behind_a_root_port(lab_target):
    igb = _one(lab_target, 0x8086, 0x10C9, "igb")
    with igb.bound("vfio-pci"), open_device(igb.name, iommu="container") as dev:
        affected = dev.hot_reset_info()
        # igb sits alone behind its root port: the bus reset affects exactly its functions
        assert [d.address for d in affected] == [igb.name]
        assert affected[0].group_id == igb.iommu_group
        dev.config.bus_master = True
        try:
            dev.hot_reset()
        except errors.NotSupportedError as exc:
            # QEMU's emulated root port does not report the link up again after the
            # secondary bus reset ("Data Link Layer Link Active not set"), so the
            # kernel answers ENOTTY; pyvfio reports it with the ioctl and device.
            assert exc.op == "VFIO_DEVICE_PCI_HOT_RESET" and exc.device == igb.name
            pytest.xfail("the emulated root port's link does not retrain after a bus reset")
        # the reset cleared the command register's bus-master bit
        assert not dev.config.bus_master
        assert dev.config.vendor_id == 0x8086


def test_hot_reset_refused_without_every_group(lab_target):
    edu = _one(lab_target, 0x1234, 0x11E8, "edu")
    with edu.bound("vfio-pci"), open_device(edu.name, iommu="container") as dev:
        try:
            affected = dev.hot_reset_info()
        except errors.PyvfioError as exc:
            # a device on the root bus has no bus to reset: the kernel says so
            assert exc.op == "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO"
            assert exc.device == edu.name
            return
        others = [d for d in affected if d.group_id != edu.iommu_group]
        if not others:
            pytest.skip("the reset affects only this device's group here")
        with pytest.raises(errors.PermissionDeniedError) as ei:
            dev.hot_reset()
        assert others[0].address in str(ei.value)


def test_device_features_on_edu(lab_target):
    edu = _one(lab_target, 0x1234, 0x11E8, "edu")
    with edu.bound("vfio-pci"), open_device(edu.name) as dev:
        feats = dev.features
        assert feats.probe(1, get=True) is False            # edu has no migration driver
        with pytest.raises(errors.NotSupportedError) as ei:
            feats.migration_state()
        assert "not supported by this device or kernel" in str(ei.value)
        assert ei.value.device == edu.name
        with pytest.raises(errors.NotSupportedError):
            feats.dma_logging_stop()
        # vfio-pci implements runtime-PM low-power entry for every PCI device
        assert feats.probe(3, set=True) is True
        feats.low_power_entry()
        feats.low_power_exit()
        assert dev.bar(0).read32(0) == 0x010000ED           # usable again after exit


def test_mtty_mdev_create_open_remove(lab_target):
    _need_guest(lab_target)
    from pyvfio.vfio import mdev
    parents = [p for p in mdev.parents() if p.name == "mtty"]
    if not parents:
        pytest.skip(f"kernel {lab_target.kernel} has no mtty sample driver (full kernel has it)")
    mtty = parents[0]
    types = {t.id: t for t in mtty.types()}
    assert any(t.device_api == "vfio-pci" for t in types.values())
    type_id = sorted(types)[0]
    before = types[type_id].available_instances
    with mtty.create(type_id) as m:
        assert m.exists and m.parent.name == "mtty"
        assert mtty.type(type_id).available_instances == before - 1
        iommu = "container" if lab_target.iommu else "container"
        if m.vfio_cdev_path() and os.path.exists("/dev/iommu"):
            iommu = "iommufd"
        with open_device(m.uuid, iommu=iommu, allow_noiommu=not lab_target.iommu) as dev:
            assert dev.info.is_pci
            assert dev.config.vendor_id == 0x4348              # mtty emulates a WCH serial card
            assert dev.region(0).size == 8                      # one 8-byte UART I/O BAR
        uuid = m.uuid
    assert not os.path.exists(f"/sys/bus/mdev/devices/{uuid}")
    assert mtty.type(type_id).available_instances == before


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pyvfio", *args], capture_output=True, text=True)


def test_cli_info_and_reset(lab_target):
    edu = _one(lab_target, 0x1234, 0x11E8, "edu")
    with edu.bound("vfio-pci"):
        out = _cli("info", edu.name, "--json")
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        bar0 = next(r for r in report["regions"] if r["name"] == "BAR0")
        assert bar0["size"] == 1 << 20 and "mmap" in bar0["flags"]
        msi = next(q for q in report["irqs"] if q["name"] == "MSI")
        assert msi["count"] == 1 and msi["eventfd"]
        assert any("MSI" in line for line in report["pci"])
        text = _cli("info", edu.name)
        assert "BAR0" in text.stdout and "interrupts:" in text.stdout
        r = _cli("reset", edu.name)
        if "no reset method" in r.stderr:
            assert r.returncode == 1 and "remedy" in r.stderr
        else:
            assert r.returncode == 0 and f"{edu.name}: reset" in r.stdout
    # not bound: a clear error with the remedy, exit status 1
    out = _cli("info", edu.name)
    assert out.returncode == 1 and f"pyvfio bind {edu.name}" in out.stderr
