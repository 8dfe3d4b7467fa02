"""LoongArch physical CPUIDs through ONE_REG (CSR CPUID, 0x20), against the mock kernel.

No emulator on this machine runs LoongArch KVM (QEMU's loongarch64 system
emulation has no virtualization extension), so these run against pyvfio's
mock /dev/kvm, which models arch/loongarch/kvm/vcpu.c's kvm_set_cpuid of
Linux 6.12.  Each rule is checked twice: the library refuses first
(``set_physical_cpuid``), and the mock refuses the raw ONE_REG the same way.
"""
from __future__ import annotations

import errno

import pytest

from pyvfio import errors
from pyvfio.kvm import Kvm, regs
from pyvfio.kvm.regs import loongarch

pytestmark = pytest.mark.host

CPUID = loongarch.csr("CPUID")


@pytest.fixture
def vm(mock_kvm, leaks):
    with Kvm() as kvm, kvm.create_vm() as vm:
        yield vm


def test_cpuid_id_is_csr_0x20():
    assert CPUID == loongarch.csr(0x20) == 0x9030000000010100
    assert regs.describe(CPUID) == "loongarch csr CPUID (0x20), 64-bit"


def test_new_vcpu_takes_a_cpuid_and_same_value_again_is_a_noop(vm):
    v0, v1 = vm.create_vcpu(0), vm.create_vcpu(1)
    assert v0.get_reg(CPUID) == 256                  # "not set" (KVM_MAX_PHYID)
    v0.set_physical_cpuid(0)                         # unset -> 0
    v1.set_physical_cpuid(7)                         # unset -> n
    assert (v0.get_reg(CPUID), v1.get_reg(CPUID)) == (0, 7)
    v1.set_physical_cpuid(7)                         # the same value again: no-op
    v1.set_reg(CPUID, 7)                             # also for the kernel
    assert v1.get_reg(CPUID) == 7


def test_cpuid_256_refused(vm):
    v = vm.create_vcpu(0)
    with pytest.raises(errors.InvalidArgumentError, match=r"not below KVM_MAX_PHYID \(256\)") as e:
        v.set_physical_cpuid(256)
    assert e.value.errno == errno.EINVAL and e.value.remedy
    with pytest.raises(errors.InvalidArgumentError) as e:     # the kernel's own answer
        v.set_reg(CPUID, 256)
    assert e.value.errno == errno.EINVAL and e.value.op == "KVM_SET_ONE_REG"
    assert "csr CPUID" in str(e.value)
    assert v.get_reg(CPUID) == 256                            # unchanged


def test_duplicate_cpuid_refused(vm):
    v0, v1 = vm.create_vcpu(0), vm.create_vcpu(1)
    v0.set_physical_cpuid(3)
    with pytest.raises(errors.InvalidArgumentError, match="already belongs to vCPU 0") as e:
        v1.set_physical_cpuid(3)
    assert e.value.device == v1.name
    with pytest.raises(errors.InvalidArgumentError):
        v1.set_reg(CPUID, 3)
    assert v1.get_reg(CPUID) == 256


def test_changing_a_set_cpuid_refused(vm):
    v = vm.create_vcpu(0)
    v.set_physical_cpuid(5)
    with pytest.raises(errors.InvalidArgumentError, match="already has physical CPUID 5"):
        v.set_physical_cpuid(6)
    with pytest.raises(errors.InvalidArgumentError):
        v.set_reg(CPUID, 6)
    assert v.get_reg(CPUID) == 5


def test_cpuid_freed_when_its_vcpu_closes(vm):
    v0 = vm.create_vcpu(0)
    v0.set_physical_cpuid(9)
    v0.close()
    v1 = vm.create_vcpu(1)
    v1.set_physical_cpuid(9)
    assert v1.get_reg(CPUID) == 9


def test_counter_and_other_csrs(vm):
    v = vm.create_vcpu(0)
    v.set_reg(loongarch.COUNTER, 0x123456789)
    assert v.get_reg(loongarch.COUNTER) == 0x123456789
    v.set_reg(loongarch.csr("KS0"), 0xDEADBEEF)
    assert v.get_reg(loongarch.csr(0x30)) == 0xDEADBEEF


def test_loongarch_has_no_reg_list(vm):
    v = vm.create_vcpu(0)
    with pytest.raises(errors.NotSupportedError):
        v.reg_list()
