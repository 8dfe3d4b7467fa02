"""regs.describe turns every id the builders make back into the name it was built from."""
from __future__ import annotations

import pytest

from pyvfio.kvm import regs
from pyvfio.kvm.regs import arm64, loongarch, riscv

pytestmark = pytest.mark.host


def test_arm64_names_round_trip():
    for name in arm64.CORE_NAMES:
        assert regs.describe(arm64.core(name)).startswith(f"arm64 core {name}, ")
    for name, enc in arm64.SYSREGS.items():
        words = f"arm64 sysreg {name} ({','.join(map(str, enc))}), 64-bit"
        assert regs.describe(arm64.sysreg_named(name)) == words
    assert regs.describe(arm64.core("v7")) == "arm64 core v7, 128-bit"
    assert regs.describe(arm64.core("fpcr")) == "arm64 core fpcr, 32-bit"
    assert regs.describe(arm64.fw("PSCI_VERSION")) == "arm64 firmware PSCI_VERSION, 64-bit"
    assert regs.describe(arm64.sysreg(3, 1, 15, 2, 0)) == "arm64 sysreg (3,1,15,2,0), 64-bit"
    assert regs.describe(arm64.SVE_VLS) == "arm64 sve VLS, 512-bit"


def test_loongarch_and_riscv_names_round_trip():
    for name, num in loongarch.CSRS.items():
        assert regs.describe(loongarch.csr(name)) == f"loongarch csr {name} ({num:#x}), 64-bit"
    assert regs.describe(loongarch.cpucfg(2)) == "loongarch cpucfg 2, 64-bit"
    assert regs.describe(loongarch.gpr("r4")) == "loongarch gpr r4, 64-bit"
    for name in riscv.CORE_REGS:
        assert regs.describe(riscv.core(name)) == f"riscv64 core {name}, 64-bit"
    assert regs.describe(riscv.csr("siph", "aia")) == "riscv64 csr aia siph, 64-bit"


def test_sizes():
    assert [regs.size_of(regs.SIZES[b]) for b in sorted(regs.SIZES)] == \
        [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert regs.arch_of(0x6030000000138012) == "arm64"
