"""QEMU's emulated NVMe controller driven from userspace through VFIO.

The device tests reset the controller, run the admin queue in DMA memory
and wait for completions on MSI-X vector 0: Identify Controller, the active
namespace list, Identify Namespace, a failing command, normal shutdown.
They run in lab guests started with ``--device nvme`` (the lab names each
controller ``pyvfio-nvme<i>``, ``i`` its place in the device list), through
the VFIO container, iommufd when the kernel has it, and no-IOMMU mode in a
guest without IOMMU.  The mock has no NVMe model: on the host they skip.

The decoding tests (no marker) run on the host only.
"""
from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest
from support import require_vfio_path

from pyvfio import errors, pci

from pyvfio.core import syscalls
from pyvfio.vfio.open import open_device
from pyvfio.drivers import nvme as nv
from pyvfio.drivers.nvme import Capabilities, Completion, Nvme, NvmeError, status_text

NVME_ID = (0x1B36, 0x0010)                     # QEMU's NVMe controller
FIRST_SLOT = 0x10                              # the lab puts device i at slot 0x10 + i
NAMESPACE_BYTES = 64 << 20                     # the lab's scratch image per controller
VFIO_PATHS = ("container", "iommufd", "noiommu")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(params=VFIO_PATHS)
def nvme_dev(request, lab_target):
    """The first emulated NVMe controller, bound to vfio-pci for the test."""
    path = request.param
    if lab_target.kind != "real":
        pytest.skip("no NVMe model in the mock: runs in lab guests (--device nvme)")
    found = pci.find(vendor=NVME_ID[0], device=NVME_ID[1])
    if not found:
        pytest.skip("the guest has no emulated NVMe controller (lab run --device nvme)")
    require_vfio_path(path, lab_target)
    dev = found[0]
    with dev.bound("vfio-pci"):
        yield SimpleNamespace(path=path, pci=dev, index=dev.address.slot - FIRST_SLOT)


def _open(nvme_dev):
    if nvme_dev.path == "noiommu":
        return open_device(nvme_dev.pci.name, iommu="container", allow_noiommu=True)
    return open_device(nvme_dev.pci.name, iommu=nvme_dev.path)


@pytest.fixture
def device(nvme_dev):
    """The controller opened through VFIO; closing it must release every fd and mapping."""
    fds, maps = syscalls.open_fds(), syscalls.live_mappings()
    dev = _open(nvme_dev)
    try:
        yield dev
    finally:
        dev.close()
    assert syscalls.open_fds() == fds
    assert syscalls.live_mappings() == maps


@pytest.fixture
def ctrl(device):
    with Nvme(device) as c:
        yield c


# --------------------------------------------------------------------------- device tests
@pytest.mark.device
def test_identify_controller_by_dma_with_msix_completion(ctrl, nvme_dev):
    assert ctrl.version >= (1, 0, 0)
    assert ctrl.cap.doorbell_stride >= 4 and ctrl.cap.timeout > 0
    assert ctrl.device.msix.eventfds, "MSI-X vector 0 is connected"
    info = ctrl.identify_controller()
    assert info.model.startswith("QEMU NVMe Ctrl")
    assert info.serial == f"pyvfio-nvme{nvme_dev.index}"
    assert info.vendor_id == NVME_ID[0]
    assert info.firmware                       # QEMU's version
    assert info.namespaces >= 1
    assert ctrl.interrupts == 1                # the one completion came by MSI-X
    if ctrl.device.dma is not None:
        assert len(ctrl.device.dma.mappings) == 3      # SQ, CQ, data page


@pytest.mark.device
def test_namespace_list_and_namespace_1(ctrl):
    assert 1 in ctrl.active_namespaces()
    ns = ctrl.identify_namespace(1)
    assert ns.nsid == 1 and ns.block_size in (512, 4096)
    assert ns.size * ns.block_size == NAMESPACE_BYTES
    assert ns.capacity == ns.size
    before = ctrl.interrupts
    ctrl.identify_controller()
    assert ctrl.interrupts == before + 1       # every command completes by one interrupt


@pytest.mark.device
def test_failed_command_decodes_its_status(ctrl):
    with pytest.raises(NvmeError) as ei:
        ctrl.identify_namespace(0xFFFFFFFE)    # no such namespace
    e = ei.value
    assert (e.sct, e.sc) in ((0, 0x0B), (0, 0x02))  # Invalid Namespace or Format / Field
    assert e.opcode == nv.OPC_IDENTIFY and isinstance(e, errors.PyvfioError)
    assert "Identify (opcode 0x06) failed: Invalid" in str(e) and ctrl.name in str(e)
    with pytest.raises(NvmeError) as ei:
        ctrl.admin(0xC1)                       # a vendor-specific opcode QEMU lacks
    assert (ei.value.sct, ei.value.sc) == (0, 0x01)
    assert "Invalid Command Opcode" in str(ei.value)
    assert ctrl.identify_controller().vendor_id == NVME_ID[0]   # the queue still works


@pytest.mark.device
def test_many_commands_wrap_the_queues(device):
    with Nvme(device, queue_depth=4) as c:     # phase flips every 4 completions
        assert c.depth == 4
        serials = {c.identify_controller().serial for _ in range(11)}
        assert len(serials) == 1
        assert c.interrupts == 11


@pytest.mark.device
def test_polled_completions_without_interrupts(device):
    with Nvme(device, interrupts=False) as c:
        assert device.msix.eventfds == []
        assert c.identify_controller().vendor_id == NVME_ID[0]
        assert c.interrupts == 0


@pytest.mark.device
def test_shutdown_then_close_then_reinitialise(device):
    c = Nvme(device)
    c.identify_controller()
    c.shutdown()
    assert (c.csts & nv.CSTS_SHST_MASK) >> nv.CSTS_SHST_SHIFT == nv.SHST_COMPLETE
    c.close()
    assert c.closed and not c.csts & nv.CSTS_RDY        # disabled: no DMA into freed queues
    assert device.msix.eventfds == []
    if device.dma is not None:
        assert device.dma.mappings == []
    with pytest.raises(errors.ClosedError):
        c.identify_controller()
    c.close()                                  # closing twice is harmless
    with Nvme(device) as again:                # a fresh driver resets and starts over
        assert again.identify_controller().serial.startswith("pyvfio-nvme")


# --------------------------------------------------------------------------- decoding (host)
def test_status_text():
    assert status_text(0, 0x02) == "Invalid Field in Command"
    assert status_text(1, 0x01) == "Invalid Queue Identifier"
    assert status_text(2, 0x81) == "Unrecovered Read Error"
    assert status_text(7, 0x10) == "Vendor Specific: status code 0x10"
    assert status_text(5, 0x01) == "status code type 0x5: status code 0x01"


def test_completion_decode():
    status = 1 << 14 | 1 << 8 | 0x02           # DNR, SCT 1, SC 2
    raw = struct.pack("<4I", 0xABCD, 0, 7 | 3 << 16, 0x1234 | 1 << 16 | status << 17)
    c = Completion.decode(raw)
    assert (c.result, c.sq_head, c.sq_id, c.cid, c.phase) == (0xABCD, 7, 3, 0x1234, 1)
    assert (c.sct, c.sc, c.dnr, c.more, c.ok) == (1, 2, True, False, False)


def test_capabilities_decode():
    cap = 0x7FF | 1 << 16 | 0x0F << 24 | 2 << 32 | 1 << 37 | 0 << 48 | 4 << 52
    c = Capabilities.decode(cap)
    assert c.max_queue_entries == 2048 and c.contiguous_queues
    assert c.timeout == 7.5 and c.doorbell_stride == 16
    assert c.command_sets == 1 and c.page_size_min == 4096 and c.page_size_max == 65536


def test_identify_decoding():
    data = bytearray(4096)
    struct.pack_into("<HH", data, 0, 0x1B36, 0x1AF4)
    data[4:24] = b"pyvfio-nvme3".ljust(20)
    data[24:64] = b"QEMU NVMe Ctrl".ljust(40)
    data[64:72] = b"10.0.2".ljust(8)
    struct.pack_into("<HI", data, 78, 5, 0x00010400)
    struct.pack_into("<I", data, 516, 256)
    info = nv.ControllerInfo.decode(bytes(data))
    assert (info.vendor_id, info.serial, info.model, info.firmware) == (
        0x1B36, "pyvfio-nvme3", "QEMU NVMe Ctrl", "10.0.2")
    assert info.version == (1, 4, 0) and info.controller_id == 5 and info.namespaces == 256

    ns = bytearray(4096)
    struct.pack_into("<3Q", ns, 0, 1000, 900, 10)
    ns[25], ns[26] = 1, 1                      # two formats, using the second
    struct.pack_into("<II", ns, 128, 9 << 16, 12 << 16 | 8)
    info_ns = nv.NamespaceInfo.decode(1, bytes(ns))
    assert (info_ns.size, info_ns.capacity, info_ns.utilization) == (1000, 900, 10)
    assert info_ns.block_size == 4096 and info_ns.lba_format.metadata_size == 8
    assert info_ns.size_bytes == 1000 * 4096
