"""LoongArch ONE_REG ids (arch/loongarch's uAPI ``asm/kvm.h``).

Bits 18..16 select the register class: GPR (0), CSR (1), the KVM-specific
registers (2: the stable counter, vCPU reset), FPSIMD (3), CPUCFG (4) and
LBT (5).  A CSR or CPUCFG id carries the register number shifted left by 3
(``LOONGARCH_REG_SHIFT``); all LoongArch ONE_REG registers are 64-bit.

The kernel (6.12) answers ONE_REG for CSR, CPUCFG, LBT and the KVM class;
the GPRs and PC go through ``KVM_GET_REGS``/``KVM_SET_REGS``.
"""
from __future__ import annotations

from typing import Dict, Union

from pyvfio.core.uapi import lib
from pyvfio.kvm.regs import RegisterIdError, size_field

__all__ = ["LOONGARCH", "GPR", "CSR", "KVM", "FPSIMD", "CPUCFG", "LBT", "REG_SHIFT", "CSRS",
           "gpr", "csr", "cpucfg", "COUNTER", "VCPU_RESET", "DEBUG_INST", "LBT_REGS", "lbt",
           "CSR_CPUID", "KVM_MAX_PHYID", "describe"]

LOONGARCH: int = lib.KVM_REG_LOONGARCH
GPR = LOONGARCH | 0x00000
CSR = LOONGARCH | 0x10000
KVM = LOONGARCH | 0x20000
FPSIMD = LOONGARCH | 0x30000
CPUCFG = LOONGARCH | 0x40000
LBT = LOONGARCH | 0x50000
CLASS_MASK = LOONGARCH | 0x70000
IDX_MASK = 0x7FFF
REG_SHIFT = 3
U64 = size_field(64)

#: The KVM-specific registers.
COUNTER = KVM | U64 | 1          # the guest's stable counter
VCPU_RESET = KVM | U64 | 2       # write: reset the vCPU's pending interrupts
DEBUG_INST = KVM | U64 | 3       # read: the instruction KVM uses for software breakpoints
LBT_REGS: Dict[str, int] = {"SCR0": 1, "SCR1": 2, "SCR2": 3, "SCR3": 4, "EFLAGS": 5, "FTOP": 6}

#: The physical CPUID limit of LoongArch KVM (KVM_MAX_PHYID, arch/loongarch kvm_host.h).
KVM_MAX_PHYID = 256

#: Control and status registers by name (LoongArch Reference Manual, volume 1, chapter 7).
CSRS: Dict[str, int] = {
    "CRMD": 0x0, "PRMD": 0x1, "EUEN": 0x2, "MISC": 0x3, "ECFG": 0x4, "ESTAT": 0x5,
    "ERA": 0x6, "BADV": 0x7, "BADI": 0x8, "EENTRY": 0xC, "TLBIDX": 0x10, "TLBEHI": 0x11,
    "TLBELO0": 0x12, "TLBELO1": 0x13, "GTLBC": 0x15, "TRGP": 0x16, "ASID": 0x18,
    "PGDL": 0x19, "PGDH": 0x1A, "PGD": 0x1B, "PWCTL0": 0x1C, "PWCTL1": 0x1D,
    "STLBPGSIZE": 0x1E, "RVACFG": 0x1F, "CPUID": 0x20, "PRCFG1": 0x21, "PRCFG2": 0x22,
    "PRCFG3": 0x23, "TMID": 0x40, "TCFG": 0x41, "TVAL": 0x42, "CNTC": 0x43,
    "TINTCLR": 0x44, "GSTAT": 0x50, "GCFG": 0x51, "GINTC": 0x52, "GCNTC": 0x53,
    "LLBCTL": 0x60, "IMPCTL1": 0x80, "IMPCTL2": 0x81, "GNMI": 0x82, "TLBRENTRY": 0x88,
    "TLBRBADV": 0x89, "TLBRERA": 0x8A, "TLBRSAVE": 0x8B, "TLBRELO0": 0x8C,
    "TLBRELO1": 0x8D, "TLBREHI": 0x8E, "TLBRPRMD": 0x8F, "MERRCTL": 0x90,
    "MERRINFO1": 0x91, "MERRINFO2": 0x92, "MERRENTRY": 0x93, "MERRERA": 0x94,
    "MERRSAVE": 0x95, "CTAG": 0x98, "DMWIN0": 0x180, "DMWIN1": 0x181, "DMWIN2": 0x182,
    "DMWIN3": 0x183, "PERFCTRL0": 0x200, "PERFCNTR0": 0x201, "PERFCTRL1": 0x202,
    "PERFCNTR1": 0x203, "PERFCTRL2": 0x204, "PERFCNTR2": 0x205, "PERFCTRL3": 0x206,
    "PERFCNTR3": 0x207, "MWPC": 0x300, "MWPS": 0x301, "FWPC": 0x380, "FWPS": 0x381,
    "DEBUG": 0x500, "DERA": 0x501, "DESAVE": 0x502,
}
for _n in range(9):
    CSRS[f"KS{_n}"] = 0x30 + _n
for _n in range(4):
    CSRS[f"ISR{_n}"] = 0xA0 + _n
_CSR_BY_NUM = {v: k for k, v in CSRS.items()}
CSR_CPUID = CSRS["CPUID"]


def _index(value: Union[int, str], table: Dict[str, int], what: str, limit: int) -> int:
    if isinstance(value, str):
        key = value.upper()
        if key.startswith("LOONGARCH_CSR_"):
            key = key[len("LOONGARCH_CSR_"):]
        try:
            return table[key]
        except KeyError:
            raise RegisterIdError(f"no LoongArch {what} named {value!r}",
                                  remedy=f"give its number, or one of {', '.join(sorted(table))}"
                                  ) from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise RegisterIdError(f"LoongArch {what} number must be 0..{limit - 1}, not {value!r}")
    return value


def csr(number_or_name: Union[int, str]) -> int:
    """A CSR by number or name: ``csr(0x20) == csr("CPUID")`` (``KVM_IOC_CSRID``)."""
    n = _index(number_or_name, CSRS, "CSR", (IDX_MASK >> REG_SHIFT) + 1)
    return CSR | U64 | n << REG_SHIFT


def cpucfg(n: int) -> int:
    """CPUCFG word ``n`` (``KVM_IOC_CPUCFG``)."""
    return CPUCFG | U64 | _index(n, {}, "CPUCFG word", (IDX_MASK >> REG_SHIFT) + 1) << REG_SHIFT


def gpr(n: Union[int, str]) -> int:
    """General register r<n> in the GPR class (the kernel serves GPRs through KVM_GET_REGS)."""
    if isinstance(n, str) and n.lower().startswith("r") and n[1:].isdigit():
        n = int(n[1:])
    return GPR | U64 | _index(n, {}, "GPR", 32) << REG_SHIFT


def lbt(name: str) -> int:
    """A binary-translation register: SCR0..SCR3, EFLAGS, FTOP."""
    return LBT | U64 | _index(name, LBT_REGS, "LBT register", 0)


def describe(reg_id: int) -> str:
    """The register part of :func:`pyvfio.kvm.regs.describe` for a LoongArch id."""
    cls = reg_id & CLASS_MASK
    idx = (reg_id & IDX_MASK) >> REG_SHIFT
    if cls == CSR:
        name = _CSR_BY_NUM.get(idx)
        return f"csr {name} ({idx:#x})" if name else f"csr {idx:#x}"
    if cls == CPUCFG:
        return f"cpucfg {idx}"
    if cls == GPR:
        return f"gpr r{idx}"
    if cls == KVM:
        names = {COUNTER: "COUNTER", VCPU_RESET: "VCPU_RESET", DEBUG_INST: "DEBUG_INST"}
        return f"kvm {names.get(reg_id, f'register {reg_id & 0xffff:#x}')}"
    if cls == LBT:
        name = {v: k for k, v in LBT_REGS.items()}.get(reg_id & 0xFFFF)
        return f"lbt {name or f'register {reg_id & 0xffff:#x}'}"
    if cls == FPSIMD:
        return f"fpsimd register {reg_id & 0xffff:#x}"
    return f"class {(cls >> 16) & 7} register {reg_id & 0xffff:#x}"
