"""Bad input to the KVM objects: each refused with a specific error, nothing leaked.

vCPU and VM cases run on the real kernel (the host's /dev/kvm, or a lab
guest's with nested KVM); register-id checks are the library's own and
happen before any system call.
"""
from __future__ import annotations

import errno
import os

import pytest

from pyvfio import errors
from pyvfio.core.eventfd import EventFd
from pyvfio.core.memory import DmaBuffer
from pyvfio.kvm import regs
from pyvfio.kvm.regs import arm64, loongarch, riscv, x86

@pytest.fixture
def vcpu(real_kvm):
    with real_kvm.create_vm() as vm:
        yield vm.create_vcpu(0)


@pytest.mark.device
def test_wrong_size_for_the_register(vcpu):
    u64 = arm64.sysreg_named("MDSCR_EL1")
    with pytest.raises(errors.RegisterIdError, match="is 8 bytes, the buffer 4") as e:
        vcpu.get_reg(u64, into=bytearray(4))
    assert e.value.device == vcpu.name and e.value.op == "KVM_GET_ONE_REG" and e.value.remedy
    with pytest.raises(errors.RegisterIdError, match="is 8 bytes, the value 16"):
        vcpu.set_reg(u64, bytes(16))
    with pytest.raises(errors.RegisterIdError, match="does not fit"):
        vcpu.set_reg(arm64.core("fpsr"), 1 << 32)             # a 32-bit register
    with pytest.raises(errors.RegisterIdError, match="is 256 bytes, the value 255"):
        vcpu.set_reg(arm64.sve_zreg(0), bytes(255))
    with pytest.raises(errors.RegisterIdError, match="encodes no valid size"):
        vcpu.get_reg(0x6090000000000000)                      # size field 9


def test_unknown_register_names():
    with pytest.raises(errors.RegisterIdError, match="no arm64 system register named 'DBGBCR16_EL1'"):
        arm64.sysreg_named("DBGBCR16_EL1")
    with pytest.raises(errors.RegisterIdError, match="no arm64 core register 'x31'"):
        arm64.core("x31")
    with pytest.raises(errors.RegisterIdError, match="no LoongArch CSR named 'CPUIDX'") as e:
        loongarch.csr("CPUIDX")
    assert "CPUID" in e.value.remedy
    with pytest.raises(errors.RegisterIdError, match="no riscv64 core register 'x5'"):
        riscv.core("x5")
    with pytest.raises(errors.RegisterIdError, match="op0 must be 0..3"):
        arm64.sysreg(4, 0, 0, 0, 0)
    with pytest.raises(errors.RegisterIdError):
        arm64.dbgbcr(16)


@pytest.mark.device
def test_kernel_refusal_names_the_register(vcpu):
    """An id of another architecture: the kernel's EINVAL, the register in words."""
    if os.uname().machine == "aarch64":
        rid, words = riscv.csr("sepc"), "riscv64 csr sepc, 64-bit"
    else:
        rid, words = arm64.sysreg_named("DBGBCR3_EL1"), "arm64 sysreg DBGBCR3_EL1 (2,0,0,3,5), 64-bit"
    with pytest.raises(errors.InvalidArgumentError) as e:
        vcpu.get_reg(rid)
    assert e.value.errno == errno.EINVAL
    assert e.value.op == "KVM_GET_ONE_REG"
    assert words in str(e.value) and e.value.remedy


@pytest.mark.device
def test_vcpu_of_a_closed_vm(real_kvm):
    vm = real_kvm.create_vm()
    v = vm.create_vcpu(0)
    vm.close()
    assert v.closed
    with pytest.raises(errors.ClosedError, match="its VM was closed") as e:
        v.run()
    assert e.value.errno == errno.EBADF and e.value.device == v.name
    with pytest.raises(errors.ClosedError, match="its VM was closed"):
        v.get_reg(x86.msr(0x174))
    with pytest.raises(errors.ClosedError):
        vm.create_vcpu(1)


@pytest.mark.device
def test_irqfd_on_a_closed_eventfd(real_kvm):
    with real_kvm.create_vm() as vm:
        if os.uname().machine == "x86_64":
            vm.create_irqchip()
        efd = EventFd("irqfd")
        efd.close()
        with pytest.raises(errors.ClosedError, match="EventFd irqfd is closed"):
            vm.register_irqfd(efd, 4)
        with pytest.raises(errors.ClosedError):
            vm.register_ioevent(efd, 0x10000, 4)
        assert vm._irqfds == {} and vm._ioevents == {}


@pytest.mark.device
def test_memory_region_checks(real_kvm):
    with real_kvm.create_vm() as vm, DmaBuffer(0x3000) as mem:
        with pytest.raises(errors.InvalidArgumentError, match="page-aligned"):
            vm.set_user_memory_region(0, 0x800, mem)
        with pytest.raises(errors.InvalidArgumentError):
            vm.set_user_memory_region(0, 0, mem, offset=0x1000, size=0x3000)
        with pytest.raises(errors.NotFoundError, match="no memory slot 3"):
            vm.delete_user_memory_region(3)
        assert vm.regions == {}


def test_describe_x86_msr():
    assert regs.describe(x86.msr(0x174)) == "x86 msr 0x174, 64-bit"
