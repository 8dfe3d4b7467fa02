"""pyvfio.core.mmio: one access per call at its width, bulk widths, byte order, barriers.

The instruction-level checks compile the binding's MMIO source with each C
compiler found here (native, arm64, ppc64le, riscv64, s390x cross compilers)
and count the memory accesses in every accessor; the built binding itself is
disassembled for the native architecture.
"""
from __future__ import annotations

import mmap
import os
import re
import shutil
import subprocess
from typing import Dict, List, Optional

import pytest

from pyvfio import errors
from pyvfio.core import mmio
from pyvfio.core import _build_uapi
from pyvfio.core.uapi import ffi, lib


class Memory(mmio.MmioAccess):
    """An MmioAccess over anonymous memory, with a pread/pwrite fallback that logs each call."""

    def __init__(self, size: int = 4096, mapped: bool = True, endian: str = mmio.LITTLE) -> None:
        self._mmio_init(endian)
        self.m = mmap.mmap(-1, size)
        self.size = self._mmio_size = size
        self._mmio_device = "test-memory"
        self.win = mmio.Window(0, size, self.m) if mapped else None
        self._mmio_set_whole(self.win)
        self.calls: List[tuple] = []

    def _mmio_check(self, off: int, size: int, write: bool) -> None:
        if off < 0 or off + size > self.size:
            raise errors.OutOfBoundsError(f"{off:#x}+{size}", device=self._mmio_device)

    def _mmio_window(self, off: int, size: int) -> Optional[mmio.Window]:
        return self.win

    def _mmio_pread(self, off: int, size: int) -> bytes:
        self.calls.append(("pread", off, size))
        return self.m[off:off + size]

    def _mmio_pwrite(self, off: int, data: bytes) -> None:
        self.calls.append(("pwrite", off, len(data)))
        self.m[off:off + len(data)] = data

    def close(self) -> None:
        self._mmio_set_whole(None)
        if self.win is not None:
            self.win.release()
        self.m.close()


@pytest.fixture(params=[True, False], ids=["mapped", "pread"])
def memory(request):
    m = Memory(mapped=request.param)
    yield m
    m.close()


def test_typed_accesses_little_endian(memory):
    memory.write8(1, 0xAB)
    memory.write16(2, 0xCDEF)
    memory.write32(4, 0x11223344)
    memory.write64(8, 0x8877665544332211)
    assert memory.m[0:16] == bytes.fromhex("00abefcd443322111122334455667788")
    assert memory.read8(1) == 0xAB
    assert memory.read16(2) == 0xCDEF
    assert memory.read32(4) == 0x11223344
    assert memory.read64(8) == 0x8877665544332211


@pytest.mark.parametrize("mapped", [True, False], ids=["mapped", "pread"])
def test_big_endian_device(mapped):
    m = Memory(mapped=mapped, endian=mmio.BIG)
    try:
        m.write16(0, 0x1234)
        m.write32(4, 0x11223344)
        m.write64(8, 0x0102030405060708)
        assert m.m[0:16] == bytes.fromhex("1234000011223344" "0102030405060708")
        assert (m.read16(0), m.read32(4), m.read64(8)) == (0x1234, 0x11223344, 0x0102030405060708)
        m.set_endian(mmio.LITTLE)
        assert m.read32(4) == 0x44332211
    finally:
        m.close()


def test_unknown_byte_order_is_refused():
    with pytest.raises(errors.InvalidArgumentError, match="byte order 'middle'") as exc:
        Memory(endian="middle")
    assert exc.value.remedy == "use endian='little' or endian='big'"


def test_fallback_makes_one_call_per_access():
    m = Memory(mapped=False)
    try:
        m.write32(0x10, 1)
        m.read16(0x20)
        m.read64(0x28)
        assert m.calls == [("pwrite", 0x10, 4), ("pread", 0x20, 2), ("pread", 0x28, 8)]
        m.calls.clear()
        assert m.read(0x40, 16, width=4) == bytes(16)
        assert m.calls == [("pread", 0x40 + 4 * i, 4) for i in range(4)]
        m.calls.clear()
        m.write(0x40, bytes(range(16)), width=8)
        assert m.calls == [("pwrite", 0x40, 8), ("pwrite", 0x48, 8)]
        m.calls.clear()
        assert m.read(0x40, 16) == bytes(range(16))      # a plain copy: one pread
        assert m.calls == [("pread", 0x40, 16)]
    finally:
        m.close()


def test_bulk_with_width_keeps_the_device_byte_order(memory):
    data = bytes(range(32))
    for width in (1, 2, 4, 8):
        memory.write(0x100, data, width=width)
        assert memory.m[0x100:0x120] == data
        assert memory.read(0x100, 32, width=width) == data
    memory.write(0x200, b"\xff" * 8)
    assert memory.read(0x200, 8) == b"\xff" * 8


@pytest.mark.parametrize("call,match", [
    (lambda m: m.read32(2), "32-bit read at 0x2 is not naturally aligned"),
    (lambda m: m.write64(4, 0), "64-bit write at 0x4 is not naturally aligned"),
    (lambda m: m.write16(0, 0x10000), "65536 does not fit 16 bits"),
    (lambda m: m.write32(0, -1), "-1 does not fit 32 bits"),
    (lambda m: m.read(2, 8, width=4), "read of 8 bytes at 0x2 is not a whole number of aligned 32-bit"),
    (lambda m: m.write(0, b"abc", width=2), "write of 3 bytes at 0x0 is not a whole number"),
    (lambda m: m.read(0, 8, width=3), "access width 3 is not 1, 2, 4 or 8 bytes"),
])
def test_bad_accesses_are_refused_and_change_nothing(memory, call, match):
    before = memory.m[:]
    with pytest.raises(errors.InvalidArgumentError, match=match) as exc:
        call(memory)
    assert exc.value.device == "test-memory"
    assert exc.value.remedy
    assert memory.m[:] == before
    assert memory.calls == []


def test_out_of_bounds_is_refused(memory):
    with pytest.raises(errors.OutOfBoundsError):
        memory.read32(4096)
    with pytest.raises(errors.OutOfBoundsError):
        memory.write(4090, bytes(8), width=2)


def test_barriers_run():
    for fence in (mmio.mb, mmio.rmb, mmio.wmb, mmio.dma_rmb, mmio.dma_wmb):
        assert fence() is None
    assert mmio.ARCH in ("x86", "arm64", "ppc64", "riscv", "generic")


# -- instruction level -----------------------------------------------------------------------

ACCESSORS = [f"pyvfio_mmio_{op}{w}{s}" for op in ("read", "write") for w in (8, 16, 32, 64)
             for s in ("", "_swap") if not (w == 8 and s)]

# a memory operand per architecture: AT&T parentheses, arm64 brackets, ppc load/store mnemonics
_MEMORY_OPERAND = {
    "x86_64": re.compile(r"\("),
    "aarch64": re.compile(r"\["),
    "powerpc64le": re.compile(r"^\s*(l[bhwd]|st[bhwd]|lwbrx|stwbrx|lhbrx|sthbrx|ldbrx|stdbrx)\w*\s"),
    "riscv64": re.compile(r"\("),
    "s390x": re.compile(r"\("),
}
# saves around a libgcc call (riscv's byte swap) touch the stack, not the device
_STACK = re.compile(r"\(sp\)|\(%rsp\)|,%r15\)|\[sp\b")
_BARRIER = {
    "x86_64": {"pyvfio_mb": "mfence", "pyvfio_rmb": "lfence", "pyvfio_wmb": "sfence"},
    "aarch64": {"pyvfio_mb": "dsb\tsy|dsb sy", "pyvfio_rmb": "dsb ld|dsb\tld",
                "pyvfio_wmb": "dsb st|dsb\tst", "pyvfio_dma_wmb": "dmb oshst|dmb\toshst",
                "pyvfio_dma_rmb": "dmb oshld|dmb\toshld"},
    "powerpc64le": {"pyvfio_mb": "sync", "pyvfio_wmb": "sync", "pyvfio_dma_wmb": "lwsync",
                    "pyvfio_dma_rmb": "lwsync"},
}


def _compilers() -> Dict[str, str]:
    out = {}
    import platform
    if platform.machine() == "x86_64" and shutil.which("gcc"):
        out["x86_64"] = "gcc"
    for arch in ("aarch64", "powerpc64le", "riscv64", "s390x", "x86_64"):
        cc = shutil.which(f"{arch}-linux-gnu-gcc")
        if cc and arch not in out:
            out[arch] = cc
    return out


def _functions(asm: str) -> Dict[str, List[str]]:
    """Instruction lines of each function in gcc -S output."""
    funcs: Dict[str, List[str]] = {}
    cur = None
    for line in asm.splitlines():
        m = re.match(r"^(\w+):", line)
        if m and not line.startswith("."):
            cur = m.group(1)
            funcs[cur] = []
            continue
        s = line.strip()
        if cur and s and not s.startswith((".", "#", "//")) and not re.match(r"^\.?L\w*:", s):
            funcs[cur].append(s)
    return funcs


COMPILERS = _compilers()


@pytest.mark.host
@pytest.mark.parametrize("arch", sorted(COMPILERS) or ["none"])
def test_each_accessor_is_one_memory_access(arch, tmp_path):
    if arch == "none":
        pytest.skip("no C compiler here")
    names = [line.split("(")[0].split()[-1].lstrip("*")
             for line in _build_uapi.MMIO_CDEF.strip().splitlines()]
    src = tmp_path / "mmio.c"
    src.write_text(_build_uapi.mmio_source() + "void *keep[] = {" + ", ".join(names) + "};\n")
    asm = subprocess.run([COMPILERS[arch], "-O2", "-S", "-o", "-", str(src)],
                         capture_output=True, text=True, check=True).stdout
    funcs = _functions(asm)
    operand = _MEMORY_OPERAND[arch]
    for name in ACCESSORS:
        body = funcs[name]
        accesses = [i for i in body if operand.search(i) and not _STACK.search(i)]
        assert len(accesses) == 1, (arch, name, body)
    for name, insn in _BARRIER.get(arch, {}).items():
        assert any(re.search(rf"^({insn})\b", i) for i in funcs[name]), (arch, name, funcs[name])


@pytest.mark.host
def test_built_binding_stores_once():
    """The extension that is loaded: its direct-call write32 and read32 each touch memory once."""
    import platform
    if platform.machine() != "x86_64" or not shutil.which("objdump"):
        pytest.skip("disassembly check written for x86-64 with objdump")
    from pyvfio.core import _uapi
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", _uapi.__file__],
                         capture_output=True, text=True, check=True).stdout
    for name in ("pyvfio_mmio_write32", "pyvfio_mmio_read32", "pyvfio_mmio_write64",
                 "pyvfio_mmio_write16"):
        m = re.search(rf"<_cffi_d_{name}>:\n(.*?)\n\n", dis, re.S)
        assert m, name
        body = [ln.split("\t", 1)[-1] for ln in m.group(1).splitlines()]
        body = body[:next(i for i, ln in enumerate(body) if ln.strip().startswith("ret")) + 1]
        assert len([ln for ln in body if "(" in ln]) == 1, (name, body)


@pytest.mark.host
def test_the_cpython_accessors_are_built_and_used():
    """pyvfio.core._mmio compiles mmio_access.h too; its calls keep the GIL (no release per access)."""
    from pyvfio.core import _mmio
    assert mmio.ACCESSORS == "cpython"
    m = mmap.mmap(-1, 4096)
    w = mmio.Window(0, 4096, m)
    try:
        _mmio.write32(w.addr + 8, 0x11223344)
        _mmio.write16_swap(w.addr + 12, 0x1234)
        _mmio.write64(w.addr + 16, 1 << 63)
        assert m[8:24] == bytes.fromhex("44332211" "1234" "0000" "0000000000000080")
        assert (_mmio.read32(w.addr + 8), _mmio.read32_swap(w.addr + 8)) == (0x11223344, 0x44332211)
        assert _mmio.read64(w.addr + 16) == 1 << 63 and _mmio.read8(w.addr + 11) == 0x11
        with pytest.raises(OverflowError):
            _mmio.write16(w.addr, 0x10000)
        with pytest.raises(TypeError):
            _mmio.read32()
        assert m[0:2] == b"\0\0"
    finally:
        w.release()
        m.close()
