"""x86 ONE_REG ids (Linux 6.18 and later; absent from the 6.12 uAPI the binding is built from).

Bits 39..32 are the register type: MSR (2, the low 32 bits are the MSR
index) or KVM-defined (3).  Older kernels refuse every x86 id with EINVAL.
"""
from __future__ import annotations

from pyvfio.core.uapi import lib
from pyvfio.kvm.regs import RegisterIdError, size_field

__all__ = ["X86", "TYPE_MSR", "TYPE_KVM", "msr", "describe"]

X86: int = lib.KVM_REG_X86
TYPE_SHIFT = 32
TYPE_MSR, TYPE_KVM = 2, 3


def msr(index: int) -> int:
    """MSR ``index`` (64-bit): ``msr(0x174)`` is IA32_SYSENTER_CS."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1 << 32:
        raise RegisterIdError(f"x86 MSR index must be a 32-bit number, not {index!r}")
    return X86 | size_field(64) | TYPE_MSR << TYPE_SHIFT | index


def describe(reg_id: int) -> str:
    """The register part of :func:`pyvfio.kvm.regs.describe` for an x86 id."""
    typ = (reg_id >> TYPE_SHIFT) & 0xFF
    idx = reg_id & 0xFFFFFFFF
    if typ == TYPE_MSR:
        return f"msr {idx:#x}"
    if typ == TYPE_KVM:
        return f"kvm register {idx}"
    return f"type {typ} register {idx:#x}"
