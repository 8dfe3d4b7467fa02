"""arm64 debug registers and PC through ONE_REG, for real in an arm64 lab guest.

These need an arm64 machine with /dev/kvm: the lab's aarch64 guest
(``pyvfio lab run --arch aarch64``: QEMU ``virt,virtualization=on`` with
``-cpu max`` under TCG, nested KVM) with the binding built for arm64.
Everywhere else they skip.
"""
from __future__ import annotations

import errno
import os

import pytest

from pyvfio import errors
from pyvfio.core.memory import DmaBuffer
from pyvfio.core.uapi import lib
from pyvfio.kvm import regs
from pyvfio.kvm.regs import arm64

pytestmark = [pytest.mark.device,
              pytest.mark.skipif(os.uname().machine != "aarch64",
                                 reason="arm64 KVM: runs in the aarch64 lab guest")]

ID_AA64DFR0_EL1 = arm64.sysreg_named("ID_AA64DFR0_EL1")
MDSCR_EL1 = arm64.sysreg_named("MDSCR_EL1")


@pytest.fixture
def vcpu(real_kvm):
    with real_kvm.create_vm() as vm:
        v = vm.create_vcpu(0)
        v.arm_vcpu_init(features=[lib.KVM_ARM_VCPU_PSCI_0_2])
        yield v


def _counts(vcpu):
    dfr0 = vcpu.get_reg(ID_AA64DFR0_EL1)
    return ((dfr0 >> 12) & 0xF) + 1, ((dfr0 >> 20) & 0xF) + 1     # BRPs, WRPs (field + 1)


def test_reg_list_has_the_implemented_debug_registers(vcpu):
    listed = set(vcpu.reg_list())
    brps, wrps = _counts(vcpu)
    assert 2 <= brps <= 16 and 2 <= wrps <= 16
    want = {MDSCR_EL1}
    want |= {arm64.dbgbcr(n) for n in range(brps)} | {arm64.dbgbvr(n) for n in range(brps)}
    want |= {arm64.dbgwcr(n) for n in range(wrps)} | {arm64.dbgwvr(n) for n in range(wrps)}
    missing = sorted(regs.describe(r) for r in want - listed)
    assert missing == []
    assert all(regs.size_of(r) == 8 for r in want)


def test_breakpoint_and_watchpoint_read_back(vcpu):
    brps, wrps = _counts(vcpu)
    values = {arm64.dbgbvr(0): 0x400000, arm64.dbgbcr(0): 0x1E7,     # E, PMC=EL1+EL0, BAS=0xf
              arm64.dbgwvr(0): 0x10000000, arm64.dbgwcr(0): 0x1FF7,  # E, PAC, LSC=store, BAS=0xff
              arm64.dbgbcr(brps - 1): 0x1E7, arm64.dbgwvr(wrps - 1): 0x1000,
              MDSCR_EL1: 0xA000}                                     # MDE, KDE
    for rid, v in values.items():
        vcpu.set_reg(rid, v)
    assert {rid: vcpu.get_reg(rid) for rid in values} == values


def test_wide_and_narrow_core_registers(vcpu):
    """ONE_REG by the size the id encodes: V0 is 128-bit (bytes), FPSR 32-bit."""
    v0 = bytes(range(16))
    vcpu.set_reg(arm64.core("v0"), v0)
    assert vcpu.get_reg(arm64.core("v0")) == v0
    vcpu.set_reg(arm64.core("fpsr"), 0x08000000)            # QC
    assert vcpu.get_reg(arm64.core("fpsr")) == 0x08000000
    buf = bytearray(16)
    vcpu.get_reg(arm64.core("v0"), into=buf)
    assert bytes(buf) == v0


def test_debug_register_past_the_implemented_count(vcpu):
    """The kernel's answer, wrapped: an encoding that names no register is ENOENT.

    Linux 6.12 keeps 16 slots per kind whatever BRPs/WRPs say, so DBGBCR<BRPs>
    itself is accepted and reads back; the test pins that down too.
    """
    brps, _ = _counts(vcpu)
    no_such = arm64.sysreg(2, 0, 0, 0, 3)          # op0=2 CRm=0 op2=3: no debug register
    with pytest.raises(errors.NotFoundError) as e:
        vcpu.get_reg(no_such)
    assert e.value.errno == errno.ENOENT and e.value.op == "KVM_GET_ONE_REG"
    assert "arm64 sysreg (2,0,0,0,3), 64-bit" in str(e.value) and e.value.remedy
    with pytest.raises(errors.NotFoundError):
        vcpu.set_reg(no_such, 1)
    if brps < 16:
        past = arm64.dbgbcr(brps)
        vcpu.set_reg(past, 0x1E5)
        assert vcpu.get_reg(past) == 0x1E5


def test_pc_through_one_reg_runs_to_mmio(vcpu, alarm):
    code = [0xD2A20000,            # movz x0, #0x1000, lsl #16   (x0 = 0x10000000)
            0xD2800841,            # movz x1, #0x42
            0xF9000001,            # str  x1, [x0]               (MMIO write, 8 bytes)
            0x14000000]            # b    .
    with DmaBuffer(0x10000) as mem:
        mem.write(0x100, b"".join(c.to_bytes(4, "little") for c in code))
        vcpu.vm.set_user_memory_region(0, 0x100000, mem)
        vcpu.set_reg(arm64.core("pc"), 0x100100)
        assert vcpu.get_reg(arm64.core("pc")) == 0x100100
        alarm(120)
        ex = vcpu.run()
        alarm(0)
        assert (ex.name, ex.address, ex.length, ex.is_write, ex.value) == \
            ("MMIO", 0x10000000, 8, True, 0x42)
        assert vcpu.get_reg(arm64.core("x1")) == 0x42
        vcpu.vm.delete_user_memory_region(0)


def test_ioeventfd_counts_mmio_writes_without_exit(vcpu, alarm):
    """N stores of the matching value complete in the kernel; the other one exits."""
    from pyvfio.core.eventfd import EventFd
    n = 7
    code = [0xD2A20000,             # movz x0, #0x1000, lsl #16   (x0 = 0x10000000)
            0xD2800841,             # movz x1, #0x42
            0xD2800002 | n << 5,    # movz x2, #n
            0xF9000001,             # loop: str x1, [x0]
            0xF1000442,             # subs x2, x2, #1
            0x54FFFFC1,             # b.ne loop
            0xD2801321,             # movz x1, #0x99
            0xF9000001,             # str x1, [x0]
            0x14000000]             # b .
    with DmaBuffer(0x10000) as mem, EventFd("ioeventfd") as efd:
        mem.write(0x100, b"".join(c.to_bytes(4, "little") for c in code))
        vcpu.vm.set_user_memory_region(0, 0x100000, mem)
        vcpu.vm.register_ioevent(efd, 0x10000000, 8, datamatch=0x42)
        vcpu.set_reg(arm64.core("pc"), 0x100100)
        alarm(120)
        ex = vcpu.run()
        alarm(0)
        assert (ex.name, ex.address, ex.length, ex.value) == ("MMIO", 0x10000000, 8, 0x99)
        assert efd.pending() == n
        vcpu.vm.unregister_ioevent(efd, 0x10000000, 8, datamatch=0x42)
        vcpu.vm.delete_user_memory_region(0)
