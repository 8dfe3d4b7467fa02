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
        v = vm.create_vcpu(0)
        if os.uname().machine == "aarch64":
            v.arm_vcpu_init()               # arm64 answers ONE_REG only after KVM_ARM_VCPU_INIT
        yield v


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


@pytest.mark.device
def test_device_type_the_kernel_lacks(real_kvm):
    from pyvfio.core.uapi import lib
    foreign = lib.KVM_DEV_TYPE_ARM_VGIC_V3 if os.uname().machine == "x86_64" \
        else lib.KVM_DEV_TYPE_FSL_MPIC_20
    with real_kvm.create_vm() as vm:
        assert vm.create_device(lib.KVM_DEV_TYPE_VFIO, test=True) is None
        with pytest.raises(errors.NotSupportedError, match="has no KVM_DEV_TYPE_") as e:
            vm.create_device(foreign)
        assert e.value.errno == errno.ENODEV and e.value.op == "KVM_CREATE_DEVICE"
        assert vm.devices == []


def test_every_onereg_size_round_trips(mock_kvm, monkeypatch):
    """get_reg/set_reg marshal every size an id encodes (U8..U2048): ints up to 64 bits,
    bytes above.  The kernel side is a stand-in that stores whatever size it is given
    (no kernel here has registers of every size)."""
    from pyvfio.core.uapi import ffi, lib
    from pyvfio.kvm import Kvm
    from pyvfio.mock import kvm as mock_kvm_mod
    from pyvfio.mock.core.uaccess import copy_from_user, read_user, write_user
    store = {}

    def ioctl(self, cmd, addr):
        one = copy_from_user(addr, "struct kvm_one_reg")
        n = regs.size_of(one.id)
        if cmd == lib.KVM_SET_ONE_REG:
            store[one.id] = read_user(one.addr, n)
        else:
            write_user(one.addr, store[one.id])
        return 0
    monkeypatch.setattr(mock_kvm_mod._VcpuFile, "ioctl", ioctl)
    with Kvm() as kvm, kvm.create_vm() as vm:
        v = vm.create_vcpu(0)
        for bits in (8, 16, 32, 64, 128, 256, 512, 1024, 2048):
            rid = 0x9000000000000000 | regs.size_field(bits) | bits
            if bits <= 64:
                value = (1 << bits) - 3
                v.set_reg(rid, value)
                assert v.get_reg(rid) == value
                assert store[rid] == value.to_bytes(bits // 8, "little")
            else:
                value = bytes((i * 7 + bits) & 0xFF for i in range(bits // 8))
                v.set_reg(rid, value)
                assert v.get_reg(rid) == value
                buf = bytearray(bits // 8)
                assert v.get_reg(rid, into=buf) == value and bytes(buf) == value
