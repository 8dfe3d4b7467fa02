"""Hand-assembled 16-bit real-mode code for the x86 KVM tests (no assembler needed)."""
from __future__ import annotations

from typing import Dict, List, Tuple, Union

CODE = 0x1000        # where the code is loaded and starts (CS=0, IP=0x1000)
COUNTER = 0x2000     # a word the guest counts in
STACK = 0x3000
MMIO = 0x10000       # first byte past the 64 KiB memory slot (reached through ES=0x1000)
MEM_SIZE = 0x10000


class Asm:
    """A few real-mode instructions, with labels for short jumps."""

    def __init__(self, origin: int = CODE) -> None:
        self.origin = origin
        self.code = bytearray()
        self.labels: Dict[str, int] = {}
        self.fixups: List[Tuple[int, str]] = []

    def here(self) -> int:
        return self.origin + len(self.code)

    def label(self, name: str) -> "Asm":
        self.labels[name] = self.here()
        return self

    def emit(self, *parts: Union[int, bytes]) -> "Asm":
        for p in parts:
            self.code += bytes([p]) if isinstance(p, int) else p
        return self

    @staticmethod
    def w(v: int) -> bytes:
        return (v & 0xFFFF).to_bytes(2, "little")

    # instructions
    def mov_ax(self, v: int): return self.emit(0xB8, self.w(v))
    def mov_al(self, v: int): return self.emit(0xB0, v & 0xFF)
    def mov_dx(self, v: int): return self.emit(0xBA, self.w(v))
    def mov_cx(self, v: int): return self.emit(0xB9, self.w(v))
    def mov_sp(self, v: int): return self.emit(0xBC, self.w(v))
    def xor_ax_ax(self): return self.emit(0x31, 0xC0)
    def mov_ds_ax(self): return self.emit(0x8E, 0xD8)
    def mov_es_ax(self): return self.emit(0x8E, 0xC0)
    def mov_ss_ax(self): return self.emit(0x8E, 0xD0)
    def out_dx_al(self): return self.emit(0xEE)
    def out_dx_ax(self): return self.emit(0xEF)
    def in_al_dx(self): return self.emit(0xEC)
    def out_imm_al(self, port: int): return self.emit(0xE6, port)
    def out_imm_ax(self, port: int): return self.emit(0xE7, port)
    def mov_es_mem_ax(self, off: int): return self.emit(0x26, 0xA3, self.w(off))
    def mov_es_mem_al(self, off: int): return self.emit(0x26, 0xA2, self.w(off))
    def mov_al_es_mem(self, off: int): return self.emit(0x26, 0xA0, self.w(off))
    def mov_mem_al(self, off: int): return self.emit(0xA2, self.w(off))
    def mov_ax_mem(self, off: int): return self.emit(0xA1, self.w(off))
    def mov_mem_imm16(self, off: int, v: int): return self.emit(0xC7, 0x06, self.w(off), self.w(v))
    def inc_mem16(self, off: int): return self.emit(0xFF, 0x06, self.w(off))
    def mov_es_mem32_imm(self, off: int, v: int):
        return self.emit(0x66, 0x26, 0xC7, 0x06, self.w(off), v.to_bytes(4, "little"))
    def dec_cx(self): return self.emit(0x49)
    def cli(self): return self.emit(0xFA)
    def sti(self): return self.emit(0xFB)
    def hlt(self): return self.emit(0xF4)
    def iret(self): return self.emit(0xCF)

    def jmp(self, label: str):
        self.emit(0xEB, 0)
        self.fixups.append((len(self.code) - 1, label))
        return self

    def jnz(self, label: str):
        self.emit(0x75, 0)
        self.fixups.append((len(self.code) - 1, label))
        return self

    def mov_mem_label(self, off: int, label: str):
        self.emit(0xC7, 0x06, self.w(off), 0, 0)
        self.fixups.append((-(len(self.code) - 2), label))   # absolute 16-bit
        return self

    def assemble(self) -> bytes:
        out = bytearray(self.code)
        for pos, label in self.fixups:
            target = self.labels[label]
            if pos < 0:
                out[-pos:-pos + 2] = self.w(target)
            else:
                rel = target - (self.origin + pos + 1)
                assert -128 <= rel < 128, f"jump to {label} too far"
                out[pos] = rel & 0xFF
        return bytes(out)


def setup_real_mode(vcpu, entry: int = CODE) -> None:
    """Flat real mode: every segment at base 0, IP at ``entry``."""
    s = vcpu.get_sregs()
    for seg in (s.cs, s.ds, s.es, s.fs, s.gs, s.ss):
        seg.base = 0
        seg.selector = 0
    vcpu.set_sregs(s)
    vcpu.set_regs(rip=entry, rflags=0x2, rsp=STACK)
