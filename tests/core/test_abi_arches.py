"""The binding is the kernel's ABI on six architectures, not only this host's.

For each architecture the binding is built for it from the same generator and
run by that architecture's Python under qemu-user; the header test's C program
(:func:`pyvfio.lab.abi.probe_source`) is compiled by that architecture's
compiler and run under qemu-user too.  Every ioctl number, constant, struct
size and field offset must be equal.  x86-64 runs natively; arm64, ppc64le,
s390x (big-endian) and riscv64 use Debian's cross compilers and Debian's Python
(riscv64's from trixie, the first release with that port); loongarch64's C
program is built by zig (PyPI's ziglang) and its binding by the host compiler
over LoongArch's own asm/ headers, since no Debian release here has a
LoongArch Python.
"""
from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.host

ARCHES = ("x86_64", "aarch64", "ppc64le", "s390x", "riscv64", "loongarch64")

# Spot values that differ between architectures, from each one's _IOC encoding
# (POWER: 3 direction bits at 29, "none" = 1; the others: 2 bits at 30) and layouts.
EXPECTED = {
    "x86_64": {"VFIO_GET_API_VERSION": 0x3B64, "KVM_GET_ONE_REG": 0x4010AEAB,
               "KVM_RUN": 0xAE80},
    "aarch64": {"KVM_GET_ONE_REG": 0x4010AEAB, "KVM_ARM_VCPU_INIT": 0x4020AEAE,
                "KVM_REG_ARM64": 0x6000000000000000},
    "ppc64le": {"VFIO_GET_API_VERSION": 0x20003B64, "KVM_GET_ONE_REG": 0x8010AEAB,
                "VFIO_IOMMU_SPAPR_TCE_CREATE": 0x20003B77, "KVM_RUN": 0x2000AE80},
    "s390x": {"VFIO_GET_API_VERSION": 0x3B64, "KVM_S390_INTERRUPT": 0x4010AE94},
    "riscv64": {"KVM_GET_ONE_REG": 0x4010AEAB, "KVM_REG_RISCV": 0x8000000000000000},
    "loongarch64": {"KVM_GET_ONE_REG": 0x4010AEAB, "KVM_REG_LOONGARCH": 0x9000000000000000,
                    "KVM_GET_REGS": 0x8108AE81},
}
SIZES = {
    "aarch64": {"struct kvm_regs": 864, "struct user_pt_regs": 272},
    "loongarch64": {"struct kvm_regs": 264},
}


@pytest.fixture(scope="module")
def reports():
    if shutil.which("apt-get") is None:
        pytest.skip("the foreign Pythons come from Debian packages: needs apt-get")
    return {}


@pytest.mark.parametrize("arch", ARCHES)
def test_binding_equals_the_c_compiler(arch, reports, tmp_path):
    from pyvfio.lab import abi
    report = abi.check(arch, tmp_path)
    reports[arch] = report
    print(f"{arch}: {report.ioctls} ioctls, {report.constants} constants, "
          f"{report.structs} structs, {report.fields} field offsets equal ({report.how})")
    assert report.mismatches == []
    assert report.ioctls > 150 and report.constants > 1000
    assert report.structs > 150 and report.fields > 700
    for name, value in EXPECTED[arch].items():
        assert report.values[name] == value, name
    for name, size in SIZES.get(arch, {}).items():
        assert report.sizes[name] == size, name


def test_probe_program_round_trip():
    from pyvfio.lab.abi import parse_probe, probe_source
    src = probe_source("#include <linux/vfio.h>\n", ["VFIO_API_VERSION"],
                       ["struct vfio_iommu_type1_dma_map"],
                       [("struct vfio_iommu_type1_dma_map", "iova")])
    assert 'sizeof(struct vfio_iommu_type1_dma_map)' in src
    assert parse_probe("V X 1 18446744073709551615\nS struct a|16\nO struct a.b|8\n") == (
        {"X": -1}, {"struct a": 16}, {"struct a.b": 8})
