"""pyvfio.pci and the ``ls``/``bind``/``unbind`` commands, against a fake sysfs.

The fake machine (see :func:`machine`):

====================  ===========  ======  =============  =====
BDF                   IDs          class   driver         group
====================  ===========  ======  =============  =====
0000:00:00.0          8086:0d57    060000  -              0
0000:00:1c.0 (port)   8086:a110    060400  pcieport       1
0000:01:00.0 (NIC)    8086:10d3    020000  e1000e         1
0000:00:1f.0          8086:a148    060100  lpc_ich        2
0000:00:1f.3          8086:a170    040300  snd_hda_intel  2
0000:00:1f.4          8086:a123    0c0500  i801_smbus     2
0000:00:10.0 (edu)    1234:11e8    00ff00  -              3
0000:00:11.0          1af4:1041    020000  virtio-pci     -
====================  ===========  ======  =============  =====

vfio-pci and pci-stub are registered without IDs; e1000e and snd_hda_intel
match their devices by ID, so the stand-in kernel can give them back.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from typing import Iterator
from pathlib import Path

import pytest

from pyvfio.mock.pci.sysfs import SysfsTree
from pyvfio import errors, pci
from pyvfio.cli import main
from pyvfio.core.sysfs import Host, use_host, write_attr
from pyvfio.pci import PciAddress, PciDevice

pytestmark = pytest.mark.host

REPO = Path(__file__).resolve().parents[2]
NIC, PORT, AUDIO, SMBUS, LPC, EDU, HOSTB, VIRTIO = (
    "0000:01:00.0", "0000:00:1c.0", "0000:00:1f.3", "0000:00:1f.4", "0000:00:1f.0",
    "0000:00:10.0", "0000:00:00.0", "0000:00:11.0")
NIC_BAR0 = (0xF7C00000, 0xF7C1FFFF, 0x40200)
NIC_BAR2 = (0xE000, 0xE01F, 0x40101)
BIG_BAR = (0x4000000000, 0x40FFFFFFFF, 0x14220C)


@pytest.fixture
def fs(tmp_path) -> Iterator[SysfsTree]:
    """The fake machine, with the stand-in kernel answering pyvfio's writes."""
    with machine(SysfsTree(tmp_path)).installed() as fake:
        yield fake


def machine(fs: SysfsTree) -> SysfsTree:
    fs.add_driver("vfio-pci")
    fs.add_driver("pci-stub")
    fs.add_driver("e1000e", [(0x8086, 0x10D3)])
    fs.add_driver("snd_hda_intel", [(0x8086, 0xA170)])
    fs.add_device(HOSTB, 0x8086, 0x0D57, class_code=0x060000, group=0)
    fs.add_device(PORT, 0x8086, 0xA110, class_code=0x060400, header_type=1,
                  driver="pcieport", group=1)
    fs.add_device(NIC, 0x8086, 0x10D3, class_code=0x020000, subsystem_vendor=0x8086,
                  subsystem_device=0xA01F, revision=0x03, driver="e1000e", group=1,
                  numa_node=0, resources=[NIC_BAR0, (0, 0, 0), NIC_BAR2, BIG_BAR])
    fs.add_device(LPC, 0x8086, 0xA148, class_code=0x060100, driver="lpc_ich", group=2)
    fs.add_device(AUDIO, 0x8086, 0xA170, class_code=0x040300, driver="snd_hda_intel",
                  group=2)
    fs.add_device(SMBUS, 0x8086, 0xA123, class_code=0x0C0500, driver="i801_smbus", group=2)
    fs.add_device(EDU, 0x1234, 0x11E8, class_code=0x00FF00, revision=0x10, group=3)
    fs.add_device(VIRTIO, 0x1AF4, 0x1041, class_code=0x020000, driver="virtio-pci")
    return fs


def run_cli(capsys, *argv: str):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# --------------------------------------------------------------------------- addresses
class TestPciAddress:
    def test_full_form_is_parsed_into_its_fields(self):
        addr = PciAddress.parse("0000:3b:1f.7")
        assert (addr.domain, addr.bus, addr.slot, addr.function) == (0, 0x3B, 0x1F, 7)
        assert str(addr) == "0000:3b:1f.7"

    def test_short_form_gets_domain_0000(self):
        assert str(PciAddress.parse("00:10.0")) == "0000:00:10.0"

    def test_upper_case_and_spaces_are_normalised(self):
        assert str(PciAddress.parse(" 0000:AF:00.1\n")) == "0000:af:00.1"

    def test_wide_domain_is_kept(self):
        assert str(PciAddress.parse("10000:e1:00.0")) == "10000:e1:00.0"

    def test_routing_id_and_devfn(self):
        addr = PciAddress.parse("0000:03:10.2")
        assert addr.devfn == 0x82
        assert addr.rid == 0x0382

    def test_addresses_sort_numerically(self):
        names = ["0000:10:00.0", "0000:02:00.0", "0000:02:00.1", "0001:00:00.0"]
        assert [str(a) for a in sorted(map(PciAddress.parse, names))] == [
            "0000:02:00.0", "0000:02:00.1", "0000:10:00.0", "0001:00:00.0"]

    @pytest.mark.parametrize("text", ["", "00:10", "0000:00:10.8", "00:20.0", "zz:00.0",
                                      "0000:00:10.0.1", "0000:100:00.0"])
    def test_bad_strings_raise_invalid_argument(self, text):
        with pytest.raises(errors.InvalidArgumentError) as info:
            PciAddress.parse(text)
        assert isinstance(info.value, ValueError)
        assert "0000:00:1f.3" in info.value.remedy

    def test_message_quotes_the_bad_string(self):
        with pytest.raises(errors.InvalidArgumentError, match=r"not a PCI address: 'nic0'"):
            PciAddress.parse("nic0")


# --------------------------------------------------------------------------- reading
class TestReading:
    def test_ids_are_the_files_values(self, fs):
        nic = pci.get(NIC)
        assert (nic.vendor, nic.device) == (0x8086, 0x10D3)
        assert (nic.subsystem_vendor, nic.subsystem_device) == (0x8086, 0xA01F)
        assert nic.class_code == 0x020000
        assert nic.revision == 0x03
        assert nic.header_type == 0
        assert pci.get(PORT).header_type == 1

    def test_short_address_finds_the_device(self, fs):
        assert pci.get("01:00.0").name == NIC

    def test_driver_is_the_symlink_name(self, fs):
        assert pci.get(NIC).driver == "e1000e"
        assert pci.get(EDU).driver is None

    def test_driver_override_null_reads_as_none(self, fs):
        nic = pci.get(NIC)
        assert fs.read(f"bus/pci/devices/{NIC}/driver_override") == "(null)\n"
        assert nic.driver_override is None

    def test_iommu_group_is_the_link_number(self, fs):
        assert pci.get(AUDIO).iommu_group == 2
        assert pci.get(VIRTIO).iommu_group is None

    def test_numa_node_minus_one_means_none(self, fs):
        assert pci.get(NIC).numa_node == 0
        assert pci.get(EDU).numa_node is None

    def test_missing_device_is_not_found(self, fs):
        with pytest.raises(errors.NotFoundError) as info:
            pci.get("0000:00:19.0")
        assert str(info.value).startswith("no PCI device 0000:00:19.0")
        assert isinstance(info.value, FileNotFoundError)
        assert "pyvfio ls" in info.value.remedy

    def test_impossible_slot_is_not_found_either(self, fs):
        with pytest.raises(errors.NotFoundError, match=r"^no PCI device 0000:00:99\.0"):
            pci.get("00:99.0")

    def test_devices_lists_every_function_sorted(self, fs):
        assert [d.name for d in pci.devices()] == [
            HOSTB, EDU, VIRTIO, PORT, LPC, AUDIO, SMBUS, NIC]

    def test_devices_of_missing_sysfs_root(self, tmp_path):
        with pytest.raises(errors.NotFoundError, match="no sysfs at"):
            with use_host(Host(sysfs=str(tmp_path / "nothing"))):
                pci.devices()

    def test_find_by_ids_driver_and_class(self, fs):
        assert [d.name for d in pci.find(vendor=0x1234)] == [EDU]
        assert [d.name for d in pci.find(vendor="8086", device="a170")] == [AUDIO]
        assert [d.name for d in pci.find(driver="e1000e")] == [NIC]
        assert [d.name for d in pci.find(class_code=0x020000)] == [VIRTIO, NIC]
        bridges = pci.find(class_code=0x060000, class_mask=0xFF0000)
        assert [d.name for d in bridges] == [HOSTB, PORT, LPC]

    def test_find_rejects_a_bad_hex_id(self, fs):
        with pytest.raises(errors.InvalidArgumentError, match="not a hexadecimal ID: 'intel'"):
            pci.find(vendor="intel")

    def test_resources_are_the_resource_file_lines(self, fs):
        res = pci.get(NIC).resources
        assert len(res) == 13
        bar0, bar1, bar2, bar3 = res[:4]
        assert (bar0.index, bar0.start, bar0.end, bar0.flags) == (0, *NIC_BAR0)
        assert bar0.size == 0x20000 and bar0.is_mem and not bar0.is_io
        assert not bar0.prefetchable and not bar0.is_64bit
        assert bar1.size == 0
        assert bar2.is_io and bar2.size == 0x20
        assert bar3.size == 1 << 32 and bar3.is_64bit and bar3.prefetchable


# --------------------------------------------------------------------------- groups
class TestGroups:
    def test_group_members_are_the_group_devices(self, fs):
        members = pci.get(AUDIO).group_members()
        assert [m.name for m in members] == [LPC, AUDIO, SMBUS]
        assert pci.get(VIRTIO).group_members() == []

    def test_unbound_device_alone_is_viable(self, fs):
        edu = pci.get(EDU)
        assert edu.group_viable()
        edu.check_viable()

    def test_pcieport_beside_vfio_pci_is_viable(self, fs):
        nic = pci.get(NIC)
        assert not nic.group_viable()
        assert nic.group_blockers() == [(NIC, "e1000e")]
        nic.bind()
        assert nic.group_viable()

    def test_no_group_is_not_viable(self, fs):
        virtio = pci.get(VIRTIO)
        assert not virtio.group_viable()
        with pytest.raises(errors.NotViableError, match="not in an IOMMU group") as info:
            virtio.check_viable()
        assert "intel_iommu=on" in info.value.remedy

    def test_check_viable_names_each_offender_and_its_driver(self, fs):
        with pytest.raises(errors.NotViableError) as info:
            pci.get(AUDIO).check_viable()
        exc = info.value
        assert exc.message == (f"IOMMU group 2 is not viable: {LPC} bound to lpc_ich, "
                               f"{AUDIO} bound to snd_hda_intel, {SMBUS} bound to i801_smbus")
        for bdf in (LPC, AUDIO, SMBUS):
            assert f"`pyvfio bind {bdf}`" in exc.remedy

    def test_binding_the_offenders_makes_the_group_viable(self, fs):
        audio = pci.get(AUDIO)
        pci.get(LPC).unbind()
        pci.get(SMBUS).bind("pci-stub")
        assert audio.group_blockers() == [(AUDIO, "snd_hda_intel")]
        audio.bind("vfio-pci")
        audio.check_viable()

    def test_non_pci_group_member_counts(self, fs):
        group = fs.sys / "kernel/iommu_groups/3/devices/platform-dma"
        (fs.sys / "devices/platform/dma/driver").parent.mkdir(parents=True)
        fs.add_driver("idma64")
        (fs.sys / "devices/platform/dma/driver").symlink_to(fs.driver_dir("idma64"))
        group.symlink_to(fs.sys / "devices/platform/dma")
        edu = pci.get(EDU)
        assert [m.name for m in edu.group_members()] == [EDU]
        assert edu.group_blockers() == [("platform-dma", "idma64")]
        with pytest.raises(errors.NotViableError) as info:
            edu.check_viable()
        assert "unbind platform-dma from idma64" in info.value.remedy

    @pytest.mark.parametrize("driver,ok", [
        (None, True), ("vfio-pci", True), ("pci-stub", True), ("pcieport", True),
        ("mlx5_vfio_pci", True), ("e1000e", False), ("nvme", False)])
    def test_user_dma_drivers(self, driver, ok):
        assert pci.driver_allows_user_dma(driver) is ok

    def test_check_bound_says_how_to_bind(self, fs):
        with pytest.raises(errors.NotBoundError) as info:
            pci.get(NIC).check_bound()
        assert info.value.message == "bound to e1000e, not vfio-pci"
        assert info.value.remedy == f"`pyvfio bind {NIC}`"
        with pytest.raises(errors.NotBoundError) as info:
            pci.get(EDU).check_bound("pci-stub")
        assert info.value.remedy == f"`pyvfio bind {EDU} --driver pci-stub`"


# --------------------------------------------------------------------------- binding
class TestBind:
    def test_bind_goes_through_override_unbind_and_probe(self, fs):
        nic = pci.get(NIC)
        assert nic.bind() == "e1000e"
        assert fs.writes == [
            (f"bus/pci/devices/{NIC}/driver_override", b"vfio-pci"),
            ("bus/pci/drivers/e1000e/unbind", NIC.encode()),
            ("bus/pci/drivers_probe", NIC.encode()),
        ]
        link = fs.device_dir(NIC) / "driver"
        assert os.readlink(link) == "../../../bus/pci/drivers/vfio-pci"
        assert (fs.driver_dir("vfio-pci") / NIC).is_symlink()
        assert not (fs.driver_dir("e1000e") / NIC).exists()
        assert nic.driver == "vfio-pci"
        assert nic.driver_override == "vfio-pci"
        nic.check_bound("vfio-pci")

    def test_bind_of_an_unbound_device_does_not_unbind(self, fs):
        edu = pci.get(EDU)
        assert edu.bind() is None
        assert [p for p, _ in fs.writes] == [f"bus/pci/devices/{EDU}/driver_override",
                                             "bus/pci/drivers_probe"]
        assert fs.driver_of(EDU) == "vfio-pci"

    def test_bind_when_already_bound_changes_nothing(self, fs):
        nic = pci.get(NIC)
        nic.bind()
        fs.writes.clear()
        assert nic.bind() == "vfio-pci"
        assert fs.writes == []

    def test_restore_gives_back_driver_and_override(self, fs):
        nic = pci.get(NIC)
        nic.bind()
        fs.writes.clear()
        assert nic.restore() == "e1000e"
        assert fs.writes == [
            (f"bus/pci/devices/{NIC}/driver_override", b"e1000e"),
            ("bus/pci/drivers/vfio-pci/unbind", NIC.encode()),
            ("bus/pci/drivers_probe", NIC.encode()),
            (f"bus/pci/devices/{NIC}/driver_override", b"\n"),
        ]
        assert fs.driver_of(NIC) == "e1000e"
        assert fs.read(f"bus/pci/devices/{NIC}/driver_override") == "(null)\n"

    def test_restore_goes_back_to_the_state_before_the_first_bind(self, fs):
        nic = pci.get(NIC)
        nic.bind("pci-stub")
        assert nic.bind("vfio-pci") == "pci-stub"
        assert nic.restore() == "e1000e"
        assert nic.driver_override is None

    def test_restore_without_bind_does_nothing(self, fs):
        assert pci.get(NIC).restore() == "e1000e"
        assert fs.writes == []

    def test_restore_to_unbound_leaves_it_unbound(self, fs):
        edu = pci.get(EDU)
        edu.bind()
        assert edu.restore() is None
        assert fs.driver_of(EDU) is None
        assert edu.driver_override is None

    def test_bound_context_restores_the_driver(self, fs):
        nic = pci.get(NIC)
        with nic.bound("vfio-pci") as dev:
            assert dev is nic
            assert fs.driver_of(NIC) == "vfio-pci"
        assert fs.driver_of(NIC) == "e1000e"
        assert nic.driver_override is None

    def test_bound_context_restores_on_exception(self, fs):
        nic = pci.get(NIC)
        with pytest.raises(KeyError):
            with nic.bound():
                assert fs.driver_of(NIC) == "vfio-pci"
                raise KeyError("boom")
        assert fs.driver_of(NIC) == "e1000e"

    def test_missing_driver_module_is_loaded(self, fs):
        fs.loadable["vfio-pci"] = ()
        # the module is not loaded yet: no driver directory
        for entry in fs.driver_dir("vfio-pci").iterdir():
            entry.unlink()
        fs.driver_dir("vfio-pci").rmdir()
        assert pci.get(EDU).bind() is None
        assert fs.modprobed == ["vfio-pci"]
        assert fs.driver_of(EDU) == "vfio-pci"

    def test_module_that_cannot_load_is_named(self, fs):
        with pytest.raises(errors.ModuleMissingError, match="cannot load kernel module vfio_foo"):
            pci.get(NIC).bind("vfio_foo")
        assert fs.modprobed == ["vfio_foo"]
        assert fs.writes == []
        assert fs.driver_of(NIC) == "e1000e"

    def test_refused_probe_puts_the_old_driver_back(self, fs):
        fs.refuse("vfio-pci", NIC)
        nic = pci.get(NIC)
        with pytest.raises(errors.NotBoundError) as info:
            nic.bind()
        assert info.value.message == "vfio-pci did not bind (now unbound)"
        assert "dmesg" in info.value.remedy
        assert fs.driver_of(NIC) == "e1000e"
        assert nic.driver_override is None

    def test_vfio_pci_refuses_a_bridge(self, fs):
        port = pci.get(PORT)
        with pytest.raises(errors.NotBoundError) as info:
            port.bind()
        assert "header type 1" in info.value.remedy
        assert fs.driver_of(PORT) == "pcieport"

    def test_non_root_gets_a_permission_error_naming_the_file(self, monkeypatch, fs):
        fs.unprivileged = True
        monkeypatch.setattr(os, "geteuid", lambda: 1000)     # a user, not root
        nic = pci.get(NIC)
        with pytest.raises(errors.PermissionDeniedError) as info:
            nic.bind()
        exc = info.value
        assert isinstance(exc, PermissionError)
        assert exc.errno == errno.EACCES
        assert exc.path == os.path.join(fs.sysfs, f"bus/pci/devices/{NIC}/driver_override")
        assert f"cannot write 'vfio-pci' to {exc.path}" in str(exc)
        assert "run as root" in exc.remedy
        assert fs.driver_of(NIC) == "e1000e"

    def test_unbind_detaches_and_keeps_the_override(self, fs):
        nic = pci.get(NIC)
        nic.bind()
        fs.writes.clear()
        assert nic.unbind() == "vfio-pci"
        assert fs.writes == [("bus/pci/drivers/vfio-pci/unbind", NIC.encode())]
        assert not (fs.device_dir(NIC) / "driver").exists()
        assert nic.driver is None
        assert nic.driver_override == "vfio-pci"
        assert nic.unbind() is None

    def test_reprobe_hands_the_device_back_by_id(self, fs):
        nic = pci.get(NIC)
        nic.bind()
        assert nic.reprobe() == "e1000e"
        assert fs.read(f"bus/pci/devices/{NIC}/driver_override") == "(null)\n"

    def test_new_id_is_the_other_way_to_bind(self, fs):
        # the stand-in kernel honours new_id as the kernel does: it probes unbound devices
        write_attr(os.path.join(fs.sysfs, "bus/pci/drivers/pci-stub/new_id"), "1234 11e8")
        assert fs.driver_of(EDU) == "pci-stub"


# --------------------------------------------------------------------------- SR-IOV
@pytest.fixture
def pf(fs) -> PciDevice:
    fs.add_driver("igb", [(0x8086, 0x10C9)], sriov=True)
    fs.add_driver("igbvf", [(0x8086, 0x10CA)])
    fs.add_device("0000:03:00.0", 0x8086, 0x10C9, driver="igb", group=10, totalvfs=4,
                  vf_device=0x10CA, vf_offset=0x80, vf_stride=2)
    return pci.get("0000:03:00.0")


class TestSriov:
    def test_counts(self, pf):
        assert pf.sriov_totalvfs == 4
        assert pf.sriov_numvfs == 0
        assert pf.virtfns() == []
        assert not pf.is_vf and pf.physfn is None

    def test_enabling_creates_the_vfs(self, fs, pf):
        pf.sriov_numvfs = 2
        assert fs.writes == [("bus/pci/devices/0000:03:00.0/sriov_numvfs", b"2")]
        assert pf.sriov_numvfs == 2
        vfs = pf.virtfns()
        assert [v.name for v in vfs] == ["0000:03:10.0", "0000:03:10.2"]
        for vf in vfs:
            assert vf.is_vf
            assert vf.physfn == pf
            assert (vf.vendor, vf.device) == (0x8086, 0x10CA)
            assert vf.driver == "igbvf"
        assert [v.iommu_group for v in vfs] == [11, 12]

    def test_changing_a_nonzero_count_disables_first(self, fs, pf):
        pf.sriov_numvfs = 2
        fs.writes.clear()
        pf.sriov_numvfs = 3
        assert fs.writes_to("bus/pci/devices/0000:03:00.0/sriov_numvfs") == [b"0", b"3"]
        assert [v.name for v in pf.virtfns()] == ["0000:03:10.0", "0000:03:10.2",
                                                  "0000:03:10.4"]

    def test_disabling_removes_the_vfs(self, fs, pf):
        pf.sriov_numvfs = 2
        pf.sriov_numvfs = 0
        assert pf.virtfns() == []
        assert "0000:03:10.0" not in [d.name for d in pci.devices()]

    def test_same_count_writes_nothing(self, fs, pf):
        pf.sriov_numvfs = 0
        assert fs.writes == []

    def test_too_many_vfs_is_refused_before_writing(self, fs, pf):
        with pytest.raises(errors.InvalidArgumentError, match=r"supports 0\.\.4"):
            pf.sriov_numvfs = 5
        assert fs.writes == []

    def test_device_without_sriov(self, fs):
        with pytest.raises(errors.NotSupportedError, match="not SR-IOV capable"):
            pci.get(NIC).sriov_numvfs = 1
        assert pci.get(NIC).sriov_totalvfs == 0

    def test_pf_driver_without_sriov_support(self, fs, pf):
        pf.bind("vfio-pci")  # vfio-pci without enable_sriov=1
        with pytest.raises(errors.NotSupportedError) as info:
            pf.sriov_numvfs = 1
        assert info.value.message == "its driver vfio-pci cannot enable VFs"
        assert "enable_sriov=1" in info.value.remedy

    def test_vf_can_be_bound_to_vfio_pci(self, fs, pf):
        pf.sriov_numvfs = 1
        vf = pf.virtfns()[0]
        assert vf.bind() == "igbvf"
        assert fs.driver_of("0000:03:10.0") == "vfio-pci"


# --------------------------------------------------------------------------- VFIO nodes
class TestVfioNodes:
    def test_group_node(self, fs):
        edu = pci.get(EDU)
        assert edu.vfio_group_path() == os.path.join(fs.devroot, "vfio", "3")

    def test_noiommu_group_node(self, fs):
        fs.add_group(7, name="vfio-noiommu")
        fs.add_device("0000:00:12.0", 0x1234, 0x11E8, group=7, driver="vfio-pci")
        dev = pci.get("0000:00:12.0")
        assert dev.vfio_group_path() == os.path.join(fs.devroot, "vfio", "noiommu-7")

    def test_no_group_no_node(self, fs):
        with pytest.raises(errors.NotFoundError, match="not in an IOMMU group"):
            pci.get(VIRTIO).vfio_group_path()

    def test_cdev_node(self, fs):
        edu = pci.get(EDU)
        assert edu.vfio_cdev_path() is None
        node = fs.add_vfio_cdev(EDU, 4)
        assert edu.vfio_cdev_path() == os.path.join(fs.devroot, "vfio", "devices", "vfio4")
        assert os.path.exists(node)

    def test_vfio_dev_without_a_char_device_is_no_cdev(self, fs):
        # kernels without CONFIG_VFIO_DEVICE_CDEV still list vfio-dev/vfioX, with no dev
        (fs.device_dir(EDU) / "vfio-dev/vfio0").mkdir(parents=True)
        assert pci.get(EDU).vfio_cdev_path() is None


# --------------------------------------------------------------------------- the CLI
class TestCli:
    def test_ls_table(self, fs, capsys):
        status, out, _ = run_cli(capsys, "ls")
        assert status == 0
        lines = out.splitlines()
        assert lines[0].split() == ["BDF", "VENDOR:DEVICE", "CLASS", "DRIVER", "GROUP", "VFIO"]
        rows = {line.split()[0]: line for line in lines[1:]}
        assert list(rows) == [HOSTB, EDU, VIRTIO, PORT, LPC, AUDIO, SMBUS, NIC]
        assert rows[EDU].split() == [EDU, "1234:11e8", "00ff00", "-", "3", "viable"]
        assert rows[VIRTIO].split() == [VIRTIO, "1af4:1041", "020000", "virtio-pci", "-", "-"]
        assert rows[NIC].split()[:5] == [NIC, "8086:10d3", "020000", "e1000e", "1"]
        assert rows[NIC].endswith(f"not viable: {NIC} bound to e1000e")
        assert rows[AUDIO].endswith(
            f"not viable: {LPC} bound to lpc_ich, {AUDIO} bound to snd_hda_intel, "
            f"{SMBUS} bound to i801_smbus")

    def test_ls_json(self, fs, capsys):
        status, out, _ = run_cli(capsys, "ls", "--json")
        assert status == 0
        records = {r["address"]: r for r in json.loads(out)}
        assert len(records) == 8
        assert records[NIC] == {
            "address": NIC, "vendor": "8086", "device": "10d3", "subsystem_vendor": "8086",
            "subsystem_device": "a01f", "class": "020000", "revision": "03",
            "driver": "e1000e", "driver_override": None, "uio": None, "iommu_group": 1,
            "viable": False,
            "blockers": [{"address": NIC, "driver": "e1000e"}], "numa_node": 0,
            "physfn": None, "sriov_numvfs": 0, "sriov_totalvfs": 0,
        }
        assert records[EDU]["viable"] is True and records[EDU]["driver"] is None
        assert records[VIRTIO]["viable"] is None and records[VIRTIO]["iommu_group"] is None

    def test_ls_filters(self, fs, capsys):
        _, out, _ = run_cli(capsys, "ls", "--json", "--vendor", "8086", "--device", "A170",
                            )
        assert [r["address"] for r in json.loads(out)] == [AUDIO]
        _, out, _ = run_cli(capsys, "ls", "--json", "--driver", "pcieport")
        assert [r["address"] for r in json.loads(out)] == [PORT]

    def test_ls_rejects_a_bad_vendor(self, fs, capsys):
        with pytest.raises(SystemExit) as info:
            main(["ls", "--vendor", "intel"])
        assert info.value.code == 2
        assert "not a hexadecimal ID: 'intel'" in capsys.readouterr().err

    def test_bind_prints_old_and_new_driver(self, fs, capsys):
        status, out, err = run_cli(capsys, "bind", NIC)
        assert (status, out, err) == (0, f"{NIC}: e1000e -> vfio-pci\n", "")
        assert fs.driver_of(NIC) == "vfio-pci"

    def test_bind_notes_a_group_that_is_not_viable_yet(self, fs, capsys):
        status, out, err = run_cli(capsys, "bind", "00:1f.3")
        assert status == 0
        assert out == f"{AUDIO}: snd_hda_intel -> vfio-pci\n"
        assert err == (f"note: IOMMU group 2 is not viable yet: {LPC} bound to lpc_ich "
                       f"(`pyvfio bind {LPC}`), {SMBUS} bound to i801_smbus "
                       f"(`pyvfio bind {SMBUS}`)\n")

    def test_bind_other_driver_and_again(self, fs, capsys):
        status, out, _ = run_cli(capsys, "bind", EDU, "--driver", "pci-stub")
        assert (status, out) == (0, f"{EDU}: (no driver) -> pci-stub\n")
        status, out, _ = run_cli(capsys, "bind", EDU, "--driver", "pci-stub")
        assert (status, out) == (0, f"{EDU}: already bound to pci-stub\n")

    def test_bind_failure_is_one_message_without_traceback(self, fs, capsys):
        status, out, err = run_cli(capsys, "bind", "0000:00:19.0")
        assert (status, out) == (1, "")
        assert err.startswith("pyvfio bind: no PCI device 0000:00:19.0\n  remedy: ")
        status, _, err = run_cli(capsys, "bind", "nic0")
        assert status == 1 and "not a PCI address: 'nic0'" in err

    def test_bind_as_non_root(self, monkeypatch, fs, capsys):
        fs.unprivileged = True
        monkeypatch.setattr(os, "geteuid", lambda: 1000)     # a user, not root
        status, _, err = run_cli(capsys, "bind", NIC)
        assert status == 1
        assert "Permission denied [EACCES]" in err and "run as root" in err

    def test_unbind(self, fs, capsys):
        run_cli(capsys, "bind", NIC)
        status, out, err = run_cli(capsys, "unbind", NIC)
        assert (status, out) == (0, f"{NIC}: vfio-pci -> (no driver)\n")
        assert "driver_override is still vfio-pci" in err
        assert fs.driver_of(NIC) is None
        status, out, _ = run_cli(capsys, "unbind", NIC)
        assert (status, out) == (0, f"{NIC}: not bound to a driver\n")

    def test_unbind_reprobe_gives_the_device_back(self, fs, capsys):
        run_cli(capsys, "bind", NIC)
        status, out, _ = run_cli(capsys, "unbind", "--reprobe", NIC)
        assert (status, out) == (0, f"{NIC}: vfio-pci -> e1000e\n")
        assert fs.driver_of(NIC) == "e1000e"

    def test_python_dash_m_runs_ls(self, tmp_path):
        fs = machine(SysfsTree(tmp_path))
        proc = subprocess.run([sys.executable, "-m", "pyvfio", "--sysfs", fs.sysfs, "ls",
                               "--json"], cwd=REPO, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert [r["address"] for r in json.loads(proc.stdout)][:2] == [HOSTB, EDU]

    def test_python_dash_m_error_exit(self, tmp_path):
        fs = machine(SysfsTree(tmp_path))
        proc = subprocess.run([sys.executable, "-m", "pyvfio", "--sysfs", fs.sysfs, "unbind",
                               "0000:00:19.0"], cwd=REPO, capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        assert proc.stderr.startswith("pyvfio unbind: no PCI device 0000:00:19.0")


# --------------------------------------------------------------------------- this machine
REAL = "/sys/bus/pci/devices"


@pytest.mark.skipif(not os.path.isdir(REAL), reason="this machine has no PCI bus in sysfs")
class TestThisMachine:
    """Read-only checks against the host's real sysfs: nothing is written."""

    def test_devices_are_the_directory_entries(self):
        assert [d.name for d in pci.devices()] == sorted(
            os.listdir(REAL), key=PciAddress.parse)

    def test_ids_equal_the_files(self):
        for dev in pci.devices():
            for attr, value in (("vendor", dev.vendor), ("device", dev.device),
                                ("class", dev.class_code)):
                with open(os.path.join(REAL, dev.name, attr)) as f:
                    assert value == int(f.read(), 16), (dev.name, attr)

    def test_driver_and_group_equal_the_links(self):
        for dev in pci.devices():
            link = os.path.join(REAL, dev.name, "driver")
            want = os.path.basename(os.readlink(link)) if os.path.islink(link) else None
            assert dev.driver == want
            link = os.path.join(REAL, dev.name, "iommu_group")
            want_group = int(os.path.basename(os.readlink(link))) if os.path.islink(link) else None
            assert dev.iommu_group == want_group

    def test_ls_json_lists_them(self, capsys):
        status, out, _ = run_cli(capsys, "ls", "--json")
        assert status == 0
        assert sorted(r["address"] for r in json.loads(out)) == sorted(os.listdir(REAL))
