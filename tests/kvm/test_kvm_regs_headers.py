"""The register-id builders against each architecture's own headers, as gcc reads them.

One test per architecture.  The expected values are C expressions over the
headers' own macros (``ARM64_SYS_REG``, ``KVM_REG_ARM_CORE_REG``,
``KVM_IOC_CSRID``, ``KVM_REG_RISCV_CSR_REG`` ...) compiled with the host gcc
against that architecture's uAPI headers; register names are tied to
encodings by the kernel source's own definitions (arm64 ``asm/sysreg.h`` and
``tools/sysreg``, LoongArch ``asm/loongarch.h``), never by pyvfio's tables.
"""
from __future__ import annotations

import pytest

from pyvfio.kvm import regs
from pyvfio.kvm.regs import arm64, loongarch, riscv

from archheaders import c_values, source_defines, source_tree, uapi_include

pytestmark = pytest.mark.host


def _check(ours: dict, theirs: dict) -> None:
    wrong = {k: (hex(ours[k]), hex(theirs[k])) for k in ours if ours[k] != theirs[k]}
    assert not wrong, f"pyvfio vs header (name: (ours, header)): {wrong}"
    assert set(ours) == set(theirs)


def _arm64_sysreg_encodings(tree):
    """Name -> (op0, op1, CRn, CRm, op2) from the kernel's arm64 sysreg definitions."""
    enc = {}
    for name, *e in source_defines(tree / "arch/arm64/tools/sysreg",
                                   r"^Sysreg\s+(\w+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)"):
        enc[name] = tuple(int(x) for x in e)
    pat = r"^#define\s+SYS_(\w+?)(\(n\))?\s+sys_reg\((\d+),\s*(\d+),\s*(\d+),\s*(\w+),\s*(\d+)\)"
    for name, param, op0, op1, crn, crm, op2 in source_defines(
            tree / "arch/arm64/include/asm/sysreg.h", pat):
        if param:
            for n in range(16):
                enc[name.replace("n_", f"{n}_")] = (int(op0), int(op1), int(crn), n, int(op2))
        elif crm.isdigit():
            enc.setdefault(name, (int(op0), int(op1), int(crn), int(crm), int(op2)))
    return enc


def test_arm64_ids_equal_header_values():
    inc = uapi_include("arm64")                       # Debian linux-libc-dev 6.12, arm64 asm/
    tree = source_tree()
    kernel_enc = _arm64_sysreg_encodings(tree)
    ours, exprs = {}, {}
    for name in arm64.CORE_NAMES:
        if name.startswith("x"):
            field = f"regs.regs[{name[1:]}]"
        elif name in ("sp", "pc", "pstate"):
            field = f"regs.{name}"
        elif name.startswith("spsr"):
            field = f"spsr[{name[4:]}]"
        elif name.startswith("v"):
            field = f"fp_regs.vregs[{name[1:]}]"
        elif name in ("fpsr", "fpcr"):
            field = f"fp_regs.{name}"
        else:
            field = name
        size = f"sizeof(((struct kvm_regs *)0)->{field})"
        exprs[f"core.{name}"] = (
            f"KVM_REG_ARM64 | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG({field}) | "
            f"({size} == 4 ? KVM_REG_SIZE_U32 : {size} == 8 ? KVM_REG_SIZE_U64 : KVM_REG_SIZE_U128)")
        ours[f"core.{name}"] = arm64.core(name)
    # CNTVCT_EL0 has no SYS_ define in 6.12; the uAPI's KVM_REG_ARM_TIMER_CVAL is its encoding
    named = [n for n in arm64.SYSREGS if n != "CNTVCT_EL0"]
    missing = [n for n in named if n not in kernel_enc]
    assert not missing, f"registers the kernel source does not define: {missing}"
    for name in named:
        exprs[f"sysreg.{name}"] = "ARM64_SYS_REG({}, {}, {}, {}, {})".format(*kernel_enc[name])
        ours[f"sysreg.{name}"] = arm64.sysreg_named(name)
    for name in arm64.FIRMWARE:
        exprs[f"fw.{name}"] = f"KVM_REG_ARM_{name}"
        ours[f"fw.{name}"] = arm64.fw(name)
    for name in arm64.FW_FEAT_BMAPS:
        exprs[f"bmap.{name}"] = f"KVM_REG_ARM_{name}"
        ours[f"bmap.{name}"] = arm64.fw_feat_bmap(name)
    exprs.update({"sve.z3.1": "KVM_REG_ARM64_SVE_ZREG(3, 1)", "sve.p5.2": "KVM_REG_ARM64_SVE_PREG(5, 2)",
                  "sve.ffr1": "KVM_REG_ARM64_SVE_FFR(1)", "sve.vls": "KVM_REG_ARM64_SVE_VLS",
                  "timer.ctl": "KVM_REG_ARM_TIMER_CTL", "timer.cnt": "KVM_REG_ARM_TIMER_CNT",
                  "timer.cval": "KVM_REG_ARM_TIMER_CVAL",
                  "ccsidr2": "KVM_REG_ARM64 | KVM_REG_SIZE_U32 | KVM_REG_ARM_DEMUX | "
                             "KVM_REG_ARM_DEMUX_ID_CCSIDR | 2"})
    ours.update({"sve.z3.1": arm64.sve_zreg(3, 1), "sve.p5.2": arm64.sve_preg(5, 2),
                 "sve.ffr1": arm64.sve_ffr(1), "sve.vls": arm64.SVE_VLS,
                 # the uAPI's historical names: TIMER_CNT is CNTV_CVAL's encoding, TIMER_CVAL CNTVCT's
                 "timer.ctl": arm64.sysreg_named("CNTV_CTL_EL0"),
                 "timer.cnt": arm64.sysreg_named("CNTV_CVAL_EL0"),
                 "timer.cval": arm64.sysreg_named("CNTVCT_EL0"),
                 "ccsidr2": arm64.ccsidr(2)})
    theirs = c_values(inc, exprs)
    _check(ours, theirs)
    assert regs.describe(theirs["sysreg.DBGBCR3_EL1"]) == "arm64 sysreg DBGBCR3_EL1 (2,0,0,3,5), 64-bit"
    assert regs.describe(theirs["sve.z3.1"]) == "arm64 sve Z3 slice 1, 2048-bit"
    assert regs.size_of(theirs["sve.z3.1"]) == 256


def test_loongarch_ids_equal_header_values():
    inc = uapi_include("loongarch")                   # make ARCH=loongarch headers
    tree = source_tree()
    csr_nums = {name: int(v, 16) for name, v in source_defines(
        tree / "arch/loongarch/include/asm/loongarch.h",
        r"^#define\s+LOONGARCH_CSR_(\w+)\s+(0x[0-9a-fA-F]+)\b")}
    missing = [n for n in loongarch.CSRS if n not in csr_nums]
    assert not missing, f"CSRs the kernel source does not define: {missing}"
    ours, exprs = {}, {}
    for name in loongarch.CSRS:
        exprs[f"csr.{name}"] = f"KVM_IOC_CSRID({csr_nums[name]:#x})"
        ours[f"csr.{name}"] = loongarch.csr(name)
    for n in (0, 2, 6, 20):
        exprs[f"cpucfg{n}"] = f"KVM_IOC_CPUCFG({n})"
        ours[f"cpucfg{n}"] = loongarch.cpucfg(n)
    for n in (1, 4, 31):
        exprs[f"gpr{n}"] = f"LOONGARCH_REG_64(KVM_REG_LOONGARCH_GPR, {n})"
        ours[f"gpr{n}"] = loongarch.gpr(n)
    for name in loongarch.LBT_REGS:
        exprs[f"lbt.{name}"] = f"KVM_REG_LOONGARCH_LBT_{name}"
        ours[f"lbt.{name}"] = loongarch.lbt(name)
    exprs.update({"counter": "KVM_REG_LOONGARCH_COUNTER", "reset": "KVM_REG_LOONGARCH_VCPU_RESET",
                  "debug_inst": "KVM_REG_LOONGARCH_DEBUG_INST", "cpuid_by_number": "KVM_IOC_CSRID(0x20)"})
    ours.update({"counter": loongarch.COUNTER, "reset": loongarch.VCPU_RESET,
                 "debug_inst": loongarch.DEBUG_INST, "cpuid_by_number": loongarch.csr(0x20)})
    theirs = c_values(inc, exprs)
    _check(ours, theirs)
    assert theirs["csr.CPUID"] == 0x9030000000010100
    assert regs.describe(theirs["csr.CPUID"]) == "loongarch csr CPUID (0x20), 64-bit"
    assert regs.describe(theirs["counter"]) == "loongarch kvm COUNTER, 64-bit"
    kvm_host = tree / "arch/loongarch/include/asm/kvm_host.h"
    phyid, = source_defines(kvm_host, r"^#define\s+KVM_MAX_PHYID\s+(\d+)")
    assert loongarch.KVM_MAX_PHYID == int(phyid) == 256


def test_riscv64_ids_equal_header_values():
    inc = uapi_include("riscv")                       # make ARCH=riscv headers
    ours, exprs = {}, {}
    base = "KVM_REG_RISCV | KVM_REG_SIZE_U64"
    for name in riscv.CONFIG_REGS:
        exprs[f"config.{name}"] = f"{base} | KVM_REG_RISCV_CONFIG | KVM_REG_RISCV_CONFIG_REG({name})"
        ours[f"config.{name}"] = riscv.config(name)
    for name in riscv.CORE_REGS:
        field = name if name == "mode" else f"regs.{name}"
        exprs[f"core.{name}"] = f"{base} | KVM_REG_RISCV_CORE | KVM_REG_RISCV_CORE_REG({field})"
        ours[f"core.{name}"] = riscv.core(name)
    for name in riscv.CSR_REGS:
        exprs[f"csr.{name}"] = (f"{base} | KVM_REG_RISCV_CSR | KVM_REG_RISCV_CSR_GENERAL | "
                                f"KVM_REG_RISCV_CSR_REG({name})")
        ours[f"csr.{name}"] = riscv.csr(name)
    for name in riscv.AIA_CSR_REGS:
        exprs[f"aia.{name}"] = (f"{base} | KVM_REG_RISCV_CSR | KVM_REG_RISCV_CSR_AIA | "
                                f"KVM_REG_RISCV_CSR_AIA_REG({name})")
        ours[f"aia.{name}"] = riscv.csr(name, "aia")
    for name in riscv.TIMER_REGS:
        exprs[f"timer.{name}"] = f"{base} | KVM_REG_RISCV_TIMER | KVM_REG_RISCV_TIMER_REG({name})"
        ours[f"timer.{name}"] = riscv.timer(name)
    theirs = c_values(inc, exprs)
    _check(ours, theirs)
    assert regs.describe(theirs["csr.sepc"]) == "riscv64 csr sepc, 64-bit"
