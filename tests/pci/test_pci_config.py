"""Tests of pyvfio.pci.config over hand-built configuration-space images.

The images follow the layouts real (and QEMU-emulated) functions present:
QEMU's ``edu`` device, QEMU's NVMe controller, an Intel gigabit NIC with
SR-IOV, a PCIe root port.  Every value asserted is the one encoded below.
"""
from __future__ import annotations

import errno
import struct
from typing import List, Tuple

import pytest

from pyvfio.errors import InvalidArgumentError, OutOfBoundsError, PyvfioError
from pyvfio.core.uapi import lib
from pyvfio.pci.caps import Bar, Capability, PcieType, PowerState, cap_name, ext_cap_name
from pyvfio.pci.config import BufferSpace, CapabilityListError, PciConfig

pytestmark = pytest.mark.host


# --------------------------------------------------------------------------- helpers
class FakeSpace:
    """A bytearray-backed config space that records every access."""

    def __init__(self, size: int = 256) -> None:
        self.data = bytearray(size)
        self.size = size
        self.reads = 0
        self.writes: List[Tuple[int, bytes]] = []

    def read(self, offset: int, size: int) -> bytes:
        self.reads += 1
        assert 0 <= offset and offset + size <= self.size, "access escaped the checks"
        return bytes(self.data[offset:offset + size])

    def write(self, offset: int, data: bytes) -> None:
        assert 0 <= offset and offset + len(data) <= self.size, "access escaped the checks"
        self.writes.append((offset, bytes(data)))
        self.data[offset:offset + len(data)] = data

    # image building
    def u8(self, off: int, v: int) -> "FakeSpace":
        self.data[off] = v
        return self

    def u16(self, off: int, v: int) -> "FakeSpace":
        struct.pack_into("<H", self.data, off, v)
        return self

    def u32(self, off: int, v: int) -> "FakeSpace":
        struct.pack_into("<I", self.data, off, v)
        return self

    def header(self, vendor: int, device: int, *, revision: int, class_code: int,
               status: int = lib.PCI_STATUS_CAP_LIST, command: int = 0, header_type: int = 0,
               cap_ptr: int = 0) -> "FakeSpace":
        self.u16(lib.PCI_VENDOR_ID, vendor).u16(lib.PCI_DEVICE_ID, device)
        self.u16(lib.PCI_COMMAND, command).u16(lib.PCI_STATUS, status)
        self.u32(lib.PCI_REVISION_ID, (class_code << 8) | revision)
        self.u8(lib.PCI_HEADER_TYPE, header_type)
        return self.u8(lib.PCI_CAPABILITY_LIST, cap_ptr)

    def cap(self, off: int, cap_id: int, nxt: int) -> "FakeSpace":
        return self.u8(off, cap_id).u8(off + 1, nxt)

    def ecap(self, off: int, cap_id: int, version: int, nxt: int) -> "FakeSpace":
        return self.u32(off, cap_id | version << 16 | nxt << 20)


def edu() -> FakeSpace:
    """QEMU's ``edu`` teaching device: 1234:11e8, one 1 MiB BAR, 64-bit MSI at 0x40."""
    s = FakeSpace(256)
    s.header(0x1234, 0x11e8, revision=0x10, class_code=0x00ff00, cap_ptr=0x40)
    s.u32(0x10, 0xfea00000)                       # BAR0: 32-bit memory, not prefetchable
    s.u16(0x2c, 0x1af4).u16(0x2e, 0x1100)         # QEMU's default subsystem IDs
    s.u8(0x3c, 11).u8(0x3d, 1)                    # INTA#
    s.cap(0x40, lib.PCI_CAP_ID_MSI, 0x00).u16(0x42, 0x0080)   # 64-bit, 1 vector, no masking
    return s


def qemu_nvme() -> FakeSpace:
    """QEMU's NVMe controller (1b36:0010).

    QEMU adds PM at 0x60, then PCIe at 0x80, then MSI-X at the first free
    offset 0x40; each new capability goes to the head of the list, so the
    chain is 0x40 (MSI-X) -> 0x80 (PCIe) -> 0x60 (PM).
    """
    s = FakeSpace(4096)
    s.header(0x1b36, 0x0010, revision=0x02, class_code=0x010802, cap_ptr=0x40,
             command=0x0002)
    s.u32(0x10, 0xfebd0004).u32(0x14, 0x00000000)   # BAR0: 64-bit memory
    s.u16(0x2c, 0x1af4).u16(0x2e, 0x1100)
    s.u8(0x3c, 10).u8(0x3d, 1)
    # MSI-X: 65 vectors (size-1 = 64), table BAR0+0x2000, PBA BAR0+0x3000
    s.cap(0x40, lib.PCI_CAP_ID_MSIX, 0x80).u16(0x42, 64).u32(0x44, 0x2000).u32(0x48, 0x3000)
    # PCIe v2 endpoint: MPS 128 B, RBER + FLR, MRRS 512 B, link 2.5 GT/s x1
    s.cap(0x80, lib.PCI_CAP_ID_EXP, 0x60).u16(0x82, 0x0002)
    s.u32(0x84, 0x10008000).u16(0x88, 0x2000)
    s.u32(0x8c, 0x00000011).u16(0x92, 0x0011)
    # PM 1.2 (version 3), D0, No_Soft_Reset
    s.cap(0x60, lib.PCI_CAP_ID_PM, 0x00).u16(0x62, 0x0003).u16(0x64, 0x0008)
    return s


SERIAL = 0x001b21ffff123456


def intel_nic() -> FakeSpace:
    """An Intel gigabit server NIC (I350-like, 8086:1521) with SR-IOV."""
    s = FakeSpace(4096)
    s.header(0x8086, 0x1521, revision=0x01, class_code=0x020000, cap_ptr=0x40,
             header_type=0x80, command=0x0406)
    s.u32(0x10, 0xfb000000)                       # BAR0 mem32
    s.u32(0x18, 0x0000e021)                       # BAR2 I/O at 0xe020
    s.u32(0x1c, 0xfb100000)                       # BAR3 mem32 (MSI-X)
    s.u16(0x2c, 0x8086).u16(0x2e, 0x0001)
    s.u8(0x3c, 0xff).u8(0x3d, 1)
    # PM: version 3, DSI, PME from D0/D3hot/D3cold; PMCSR data scale 1
    s.cap(0x40, lib.PCI_CAP_ID_PM, 0x50).u16(0x42, 0xc823).u16(0x44, 0x2000)
    # MSI: 64-bit, per-vector masking, 1 vector, enabled
    s.cap(0x50, lib.PCI_CAP_ID_MSI, 0x70).u16(0x52, 0x0181)
    s.u32(0x54, 0xfee00000).u32(0x58, 0x00000000).u16(0x5c, 0x4021)
    s.u32(0x60, 0x00000000).u32(0x64, 0x00000001)
    # MSI-X: 10 vectors, table BAR3+0, PBA BAR3+0x2000, enabled, function masked
    s.cap(0x70, lib.PCI_CAP_ID_MSIX, 0xa0).u16(0x72, 0xc009).u32(0x74, 0x00000003).u32(0x78, 0x2003)
    # PCIe v2 endpoint: MPS supported 512 B, FLR; MPS 256 B, MRRS 512 B; 5 GT/s x4
    s.cap(0xa0, lib.PCI_CAP_ID_EXP, 0x00).u16(0xa2, 0x0002)
    s.u32(0xa4, 0x10008002).u16(0xa8, 0x2020)
    s.u32(0xac, 0x00000042).u16(0xb2, 0x0042)
    # AER v2 -> DSN -> SR-IOV
    s.ecap(0x100, lib.PCI_EXT_CAP_ID_ERR, 2, 0x140)
    s.u32(0x104, 0x00004000).u32(0x108, 0x00000000).u32(0x10c, 0x00062030)
    s.u32(0x110, 0x00002000).u32(0x114, 0x00002000)
    s.ecap(0x140, lib.PCI_EXT_CAP_ID_DSN, 1, 0x160)
    s.u32(0x144, SERIAL & 0xffffffff).u32(0x148, SERIAL >> 32)
    s.ecap(0x160, lib.PCI_EXT_CAP_ID_SRIOV, 1, 0x000)
    s.u32(0x164, 0x00000000).u16(0x168, 0x0000)
    s.u16(0x16c, 7).u16(0x16e, 7).u16(0x170, 0)          # initial, total, num VFs
    s.u16(0x174, 0x180).u16(0x176, 4).u16(0x17a, 0x1520)  # offset, stride, VF device
    s.u32(0x17c, 0x00000553).u32(0x180, 0x00000001)
    return s


def root_port() -> FakeSpace:
    """A PCIe root port (type 1 header): SSVID capability, 16 GT/s x16 link."""
    s = FakeSpace(4096)
    s.header(0x8086, 0xa74d, revision=0x01, class_code=0x060400, cap_ptr=0x40,
             header_type=0x01, command=0x0007)
    s.cap(0x40, lib.PCI_CAP_ID_EXP, 0x80).u16(0x42, 0x0142)    # v2, root port, slot
    s.u32(0x44, 0x00008001).u16(0x48, 0x5020)
    s.u32(0x4c, 0x0b00a104).u16(0x52, 0x7104)          # cap 16 GT/s x16, sta 16 GT/s x16
    s.cap(0x80, lib.PCI_CAP_ID_SSVID, 0x00).u32(0x84, 0x7d1817aa)
    s.ecap(0x100, lib.PCI_EXT_CAP_ID_ACS, 1, 0)
    return s


# --------------------------------------------------------------------------- header
def test_edu_header_fields():
    cfg = PciConfig(edu())
    assert cfg.size == 256
    assert (cfg.vendor_id, cfg.device_id) == (0x1234, 0x11e8)
    assert cfg.revision == 0x10
    assert cfg.class_code == 0x00ff00
    assert cfg.header_type == 0 and not cfg.multifunction
    assert (cfg.subsystem_vendor_id, cfg.subsystem_id) == (0x1af4, 0x1100)
    assert cfg.status == 0x0010 and cfg.command == 0
    assert (cfg.interrupt_line, cfg.interrupt_pin) == (11, 1)


def test_edu_bars():
    bars = PciConfig(edu()).bars()
    assert len(bars) == 6
    assert bars[0] == Bar(0, False, False, False, 0xfea00000, 0xfea00000)
    assert bars[0].kind == "mem32"
    assert all(b.raw == 0 and b.address == 0 for b in bars[1:])


def test_nvme_64bit_bar_takes_two_registers():
    s = qemu_nvme().u32(0x10, 0x0000000c).u32(0x14, 0x00000080)   # 64-bit prefetchable
    bars = PciConfig(s).bars()
    assert [b.index for b in bars] == [0, 2, 3, 4, 5]
    assert bars[0].is_64bit and bars[0].prefetchable and not bars[0].is_io
    assert bars[0].address == 0x80_0000_0000
    assert bars[0].kind == "mem64-pref"


def test_nic_io_bar_and_multifunction():
    cfg = PciConfig(intel_nic())
    assert cfg.header_type == 0 and cfg.multifunction
    bars = {b.index: b for b in cfg.bars()}
    assert bars[2].is_io and bars[2].address == 0xe020 and bars[2].kind == "io"
    assert bars[3].address == 0xfb100000 and not bars[3].is_64bit


def test_bridge_has_two_bars_and_subsystem_from_ssvid():
    cfg = PciConfig(root_port())
    assert cfg.header_type == 1
    assert len(cfg.bars()) == 2
    assert (cfg.subsystem_vendor_id, cfg.subsystem_id) == (0x17aa, 0x7d18)


def test_bridge_without_ssvid_has_no_subsystem():
    s = root_port().cap(0x40, lib.PCI_CAP_ID_EXP, 0x00)
    cfg = PciConfig(s)
    assert cfg.subsystem_vendor_id is None and cfg.subsystem_id is None


def test_cardbus_capability_pointer_at_0x14():
    s = FakeSpace(256)
    s.header(0x104c, 0xac56, revision=0, class_code=0x060700, header_type=0x02)
    s.u8(0x14, 0x80).cap(0x80, lib.PCI_CAP_ID_PM, 0).u16(0x82, 0x0002)
    s.u16(0x40, 0x1028).u16(0x42, 0x0123)
    cfg = PciConfig(s)
    assert [(c.id, c.offset) for c in cfg.capabilities()] == [(lib.PCI_CAP_ID_PM, 0x80)]
    assert (cfg.subsystem_vendor_id, cfg.subsystem_id) == (0x1028, 0x0123)
    assert len(cfg.bars()) == 1


# --------------------------------------------------------------------------- command register
def test_bus_master_writes_back_exactly_the_command_register():
    s = edu()
    s.u16(0x06, 0xf910)                 # error bits set: a 32-bit write would clear them
    cfg = PciConfig(s)
    assert not cfg.bus_master
    cfg.bus_master = True
    assert s.writes == [(0x04, b"\x04\x00")]
    assert bytes(s.data[4:8]) == b"\x04\x00\x10\xf9"
    assert cfg.bus_master and cfg.command == 0x0004


def test_command_bits_read_modify_write():
    s = qemu_nvme()                     # memory enabled already
    cfg = PciConfig(s)
    assert cfg.memory_enable and not cfg.io_enable and not cfg.intx_disable
    cfg.intx_disable = True
    assert bytes(s.data[4:6]) == b"\x02\x04"
    cfg.io_enable = True
    assert cfg.command == 0x0403
    cfg.memory_enable = False
    assert bytes(s.data[4:6]) == b"\x01\x04"
    cfg.intx_disable = False
    cfg.io_enable = False
    assert cfg.command == 0
    assert all(off == 4 and len(data) == 2 for off, data in s.writes)


def test_setting_a_bit_already_set_writes_nothing():
    s = qemu_nvme()
    PciConfig(s).memory_enable = True
    assert s.writes == []


def test_enable_sets_bits_in_one_write():
    s = edu().u16(0x04, 0x0400)          # INTx disabled stays so
    cfg = PciConfig(s)
    assert cfg.enable() == 0x0406
    assert s.writes == [(0x04, b"\x06\x04")]
    assert cfg.enable(bus_master=False, memory=False, io=True) == 0x0407
    assert bytes(s.data[4:6]) == b"\x07\x04"


def test_command_setter_and_direct_writes():
    s = edu()
    cfg = PciConfig(s)
    cfg.command = 0x0146
    assert bytes(s.data[4:6]) == b"\x46\x01"
    cfg.write8(0x3c, 5)
    cfg.write32(0x10, 0xfe000000)
    assert cfg.read8(0x3c) == 5 and cfg.read32(0x10) == 0xfe000000
    cfg.write(0x40, b"\x05\x00")
    assert cfg.read(0x40, 4) == b"\x05\x00\x80\x00"


# --------------------------------------------------------------------------- bounds and alignment
def test_out_of_range_access_names_the_offset():
    cfg = PciConfig(edu())
    with pytest.raises(OutOfBoundsError, match="0x100") as exc:
        cfg.read32(0x100)
    assert exc.value.errno == errno.EFAULT
    assert isinstance(exc.value, IndexError)
    with pytest.raises(OutOfBoundsError, match="0xff"):
        cfg.read(0xff, 2)
    with pytest.raises(OutOfBoundsError):
        cfg.read8(-1)
    with pytest.raises(OutOfBoundsError):
        cfg.write32(0x100, 0)
    with pytest.raises(OutOfBoundsError):
        cfg.read(0xf0, 0x20)
    assert cfg.read32(0xfc) == 0


def test_pcie_space_allows_extended_offsets():
    cfg = PciConfig(intel_nic())
    assert cfg.read32(0xffc) == 0
    with pytest.raises(OutOfBoundsError, match="0x1000"):
        cfg.read8(0x1000)


def test_misaligned_access_is_refused():
    s = edu()
    cfg = PciConfig(s)
    with pytest.raises(InvalidArgumentError, match="0x2.*aligned"):
        cfg.read32(0x02)
    with pytest.raises(InvalidArgumentError, match="0x5"):
        cfg.read16(0x05)
    with pytest.raises(InvalidArgumentError, match="0x6"):
        cfg.write32(0x06, 0)
    assert s.writes == [] and s.reads == 0
    assert cfg.read(0x02, 4) == b"\xe8\x11\x00\x00"    # raw reads may be unaligned


def test_values_must_fit_the_register():
    s = edu()
    cfg = PciConfig(s)
    for bad in (0x10000, -1, True, 1.0):
        with pytest.raises(InvalidArgumentError):
            cfg.write16(0x04, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        cfg.write8(0x3c, 0x100)
    with pytest.raises(InvalidArgumentError):
        cfg.read8("4")  # type: ignore[arg-type]
    assert s.writes == []


def test_short_read_from_the_space_is_an_error():
    class Short(FakeSpace):
        def read(self, offset: int, size: int) -> bytes:
            return b"\x00"

    with pytest.raises(PyvfioError, match="short"):
        PciConfig(Short()).read32(0)


# --------------------------------------------------------------------------- capability lists
def test_edu_capabilities():
    cfg = PciConfig(edu())
    assert cfg.capabilities() == [Capability(lib.PCI_CAP_ID_MSI, 0x40, "MSI")]
    assert cfg.extended_capabilities() == []
    assert cfg.find(lib.PCI_CAP_ID_MSIX) is None


def test_nvme_capability_chain_order():
    cfg = PciConfig(qemu_nvme())
    caps = cfg.capabilities()
    assert [(c.id, c.offset, c.name) for c in caps] == [
        (lib.PCI_CAP_ID_MSIX, 0x40, "MSI-X"), (lib.PCI_CAP_ID_EXP, 0x80, "PCI Express"),
        (lib.PCI_CAP_ID_PM, 0x60, "Power Management")]
    assert all(c.version is None and not c.extended for c in caps)
    assert cfg.find(lib.PCI_CAP_ID_PM) == Capability(lib.PCI_CAP_ID_PM, 0x60, "Power Management")
    assert cfg.extended_capabilities() == []       # all zero at 0x100


def test_nic_extended_chain():
    cfg = PciConfig(intel_nic())
    assert [(c.id, c.offset) for c in cfg.capabilities()] == [
        (lib.PCI_CAP_ID_PM, 0x40), (lib.PCI_CAP_ID_MSI, 0x50), (lib.PCI_CAP_ID_MSIX, 0x70), (lib.PCI_CAP_ID_EXP, 0xa0)]
    ecaps = cfg.extended_capabilities()
    assert [(c.id, c.offset, c.version) for c in ecaps] == [
        (lib.PCI_EXT_CAP_ID_ERR, 0x100, 2), (lib.PCI_EXT_CAP_ID_DSN, 0x140, 1), (lib.PCI_EXT_CAP_ID_SRIOV, 0x160, 1)]
    assert [c.name for c in ecaps] == [
        "Advanced Error Reporting", "Device Serial Number", "Single Root I/O Virtualization"]
    assert all(c.extended for c in ecaps)
    assert cfg.find_extended(lib.PCI_EXT_CAP_ID_SRIOV).offset == 0x160
    assert cfg.find_extended(lib.PCI_EXT_CAP_ID_ACS) is None
    assert cfg.serial_number() == SERIAL


def test_no_capability_list_without_status_bit():
    s = edu().u16(0x06, 0x0000)
    assert PciConfig(s).capabilities() == []


def test_reserved_pointer_bits_are_ignored():
    s = edu().u8(0x34, 0x43)
    assert [c.offset for c in PciConfig(s).capabilities()] == [0x40]


def test_find_all_returns_every_instance():
    s = edu()
    s.cap(0x40, lib.PCI_CAP_ID_VNDR, 0x50).cap(0x50, lib.PCI_CAP_ID_MSI, 0x60).cap(0x60, lib.PCI_CAP_ID_VNDR, 0)
    cfg = PciConfig(s)
    assert [c.offset for c in cfg.find_all(lib.PCI_CAP_ID_VNDR)] == [0x40, 0x60]
    assert cfg.find(lib.PCI_CAP_ID_VNDR).offset == 0x40


@pytest.mark.parametrize("chain", [
    [(0x40, 0x50), (0x50, 0x40)],             # two-entry loop
    [(0x40, 0x40)],                           # points at itself
    [(0x40, 0x50), (0x50, 0x60), (0x60, 0x50)],
])
def test_standard_loop_is_detected(chain):
    s = edu()
    for off, nxt in chain:
        s.cap(off, lib.PCI_CAP_ID_VNDR, nxt)
    cfg = PciConfig(s)
    with pytest.raises(CapabilityListError, match="loop") as exc:
        cfg.capabilities()
    assert exc.value.errno == errno.EIO
    assert s.reads < 100                      # bounded, did not spin
    with pytest.raises(CapabilityListError):
        cfg.find(lib.PCI_CAP_ID_MSI)


def test_pointer_into_header_is_rejected():
    s = edu().cap(0x40, lib.PCI_CAP_ID_MSI, 0x20)
    with pytest.raises(CapabilityListError, match="0x20"):
        PciConfig(s).capabilities()
    s = edu().u8(0x34, 0x3c)
    with pytest.raises(CapabilityListError, match="0x3c"):
        PciConfig(s).capabilities()


def test_pointer_beyond_a_truncated_space_is_rejected():
    # e.g. the first 64 bytes of a config file an unprivileged user may read
    short = BufferSpace(bytes(edu().data[:64]))
    with pytest.raises(CapabilityListError, match="0x40"):
        PciConfig(short).capabilities()


def test_dead_function_all_ones_is_a_malformed_list():
    s = FakeSpace(4096)
    s.data[:] = b"\xff" * 4096
    cfg = PciConfig(s)
    assert cfg.vendor_id == 0xffff
    with pytest.raises(CapabilityListError):
        cfg.capabilities()
    assert cfg.extended_capabilities() == []
    assert "no function responds" in cfg.describe()[0]


def test_extended_loop_is_detected():
    s = intel_nic().ecap(0x160, lib.PCI_EXT_CAP_ID_SRIOV, 1, 0x100)
    with pytest.raises(CapabilityListError, match="loop"):
        PciConfig(s).extended_capabilities()
    s = intel_nic().ecap(0x140, lib.PCI_EXT_CAP_ID_DSN, 1, 0x140)
    with pytest.raises(CapabilityListError, match="0x140"):
        PciConfig(s).extended_capabilities()


def test_extended_pointer_below_0x100_is_rejected():
    s = intel_nic().ecap(0x140, lib.PCI_EXT_CAP_ID_DSN, 1, 0x0c0)
    with pytest.raises(CapabilityListError, match="0xc0"):
        PciConfig(s).extended_capabilities()


def test_extended_pointer_low_bits_are_masked():
    s = intel_nic().ecap(0x100, lib.PCI_EXT_CAP_ID_ERR, 2, 0x143)
    assert [c.offset for c in PciConfig(s).extended_capabilities()] == [0x100, 0x140, 0x160]


def test_extended_list_absent_or_all_ones():
    assert PciConfig(edu()).extended_capabilities() == []
    s = intel_nic().u32(0x100, 0xffffffff)
    assert PciConfig(s).extended_capabilities() == []
    s = intel_nic().u32(0x100, 0)
    assert PciConfig(s).extended_capabilities() == []


def test_extended_list_ends_at_zero_header():
    s = intel_nic().ecap(0x140, lib.PCI_EXT_CAP_ID_DSN, 1, 0x200)     # 0x200 is all zero
    ecaps = PciConfig(s).extended_capabilities()
    assert [c.offset for c in ecaps] == [0x100, 0x140]


def test_hidden_first_extended_capability_is_skipped():
    # VFIO hides AER here: ID 0, version 0, but the next pointer is kept
    s = intel_nic().ecap(0x100, 0, 0, 0x140)
    cfg = PciConfig(s)
    assert [c.id for c in cfg.extended_capabilities()] == [lib.PCI_EXT_CAP_ID_DSN, lib.PCI_EXT_CAP_ID_SRIOV]
    assert cfg.aer() is None


def test_conventional_space_has_no_extended_list():
    s = FakeSpace(256)
    s.header(0x8086, 0x100e, revision=0x03, class_code=0x020000)
    cfg = PciConfig(s)
    assert cfg.extended_capabilities() == []
    assert cfg.sriov() is None and cfg.pcie() is None


# --------------------------------------------------------------------------- decoders
def test_edu_msi():
    msi = PciConfig(edu()).msi()
    assert msi is not None
    assert msi.offset == 0x40
    assert not msi.enabled
    assert msi.is_64bit and not msi.per_vector_masking
    assert msi.multiple_message_capable == 1 and msi.multiple_message_enable == 1
    assert msi.address == 0 and msi.data == 0
    assert msi.mask is None and msi.pending is None


def test_msi_64bit_with_masking():
    msi = PciConfig(intel_nic()).msi()
    assert msi.offset == 0x50 and msi.enabled and msi.is_64bit and msi.per_vector_masking
    assert msi.address == 0xfee00000 and msi.data == 0x4021
    assert msi.mask == 0 and msi.pending == 1


def test_msi_32bit_multi_message():
    s = edu()
    # 32-bit, masking, capable of 8 (011), 4 enabled (010), enabled
    s.u16(0x42, 0x0100 | 0x3 << 1 | 0x2 << 4 | 1)
    s.u32(0x44, 0xfee01000).u16(0x48, 0x0031).u32(0x4c, 0x0000000c).u32(0x50, 0x2)
    msi = PciConfig(s).msi()
    assert not msi.is_64bit and msi.enabled
    assert msi.multiple_message_capable == 8 and msi.multiple_message_enable == 4
    assert msi.address == 0xfee01000 and msi.data == 0x31
    assert msi.mask == 0xc and msi.pending == 0x2


def test_nvme_msix():
    x = PciConfig(qemu_nvme()).msix()
    assert x is not None
    assert (x.offset, x.table_size) == (0x40, 65)
    assert (x.table_bir, x.table_offset) == (0, 0x2000)
    assert (x.pba_bir, x.pba_offset) == (0, 0x3000)
    assert not x.enabled and not x.function_mask


def test_nic_msix_enabled_and_masked():
    x = PciConfig(intel_nic()).msix()
    assert x.enabled and x.function_mask
    assert x.table_size == 10
    assert (x.table_bir, x.table_offset, x.pba_bir, x.pba_offset) == (3, 0, 3, 0x2000)


def test_decoders_accept_a_capability_or_offset():
    cfg = PciConfig(qemu_nvme())
    cap = cfg.find(lib.PCI_CAP_ID_MSIX)
    assert cfg.msix(cap) == cfg.msix(0x40) == cfg.msix()
    assert cfg.msi() is None


def test_nvme_pm():
    pm = PciConfig(qemu_nvme()).pm()
    assert pm is not None
    assert (pm.offset, pm.version) == (0x60, 3)
    assert pm.power_state is PowerState.D0 and str(pm.power_state) == "D0"
    assert pm.no_soft_reset and pm.pme_support == 0 and pm.pme_states == ()
    assert not pm.d1_support and not pm.d2_support


def test_pm_d3hot_and_pme_support():
    s = intel_nic().u16(0x44, 0x8103)           # D3hot, PME enabled, PME status
    pm = PciConfig(s).pm()
    assert pm.power_state is PowerState.D3HOT and str(pm.power_state) == "D3hot"
    assert pm.pme_support == 0b11001
    assert pm.pme_states == ("D0", "D3hot", "D3cold")
    assert pm.pme_enable and pm.pme_status and not pm.no_soft_reset


def test_nvme_pcie_endpoint():
    e = PciConfig(qemu_nvme()).pcie()
    assert e is not None
    assert (e.offset, e.version) == (0x80, 2)
    assert e.port_type is PcieType.ENDPOINT
    assert not e.slot_implemented and e.flr
    assert (e.max_payload_supported, e.max_payload, e.max_read_request) == (128, 128, 512)
    assert (e.link_max_speed, e.link_max_width) == (2.5, 1)
    assert (e.link_speed, e.link_width) == (2.5, 1)


def test_nic_pcie_link():
    e = PciConfig(intel_nic()).pcie()
    assert (e.max_payload_supported, e.max_payload, e.max_read_request) == (512, 256, 512)
    assert (e.link_max_speed, e.link_max_width, e.link_speed, e.link_width) == (5.0, 4, 5.0, 4)


def test_root_port_pcie():
    e = PciConfig(root_port()).pcie()
    assert e.port_type is PcieType.ROOT_PORT and e.slot_implemented and not e.flr
    assert (e.max_payload_supported, e.max_payload, e.max_read_request) == (256, 256, 4096)
    assert (e.link_max_speed, e.link_max_width) == (16.0, 16)
    assert (e.link_speed, e.link_width) == (16.0, 16)


def test_downtrained_link_and_unknown_speed():
    s = intel_nic().u16(0xb2, 0x0011).u32(0xac, 0x0000004f)
    e = PciConfig(s).pcie()
    assert (e.link_speed, e.link_width) == (2.5, 1)
    assert e.link_max_speed is None and e.link_max_width == 4


def test_rc_integrated_endpoint_has_no_link():
    s = intel_nic().u16(0xa2, 0x0092)
    e = PciConfig(s).pcie()
    assert e.port_type is PcieType.RC_INTEGRATED_ENDPOINT
    assert e.link_speed is None and e.link_width is None and e.link_max_speed is None


def test_reserved_port_type_is_kept_as_int():
    s = intel_nic().u16(0xa2, 0x00f2)
    e = PciConfig(s).pcie()
    assert e.port_type == 0xf and not isinstance(e.port_type, PcieType)
    assert any("reserved type 0xf" in line for line in PciConfig(s).describe())


def test_nic_sriov():
    sr = PciConfig(intel_nic()).sriov()
    assert sr is not None
    assert (sr.offset, sr.version) == (0x160, 1)
    assert (sr.total_vfs, sr.initial_vfs, sr.num_vfs) == (7, 7, 0)
    assert (sr.vf_offset, sr.vf_stride, sr.vf_device_id) == (0x180, 4, 0x1520)
    assert not sr.vf_enable and not sr.vf_memory_enable
    assert (sr.supported_page_sizes, sr.system_page_size) == (0x553, 1)


def test_sriov_enabled():
    s = intel_nic().u16(0x168, 0x0009).u16(0x170, 3)
    sr = PciConfig(s).sriov()
    assert sr.vf_enable and sr.vf_memory_enable and sr.num_vfs == 3


def test_nic_aer():
    a = PciConfig(intel_nic()).aer()
    assert a is not None
    assert (a.offset, a.version) == (0x100, 2)
    assert a.uncorrectable_status == 0x4000 and a.uncorrectable_severity == 0x00062030
    assert a.correctable_status == 0x2000 and a.correctable_mask == 0x2000
    assert a.uncorrectable_errors == ["Completion Timeout"]
    assert a.correctable_errors == ["Advisory Non-Fatal"]


# --------------------------------------------------------------------------- names and describe
def test_capability_names():
    assert cap_name(0x01) == "Power Management"
    assert cap_name(0x10) == "PCI Express"
    assert cap_name(0x15) == "Flattening Portal Bridge"
    assert cap_name(0x7e).startswith("Unknown")
    assert ext_cap_name(0x0d) == "Access Control Services"
    assert ext_cap_name(0x23) == "Designated Vendor-Specific"
    assert ext_cap_name(0x26) == "Physical Layer 16.0 GT/s"
    assert ext_cap_name(0x1234).startswith("Unknown")


def test_describe_nvme():
    lines = PciConfig(qemu_nvme()).describe()
    assert lines[0] == "vendor 1b36 device 0010 revision 02"
    assert lines[1] == "class 010802 (Mass storage controller)"
    assert "subsystem 1af4:1100" in lines
    assert "command 0x0002: memory" in lines
    assert "status 0x0010: cap-list" in lines
    assert "interrupt pin INTA#, line 10" in lines
    assert "BAR0: mem64 at 0xfebd0000" in lines
    i = lines.index("capabilities:")
    assert lines[i + 1] == ("  [40] MSI-X: enabled no, function mask no, 65 vectors, "
                            "table BAR0+0x2000, PBA BAR0+0x3000")
    assert lines[i + 2].startswith("  [80] PCI Express: version 2 endpoint")
    assert "link 2.5 GT/s x1" in lines[i + 2]
    assert lines[i + 3].startswith("  [60] Power Management: version 3, state D0")
    assert "extended capabilities:" not in lines


def test_describe_nic_extended():
    lines = PciConfig(intel_nic()).describe()
    assert "header type 0 (endpoint), multi-function" in lines
    assert "BAR2: io at 0xe020" in lines
    i = lines.index("extended capabilities:")
    assert lines[i + 1].startswith("  [100] Advanced Error Reporting v2:")
    assert "Completion Timeout" in lines[i + 1]
    assert lines[i + 2] == "  [140] Device Serial Number v1: serial 00-1b-21-ff-ff-12-34-56"
    assert lines[i + 3].startswith("  [160] Single Root I/O Virtualization v1: VFs 0/7")


def test_describe_reports_a_malformed_list_instead_of_raising():
    s = edu().cap(0x40, lib.PCI_CAP_ID_MSI, 0x40)
    lines = PciConfig(s).describe()
    assert any(line.startswith("capabilities: malformed list") for line in lines)


def test_from_bytes_over_a_dump():
    cfg = PciConfig.from_bytes(bytes(qemu_nvme().data))
    assert cfg.size == 4096
    assert cfg.msix().table_size == 65
    cfg.bus_master = True
    assert cfg.command == 0x0006
