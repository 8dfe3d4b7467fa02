"""Every MMIO access reaches the device exactly once, at its width.

On the real kernel (lab guests) the device's side effects are counted: N
"raise interrupt" writes to edu give exactly N MSIs, and e1000e's
read-to-clear ICR returns a forced cause on the first 32-bit read and 0 on
the second.  On the host the mock edu logs each access it sees, so the
accesses themselves are counted.
"""
from __future__ import annotations

import time

import pytest

from support import open_path as _open, require_vfio_path
from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.drivers.edu import IRQ_ACK, IRQ_RAISE, IRQ_STATUS, Edu

pytestmark = pytest.mark.device

RAISES = 16




def _model(vfio_edu):
    return vfio_edu.mock.pci.models[0] if vfio_edu.target.kind == "mock" else None


def _collect(irq, expected: int, settle: float = 0.3) -> int:
    """Interrupts counted until ``expected`` arrived (or 10 s), then ``settle`` s more."""
    total = 0
    deadline = time.monotonic() + 10
    while total < expected and time.monotonic() < deadline:
        try:
            total += irq.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except errors.TimedOutError:
            break
    time.sleep(settle)
    return total + irq.pending()


@pytest.mark.parametrize("mapped", [True, False], ids=["mmap", "pwrite"])
def test_n_raise_writes_give_exactly_n_msis(edu, vfio_edu, mapped):
    bar = edu.bar
    if not mapped:
        bar.munmap()                         # the same writes through pwrite
    msi = edu.device.msi
    msi.enable()
    model = _model(vfio_edu)
    if model is not None:
        model.accesses.clear()
        sent = model.msi_sent
    for i in range(RAISES):
        bar.write32(IRQ_RAISE, 1 << (i % 8))
    assert _collect(msi, RAISES) == RAISES
    assert bar.read32(IRQ_STATUS) == 0xFF
    bar.write32(IRQ_ACK, 0xFF)
    assert bar.read32(IRQ_STATUS) == 0
    if model is not None:
        assert model.msi_sent - sent == RAISES
        assert [(a.op, a.offset, a.size) for a in model.accesses] == (
            [("write", IRQ_RAISE, 4)] * RAISES
            + [("read", IRQ_STATUS, 4), ("write", IRQ_ACK, 4), ("read", IRQ_STATUS, 4)])
    msi.disable()


@pytest.mark.parametrize("mapped", [True, False], ids=["mmap", "pread"])
def test_bulk_accesses_have_the_stated_width(edu, vfio_edu, mapped):
    bar = edu.bar
    if not mapped:
        bar.munmap()
    model = _model(vfio_edu)
    edu.liveness(0x12345678)
    if model is not None:
        model.accesses.clear()
    # two 32-bit loads: the identification and the (inverted) liveness register
    data = bar.read(0x00, 8, width=4)
    order = bar.endian          # bulk accesses keep the device's byte order (edu's is QEMU's)
    assert data == (0x010000ED).to_bytes(4, order) + (0xEDCBA987).to_bytes(4, order)
    # edu's DMA registers take 64-bit accesses: two 64-bit stores, two 64-bit loads
    regs = (0x40000).to_bytes(8, order) + (0x1000).to_bytes(8, order)
    bar.write(0x80, regs, width=8)
    assert bar.read(0x80, 16, width=8) == regs
    assert (bar.read64(0x80), bar.read64(0x88)) == (0x40000, 0x1000)
    if model is not None:
        assert [(a.op, a.offset, a.size) for a in model.accesses] == [
            ("read", 0x00, 4), ("read", 0x04, 4),
            ("write", 0x80, 8), ("write", 0x88, 8),
            ("read", 0x80, 8), ("read", 0x88, 8),
            ("read", 0x80, 8), ("read", 0x88, 8)]


def test_typed_accesses_are_one_access_each_on_the_mock(edu, vfio_edu):
    model = _model(vfio_edu)
    if model is None:
        pytest.skip("the mock logs each access; the real device's effects are counted above")
    model.accesses.clear()
    edu.bar.write32(0x04, 1)
    edu.bar.read32(0x04)
    edu.bar.write64(0x90, 8)
    edu.bar.read64(0x90)
    edu.bar.read16(0x00)
    edu.bar.read8(0x00)
    assert [(a.op, a.offset, a.size, a.value) for a in model.accesses] == [
        ("write", 0x04, 4, 1), ("read", 0x04, 4, 0xFFFFFFFE),
        ("write", 0x90, 8, 8), ("read", 0x90, 8, 8),
        ("read", 0x00, 2, 0), ("read", 0x00, 1, 0)]     # edu reads narrow accesses as 0


# -- e1000e: a read-to-clear register ------------------------------------------------------------

E1000E = (0x8086, 0x10D3)
ICR, ICS, IMC = 0x00C0, 0x00C8, 0x00D8
ICR_LSC, ICR_RXDMT0 = 0x04, 0x10
ICR_INT_ASSERTED = 1 << 31                  # set along with any cause
CAUSE = ICR_LSC | ICR_RXDMT0


@pytest.fixture(params=["container", "iommufd", "noiommu"])
def e1000e(request, lab_target):
    if lab_target.kind != "real":
        pytest.skip("QEMU's e1000e runs in the lab guests; the mock has edu only "
                    "(its accesses are counted above)")
    from pyvfio import pci
    nics = pci.find(vendor=E1000E[0], device=E1000E[1])
    if not nics:
        pytest.skip("the guest has no e1000e")
    require_vfio_path(request.param, lab_target)
    before = syscalls.open_fds()
    with nics[0].bound("vfio-pci"):
        dev = _open(nics[0].name, request.param)
        try:
            yield dev
        finally:
            dev.close()
    assert syscalls.open_fds() == before
    assert syscalls.live_mappings() == []


@pytest.mark.parametrize("mapped", [True, False], ids=["mmap", "pread"])
def test_e1000e_icr_reads_the_cause_once_then_zero(e1000e, mapped):
    e1000e.config.enable(memory=True)
    bar = e1000e.bar(0)
    if not mapped:
        bar.munmap()
    bar.write32(IMC, 0xFFFFFFFF)             # no cause may assert the interrupt
    bar.read32(ICR)                          # clear what the host driver left
    assert bar.read32(ICR) == 0
    bar.write32(ICS, CAUSE)                  # force the causes
    assert bar.read32(ICR) == ICR_INT_ASSERTED | CAUSE   # the first read returns them, clears
    assert bar.read32(ICR) == 0
    bar.write32(ICS, CAUSE)
    # a bulk read of stated width 4: one 32-bit load
    assert bar.read(ICR, 4, width=4) == (ICR_INT_ASSERTED | CAUSE).to_bytes(4, "little")
    assert bar.read32(ICR) == 0
