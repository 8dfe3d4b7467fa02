"""arm64 ONE_REG ids (Documentation/virt/kvm/api.rst, "ARM64 registers").

Bits 27..16 of an arm64 id name a register class:

- core (0x0010): the fields of ``struct kvm_regs`` by their offset in 32-bit
  words (``x0``..``x30``, ``sp``, ``pc``, ``pstate``, ``sp_el1``, ``elr_el1``,
  ``spsr[5]``, ``v0``..``v31`` (128-bit), ``fpsr``, ``fpcr``);
- demux (0x0011): CCSIDR values by cache selector;
- system registers (0x0013): the MRS/MSR encoding ``(op0, op1, CRn, CRm,
  op2)``, always 64-bit in the ABI, named here for the debug set
  (``DBGBVRn_EL1``, ``DBGBCRn_EL1``, ``DBGWVRn_EL1``, ``DBGWCRn_EL1``,
  n = 0..15, ``MDSCR_EL1`` ...) and a few others;
- firmware pseudo-registers (0x0014: PSCI version, SMCCC workarounds) and
  firmware feature bitmaps (0x0016);
- SVE (0x0015): Z (2048-bit slices), P and FFR (256-bit), VLS (512-bit).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

from pyvfio.core.uapi import lib
from pyvfio.kvm.regs import RegisterIdError, size_field

__all__ = ["ARM64", "CORE", "DEMUX", "SYSREG", "FW", "SVE", "FW_FEAT_BMAP", "core", "sysreg",
           "sysreg_named", "SYSREGS", "fw", "FIRMWARE", "fw_feat_bmap", "sve_zreg", "sve_preg",
           "sve_ffr", "SVE_VLS", "ccsidr", "decode_sysreg", "describe"]

ARM64: int = lib.KVM_REG_ARM64
COPROC_SHIFT = 16
COPROC_MASK = 0xFFF << COPROC_SHIFT
CORE = 0x0010 << COPROC_SHIFT
DEMUX = 0x0011 << COPROC_SHIFT
SYSREG = 0x0013 << COPROC_SHIFT
FW = 0x0014 << COPROC_SHIFT
SVE = 0x0015 << COPROC_SHIFT
FW_FEAT_BMAP = 0x0016 << COPROC_SHIFT

U32, U64, U128 = size_field(32), size_field(64), size_field(128)

# struct kvm_regs: struct user_pt_regs {u64 regs[31], sp, pc, pstate} (272 bytes),
# u64 sp_el1, elr_el1, spsr[5], then struct user_fpsimd_state (16-aligned, at 336):
# __uint128_t vregs[32], u32 fpsr, fpcr.  Index = byte offset / 4.
_CORE: Dict[str, Tuple[int, int]] = {}
for _n in range(31):
    _CORE[f"x{_n}"] = (_n * 8, U64)
_CORE.update({"sp": (248, U64), "pc": (256, U64), "pstate": (264, U64),
              "sp_el1": (272, U64), "elr_el1": (280, U64)})
for _n in range(5):
    _CORE[f"spsr{_n}"] = (288 + 8 * _n, U64)
for _n in range(32):
    _CORE[f"v{_n}"] = (336 + 16 * _n, U128)
_CORE.update({"fpsr": (848, U32), "fpcr": (852, U32)})
_CORE_BY_INDEX = {off // 4: name for name, (off, _) in _CORE.items()}
CORE_NAMES = tuple(_CORE)


def core(name: str) -> int:
    """A core register by name: ``x0``..``x30``, ``sp``, ``pc``, ``pstate``, ``sp_el1``,
    ``elr_el1``, ``spsr0``..``spsr4``, ``v0``..``v31``, ``fpsr``, ``fpcr``."""
    key = name.lower()
    if key.startswith("regs[") and key.endswith("]"):     # kvm_regs spelling: regs[7]
        key = "x" + key[5:-1]
    try:
        off, size = _CORE[key]
    except KeyError:
        raise RegisterIdError(f"no arm64 core register {name!r}",
                              remedy="use x0..x30, sp, pc, pstate, sp_el1, elr_el1, "
                                     "spsr0..spsr4, v0..v31, fpsr or fpcr") from None
    return ARM64 | size | CORE | (off // 4)


def sysreg(op0: int, op1: int, crn: int, crm: int, op2: int) -> int:
    """A system register by its encoding; 64-bit in the ABI."""
    for v, lim, what in ((op0, 4, "op0"), (op1, 8, "op1"), (crn, 16, "CRn"), (crm, 16, "CRm"),
                         (op2, 8, "op2")):
        if not isinstance(v, int) or not 0 <= v < lim:
            raise RegisterIdError(f"arm64 sysreg {what} must be 0..{lim - 1}, not {v!r}")
    return ARM64 | U64 | SYSREG | op0 << 14 | op1 << 11 | crn << 7 | crm << 3 | op2


def decode_sysreg(reg_id: int) -> Tuple[int, int, int, int, int]:
    """``(op0, op1, CRn, CRm, op2)`` of a system-register id."""
    return ((reg_id >> 14) & 3, (reg_id >> 11) & 7, (reg_id >> 7) & 15, (reg_id >> 3) & 15,
            reg_id & 7)


#: Named system registers: name -> (op0, op1, CRn, CRm, op2), from the Arm ARM.
SYSREGS: Dict[str, Tuple[int, int, int, int, int]] = {}
for _n in range(16):
    SYSREGS[f"DBGBVR{_n}_EL1"] = (2, 0, 0, _n, 4)
    SYSREGS[f"DBGBCR{_n}_EL1"] = (2, 0, 0, _n, 5)
    SYSREGS[f"DBGWVR{_n}_EL1"] = (2, 0, 0, _n, 6)
    SYSREGS[f"DBGWCR{_n}_EL1"] = (2, 0, 0, _n, 7)
SYSREGS.update({
    "MDCCINT_EL1": (2, 0, 0, 2, 0), "MDSCR_EL1": (2, 0, 0, 2, 2),
    "OSLSR_EL1": (2, 0, 1, 1, 4), "DBGVCR32_EL2": (2, 4, 0, 7, 0),
    "MIDR_EL1": (3, 0, 0, 0, 0), "MPIDR_EL1": (3, 0, 0, 0, 5), "REVIDR_EL1": (3, 0, 0, 0, 6),
    "ID_AA64PFR0_EL1": (3, 0, 0, 4, 0), "ID_AA64PFR1_EL1": (3, 0, 0, 4, 1),
    "ID_AA64DFR0_EL1": (3, 0, 0, 5, 0), "ID_AA64DFR1_EL1": (3, 0, 0, 5, 1),
    "ID_AA64ISAR0_EL1": (3, 0, 0, 6, 0), "ID_AA64ISAR1_EL1": (3, 0, 0, 6, 1),
    "ID_AA64MMFR0_EL1": (3, 0, 0, 7, 0), "ID_AA64MMFR1_EL1": (3, 0, 0, 7, 1),
    "SCTLR_EL1": (3, 0, 1, 0, 0), "CPACR_EL1": (3, 0, 1, 0, 2),
    "TTBR0_EL1": (3, 0, 2, 0, 0), "TTBR1_EL1": (3, 0, 2, 0, 1), "TCR_EL1": (3, 0, 2, 0, 2),
    "ESR_EL1": (3, 0, 5, 2, 0), "FAR_EL1": (3, 0, 6, 0, 0), "PAR_EL1": (3, 0, 7, 4, 0),
    "MAIR_EL1": (3, 0, 10, 2, 0), "VBAR_EL1": (3, 0, 12, 0, 0),
    "CONTEXTIDR_EL1": (3, 0, 13, 0, 1), "TPIDR_EL1": (3, 0, 13, 0, 4),
    "CNTKCTL_EL1": (3, 0, 14, 1, 0), "CSSELR_EL1": (3, 2, 0, 0, 0),
    "TPIDR_EL0": (3, 3, 13, 0, 2), "TPIDRRO_EL0": (3, 3, 13, 0, 3),
    "CNTVCT_EL0": (3, 3, 14, 0, 2), "CNTPCT_EL0": (3, 3, 14, 0, 1),
    "CNTP_CTL_EL0": (3, 3, 14, 2, 1), "CNTP_CVAL_EL0": (3, 3, 14, 2, 2),
    "CNTV_CTL_EL0": (3, 3, 14, 3, 1), "CNTV_CVAL_EL0": (3, 3, 14, 3, 2),
})
_SYSREG_BY_ENC = {enc: name for name, enc in SYSREGS.items()}


def sysreg_named(name: str) -> int:
    """A system register by its architectural name (``"DBGBCR3_EL1"``, ``"MDSCR_EL1"``)."""
    enc = SYSREGS.get(name.upper())
    if enc is None:
        raise RegisterIdError(
            f"no arm64 system register named {name!r} in pyvfio's table",
            remedy="give its encoding instead: regs.arm64.sysreg(op0, op1, CRn, CRm, op2)")
    return sysreg(*enc)


def dbgbvr(n: int) -> int:
    """DBGBVR<n>_EL1, breakpoint value n (0..15)."""
    return sysreg_named(f"DBGBVR{_dbg(n)}_EL1")


def dbgbcr(n: int) -> int:
    """DBGBCR<n>_EL1, breakpoint control n (0..15)."""
    return sysreg_named(f"DBGBCR{_dbg(n)}_EL1")


def dbgwvr(n: int) -> int:
    """DBGWVR<n>_EL1, watchpoint value n (0..15)."""
    return sysreg_named(f"DBGWVR{_dbg(n)}_EL1")


def dbgwcr(n: int) -> int:
    """DBGWCR<n>_EL1, watchpoint control n (0..15)."""
    return sysreg_named(f"DBGWCR{_dbg(n)}_EL1")


def _dbg(n: int) -> int:
    if not isinstance(n, int) or not 0 <= n < 16:
        raise RegisterIdError(f"arm64 debug register number must be 0..15, not {n!r}")
    return n


#: Firmware pseudo-registers (class 0x0014), by the index KVM gives them.
FIRMWARE: Dict[str, int] = {"PSCI_VERSION": 0, "SMCCC_ARCH_WORKAROUND_1": 1,
                            "SMCCC_ARCH_WORKAROUND_2": 2, "SMCCC_ARCH_WORKAROUND_3": 3}
#: Firmware feature bitmaps (class 0x0016).
FW_FEAT_BMAPS: Dict[str, int] = {"STD_BMAP": 0, "STD_HYP_BMAP": 1, "VENDOR_HYP_BMAP": 2}


def fw(index_or_name: Union[int, str]) -> int:
    """A firmware pseudo-register by index or name (``"PSCI_VERSION"``)."""
    idx = _lookup(index_or_name, FIRMWARE, "firmware pseudo-register")
    return ARM64 | U64 | FW | (idx & 0xFFFF)


def fw_feat_bmap(index_or_name: Union[int, str]) -> int:
    """A firmware feature bitmap register by index or name (``"STD_BMAP"``)."""
    idx = _lookup(index_or_name, FW_FEAT_BMAPS, "firmware feature bitmap")
    return ARM64 | U64 | FW_FEAT_BMAP | (idx & 0xFFFF)


def _lookup(key: Union[int, str], table: Dict[str, int], what: str) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    try:
        return table[str(key).upper()]
    except KeyError:
        raise RegisterIdError(f"no arm64 {what} named {key!r}",
                              remedy=f"use one of {', '.join(table)}") from None


def sve_zreg(n: int, i: int = 0) -> int:
    """SVE Z<n> slice i (2048-bit)."""
    return ARM64 | SVE | size_field(2048) | (n & 31) << 5 | (i & 31)


def sve_preg(n: int, i: int = 0) -> int:
    """SVE P<n> slice i (256-bit)."""
    return ARM64 | SVE | size_field(256) | 0x400 | (n & 15) << 5 | (i & 31)


def sve_ffr(i: int = 0) -> int:
    """SVE FFR slice i (256-bit)."""
    return ARM64 | SVE | size_field(256) | 0x600 | (i & 31)


#: The SVE vector lengths register (512-bit).
SVE_VLS = ARM64 | SVE | size_field(512) | 0xFFFF


def ccsidr(csselr: int) -> int:
    """The demultiplexed CCSIDR for cache selector ``csselr`` (32-bit)."""
    return ARM64 | U32 | DEMUX | (csselr & 0xFF)


def describe(reg_id: int) -> str:
    """The register part of :func:`pyvfio.kvm.regs.describe` for an arm64 id."""
    cls = reg_id & COPROC_MASK
    low = reg_id & 0xFFFF
    name: Optional[str]
    if cls == CORE:
        name = _CORE_BY_INDEX.get(low)
        return f"core {name}" if name else f"core index {low:#x}"
    if cls == SYSREG:
        enc = decode_sysreg(reg_id)
        name = _SYSREG_BY_ENC.get(enc)
        encs = ",".join(map(str, enc))
        return f"sysreg {name} ({encs})" if name else f"sysreg ({encs})"
    if cls == FW:
        name = {v: k for k, v in FIRMWARE.items()}.get(low)
        return f"firmware {name or f'register {low}'}"
    if cls == FW_FEAT_BMAP:
        name = {v: k for k, v in FW_FEAT_BMAPS.items()}.get(low)
        return f"firmware bitmap {name or f'register {low}'}"
    if cls == DEMUX:
        return f"demux CCSIDR csselr {low & 0xFF}"
    if cls == SVE:
        if low == 0xFFFF:
            return "sve VLS"
        if low & 0x600 == 0x600:
            return f"sve FFR slice {low & 31}"
        if low & 0x400:
            return f"sve P{(low >> 5) & 15} slice {low & 31}"
        return f"sve Z{(low >> 5) & 31} slice {low & 31}"
    return f"class {cls >> COPROC_SHIFT:#x} register {low:#x}"
