"""ONE_REG register IDs: what the 64-bit id of ``KVM_GET/SET_ONE_REG`` encodes.

Every id carries the architecture in bits 63..56 (``KVM_REG_ARCH_MASK``) and
the register's size in bits 55..52 (``KVM_REG_SIZE_MASK``: the size is
``1 << field`` bytes, U8 up to U2048); the rest is the architecture's own.
The submodules build ids from each architecture's register names
(:mod:`.arm64`, :mod:`.loongarch`, :mod:`.riscv`, :mod:`.x86`) and :func:`describe`
turns any id back into words.
"""
from __future__ import annotations

from typing import Callable, Dict

from pyvfio import errors
from pyvfio.core.uapi import lib

__all__ = ["ARCH_MASK", "SIZE_MASK", "SIZE_SHIFT", "SIZES", "size_of", "bits_of", "arch_of",
           "size_field", "describe", "RegisterIdError"]

RegisterIdError = errors.RegisterIdError

ARCH_MASK: int = lib.KVM_REG_ARCH_MASK
SIZE_MASK: int = lib.KVM_REG_SIZE_MASK
SIZE_SHIFT: int = lib.KVM_REG_SIZE_SHIFT

#: Size field value of each width in bits (KVM_REG_SIZE_U8 ... KVM_REG_SIZE_U2048).
SIZES: Dict[int, int] = {bits: getattr(lib, f"KVM_REG_SIZE_U{bits}")
                         for bits in (8, 16, 32, 64, 128, 256, 512, 1024, 2048)}

_ARCHES: Dict[int, str] = {
    lib.KVM_REG_X86: "x86", lib.KVM_REG_ARM: "arm", lib.KVM_REG_ARM64: "arm64",
    lib.KVM_REG_RISCV: "riscv64", lib.KVM_REG_LOONGARCH: "loongarch",
    lib.KVM_REG_PPC: "ppc", lib.KVM_REG_S390: "s390", lib.KVM_REG_MIPS: "mips",
    lib.KVM_REG_IA64: "ia64", lib.KVM_REG_GENERIC: "generic",
}


def size_field(bits: int) -> int:
    """The size field of a ``bits``-wide register (``KVM_REG_SIZE_U<bits>``)."""
    try:
        return SIZES[bits]
    except KeyError:
        raise RegisterIdError(f"no ONE_REG size of {bits} bits",
                              remedy="use 8, 16, 32, 64, 128, 256, 512, 1024 or 2048") from None


def size_of(reg_id: int) -> int:
    """The register's size in bytes, as the id encodes it (1 .. 256)."""
    field = (reg_id & SIZE_MASK) >> SIZE_SHIFT
    if field > 8:
        raise RegisterIdError(f"register id {reg_id:#x} encodes no valid size (field {field})",
                              remedy="build the id with pyvfio.kvm.regs")
    return 1 << field


def bits_of(reg_id: int) -> int:
    """The register's size in bits."""
    return size_of(reg_id) * 8


def arch_of(reg_id: int) -> str:
    """The architecture the id belongs to (``"arm64"``, ``"loongarch"``, ``"riscv64"`` ...)."""
    return _ARCHES.get(reg_id & ARCH_MASK, f"arch {(reg_id & ARCH_MASK) >> 56:#x}")


def describe(reg_id: int) -> str:
    """The id in words: ``"arm64 sysreg DBGBCR3_EL1 (2,0,0,3,5), 64-bit"``."""
    from pyvfio.kvm.regs import arm64, loongarch, riscv, x86
    decoders: Dict[str, Callable[[int], str]] = {
        "arm64": arm64.describe, "loongarch": loongarch.describe, "riscv64": riscv.describe,
        "x86": x86.describe}
    arch = arch_of(reg_id)
    try:
        bits = f"{bits_of(reg_id)}-bit"
    except RegisterIdError:
        bits = "invalid size"
    dec = decoders.get(arch)
    what = dec(reg_id) if dec else f"register {reg_id & 0xffffffff:#x}"
    return f"{arch} {what}, {bits}"
