"""riscv64 ONE_REG ids (arch/riscv's uAPI ``asm/kvm.h``).

Bits 31..24 are the register type (config 1, core 2, CSR 3, timer 4, ...),
bits 23..16 a subtype (CSR: general 0, AIA 1, Smstateen 2), the low bits the
index of the field in its struct in units of ``unsigned long`` (64-bit on
riscv64, so config/core/CSR ids are U64).
"""
from __future__ import annotations

from typing import Dict, Tuple

from pyvfio.core.uapi import lib
from pyvfio.kvm.regs import RegisterIdError, size_field

__all__ = ["RISCV", "CONFIG", "CORE", "CSR", "TIMER", "CSR_GENERAL", "CSR_AIA",
           "CSR_SMSTATEEN", "CONFIG_REGS", "CORE_REGS", "CSR_REGS", "AIA_CSR_REGS",
           "TIMER_REGS", "config", "core", "csr", "timer", "describe"]

RISCV: int = lib.KVM_REG_RISCV
TYPE_SHIFT, SUBTYPE_SHIFT = 24, 16
TYPE_MASK, SUBTYPE_MASK = 0xFF << TYPE_SHIFT, 0xFF << SUBTYPE_SHIFT
CONFIG, CORE, CSR, TIMER = (t << TYPE_SHIFT for t in (1, 2, 3, 4))
FP_F, FP_D, ISA_EXT, SBI_EXT, VECTOR, SBI_STATE = (t << TYPE_SHIFT for t in range(5, 11))
CSR_GENERAL, CSR_AIA, CSR_SMSTATEEN = (s << SUBTYPE_SHIFT for s in (0, 1, 2))
U64 = size_field(64)

#: struct kvm_riscv_config fields, in order.
CONFIG_REGS: Tuple[str, ...] = ("isa", "zicbom_block_size", "mvendorid", "marchid", "mimpid",
                                "zicboz_block_size", "satp_mode")
#: struct kvm_riscv_core: struct user_regs_struct (pc, then x1..x31 by ABI name), mode.
CORE_REGS: Tuple[str, ...] = (
    "pc", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1", "a0", "a1", "a2", "a3", "a4",
    "a5", "a6", "a7", "s2", "s3", "s4", "s5", "s6", "s7", "s8", "s9", "s10", "s11", "t3", "t4",
    "t5", "t6", "mode")
#: struct kvm_riscv_csr fields, in order.
CSR_REGS: Tuple[str, ...] = ("sstatus", "sie", "stvec", "sscratch", "sepc", "scause", "stval",
                             "sip", "satp", "scounteren", "senvcfg")
AIA_CSR_REGS: Tuple[str, ...] = ("siselect", "iprio1", "iprio2", "sieh", "siph", "iprio1h",
                                 "iprio2h")
SMSTATEEN_CSR_REGS: Tuple[str, ...] = ("sstateen0",)
#: struct kvm_riscv_timer (all __u64).
TIMER_REGS: Tuple[str, ...] = ("frequency", "time", "compare", "state")

_SUBTYPES: Dict[int, Tuple[str, Tuple[str, ...]]] = {
    CSR_GENERAL: ("", CSR_REGS), CSR_AIA: ("aia ", AIA_CSR_REGS),
    CSR_SMSTATEEN: ("smstateen ", SMSTATEEN_CSR_REGS)}


def _index(name: str, names: Tuple[str, ...], what: str) -> int:
    key = name.lower()
    if what == "core" and key.startswith("regs."):
        key = key[5:]
    try:
        return names.index(key)
    except ValueError:
        raise RegisterIdError(f"no riscv64 {what} register {name!r}",
                              remedy=f"use one of {', '.join(names)}") from None


def config(name: str) -> int:
    """A config register (``KVM_REG_RISCV_CONFIG``): isa, mvendorid, satp_mode ..."""
    return RISCV | U64 | CONFIG | _index(name, CONFIG_REGS, "config")


def core(name: str) -> int:
    """A core register by ABI name (``pc``, ``ra``, ``a0`` ...) or ``mode``."""
    return RISCV | U64 | CORE | _index(name, CORE_REGS, "core")


def csr(name: str, subtype: str = "general") -> int:
    """A guest CSR: general (sstatus, sepc, satp ...), ``aia`` or ``smstateen``."""
    sub = {"general": CSR_GENERAL, "aia": CSR_AIA, "smstateen": CSR_SMSTATEEN}.get(subtype)
    if sub is None:
        raise RegisterIdError(f"no riscv64 CSR subtype {subtype!r}",
                              remedy="use general, aia or smstateen")
    return RISCV | U64 | CSR | sub | _index(name, _SUBTYPES[sub][1], f"{subtype} CSR")


def timer(name: str) -> int:
    """A timer register: frequency, time, compare, state."""
    return RISCV | U64 | TIMER | _index(name, TIMER_REGS, "timer")


def describe(reg_id: int) -> str:
    """The register part of :func:`pyvfio.kvm.regs.describe` for a riscv64 id."""
    typ, sub, idx = reg_id & TYPE_MASK, reg_id & SUBTYPE_MASK, reg_id & 0xFFFF

    def pick(names: Tuple[str, ...]) -> str:
        return names[idx] if idx < len(names) else f"index {idx}"
    if typ == CONFIG:
        return f"config {pick(CONFIG_REGS)}"
    if typ == CORE:
        return f"core {pick(CORE_REGS)}"
    if typ == CSR and sub in _SUBTYPES:
        prefix, names = _SUBTYPES[sub]
        return f"csr {prefix}{pick(names)}"
    if typ == TIMER:
        return f"timer {pick(TIMER_REGS)}"
    return f"type {typ >> TYPE_SHIFT} subtype {sub >> SUBTYPE_SHIFT} index {idx}"
