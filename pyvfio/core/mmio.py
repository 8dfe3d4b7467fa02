"""Memory-mapped I/O: every access one load or store of its width, barriers, device byte order.

A device register must see exactly the accesses a driver makes: a 32-bit
write to a doorbell rings it once, a 32-bit read of a read-to-clear register
clears it once.  Python cannot promise that (cffi item assignment and
``bytes()`` of a buffer copy with libc ``memcpy``, which moves 4 to 7 bytes
with two overlapping accesses), so the accesses are small C functions
(``pyvfio/core/mmio_access.h``): one volatile load or store of 8, 16, 32 or 64
bits, the instruction chosen by the compiler for the architecture (plain
register addressing on arm64).  The header is compiled twice: into the cffi
binding (bulk copies, barriers) and into the CPython extension
``pyvfio.core._mmio``, whose single accesses skip the GIL release that cffi
makes around every call (ten times the cost of the access on a mapped BAR).

:class:`MmioAccess` is the one set of typed accessors (``read8`` ..
``write64``, ``read``/``write`` with an access width) shared by every
region-like object: a mapped VFIO region, PCI config space through
pread/pwrite, a UIO map.  Where the window is not mapped the same calls
become one ``pread``/``pwrite`` of the access's size at its offset, which
vfio-pci turns into one access of that width.

Widths of bulk accesses:

* ``read(off, n, width=4)`` is n/4 loads of 32 bits in address order
  (``off`` and ``n`` multiples of 4); ``write(off, data, width=8)`` likewise
  with 64-bit stores.  Bytes keep the device's order (no swapping).
* ``read(off, n)`` / ``write(off, data)`` without a width are plain copies
  that may use any access width and may touch a byte more than once: for
  memory-like BARs, never for registers.

Byte order: each object has an ``endian`` (``"little"``, the PCI default, or
``"big"``), the order of the device's registers.  The typed accessors convert
between it and the CPU's order (one byte-swapped access, never two).

Ordering: the accessors are *relaxed*, like the kernel's ``__raw_writel``.  A
driver that fills DMA memory and then rings a doorbell calls :func:`wmb`
between the two; one that reads a status register and then DMA memory the
device wrote calls :func:`rmb` between them; :func:`mb` orders everything.
:func:`dma_wmb`/:func:`dma_rmb` order accesses to DMA memory only.
"""
from __future__ import annotations

import struct
import sys
from typing import Any, Callable, Dict, Optional, Tuple

from pyvfio import errors
from pyvfio.core import args
from pyvfio.core.uapi import ffi, lib

__all__ = ["MmioAccess", "Window", "LITTLE", "BIG", "NATIVE", "WIDTHS", "ARCH", "ACCESSORS",
           "mb", "rmb", "wmb", "dma_rmb", "dma_wmb", "load", "store", "copy_from", "copy_to"]

LITTLE = "little"
BIG = "big"
NATIVE = sys.byteorder
WIDTHS = (1, 2, 4, 8)

#: which barrier instructions the binding was built with: x86, arm64, ppc64, riscv or generic
ARCH: str = ffi.string(lib.pyvfio_barrier_arch()).decode()

mb: Callable[[], None] = lib.pyvfio_mb
"""Full barrier: every earlier load and store (DMA memory and MMIO) completes before any later one."""
rmb: Callable[[], None] = lib.pyvfio_rmb
"""Read barrier: earlier loads before later loads (read a status register, then the DMA data)."""
wmb: Callable[[], None] = lib.pyvfio_wmb
"""Write barrier: earlier stores before later stores (fill descriptors, then ring the doorbell)."""
dma_rmb: Callable[[], None] = lib.pyvfio_dma_rmb
"""Order loads from coherent DMA memory among themselves."""
dma_wmb: Callable[[], None] = lib.pyvfio_dma_wmb
"""Order stores to coherent DMA memory among themselves."""

def _cffi_loads(swap: bool) -> Dict[int, Callable[[int], int]]:
    names = {1: "read8", 2: "read16", 4: "read32", 8: "read64"}
    out: Dict[int, Callable[[int], int]] = {}
    for w, n in names.items():
        fn = getattr(lib, f"pyvfio_mmio_{n}{'_swap' if swap and w > 1 else ''}")
        out[w] = lambda addr, fn=fn: fn(ffi.cast("void *", addr), 0)  # type: ignore[misc]
    return out


def _cffi_stores(swap: bool) -> Dict[int, Callable[[int, int], None]]:
    names = {1: "write8", 2: "write16", 4: "write32", 8: "write64"}
    out: Dict[int, Callable[[int, int], None]] = {}
    for w, n in names.items():
        fn = getattr(lib, f"pyvfio_mmio_{n}{'_swap' if swap and w > 1 else ''}")
        out[w] = lambda addr, value, fn=fn: fn(  # type: ignore[misc]
            ffi.cast("void *", addr), 0, value)
    return out


try:
    # the same accessors as CPython functions: no GIL release around each access
    from pyvfio.core import _mmio as _fast  # type: ignore[attr-defined]  # a C extension
except ImportError:  # pragma: no cover - an installation without the extension
    _fast = None

if _fast is not None:
    _LOADS_NATIVE = {1: _fast.read8, 2: _fast.read16, 4: _fast.read32, 8: _fast.read64}
    _STORES_NATIVE = {1: _fast.write8, 2: _fast.write16, 4: _fast.write32, 8: _fast.write64}
    _LOADS_SWAP = {1: _fast.read8, 2: _fast.read16_swap, 4: _fast.read32_swap,
                   8: _fast.read64_swap}
    _STORES_SWAP = {1: _fast.write8, 2: _fast.write16_swap, 4: _fast.write32_swap,
                    8: _fast.write64_swap}
else:  # pragma: no cover
    _LOADS_NATIVE, _STORES_NATIVE = _cffi_loads(False), _cffi_stores(False)
    _LOADS_SWAP, _STORES_SWAP = _cffi_loads(True), _cffi_stores(True)

#: where the single accesses run: "cpython" (pyvfio.core._mmio) or "cffi"
ACCESSORS = "cpython" if _fast is not None else "cffi"


def _tables(endian: str) -> Tuple[Any, Any]:
    if endian not in (LITTLE, BIG):
        raise errors.InvalidArgumentError(f"unknown byte order {endian!r}",
                                          remedy="use endian='little' or endian='big'")
    if endian == NATIVE:
        return _LOADS_NATIVE, _STORES_NATIVE
    return _LOADS_SWAP, _STORES_SWAP


def load(addr: int, width: int, endian: str = LITTLE) -> int:
    """One load of ``width`` bytes at address ``addr``, in the device's byte order."""
    return int(_tables(endian)[0][width](addr))


def store(addr: int, width: int, value: int, endian: str = LITTLE) -> None:
    """One store of ``width`` bytes at address ``addr``, in the device's byte order."""
    _tables(endian)[1][width](addr, value)


def copy_from(base: Any, off: int, n: int, width: int) -> bytes:
    """n/width loads of ``width`` bytes from ``base + off``, in address order."""
    out = ffi.new("char[]", n)
    if lib.pyvfio_mmio_read_n(base, off, out, n, width):
        raise errors.InvalidArgumentError(
            f"{n} bytes at {off:#x} are not a whole number of aligned {width}-byte accesses")
    return bytes(ffi.unpack(out, n))


def copy_to(base: Any, off: int, data: bytes, width: int) -> None:
    """len(data)/width stores of ``width`` bytes to ``base + off``, in address order."""
    if lib.pyvfio_mmio_write_n(base, off, ffi.from_buffer(data), len(data), width):
        raise errors.InvalidArgumentError(
            f"{len(data)} bytes at {off:#x} are not a whole number of aligned {width}-byte accesses")


class Window:
    """One mapped stretch ``[start, end)`` of a region: a cffi pointer to its first byte
    (``base``) and its address (``addr``)."""

    __slots__ = ("start", "end", "mapping", "base", "addr")

    def __init__(self, start: int, size: int, mapping: Any) -> None:
        self.start = start
        self.end = start + size
        self.mapping = mapping
        self.base = ffi.from_buffer("char[]", mapping)
        self.addr = int(ffi.cast("uintptr_t", self.base))

    def release(self) -> None:
        """Drop the pointer; the owner unmaps ``mapping``."""
        ffi.release(self.base)


_FMT = {(LITTLE, 1): "<B", (LITTLE, 2): "<H", (LITTLE, 4): "<I", (LITTLE, 8): "<Q",
        (BIG, 1): ">B", (BIG, 2): ">H", (BIG, 4): ">I", (BIG, 8): ">Q"}


class MmioAccess:
    """Typed register accessors, defined once for every region-like object.

    A class using it calls :meth:`_mmio_init` and provides

    * ``_mmio_check(off, size, write)``: closed state, bounds, permissions
      (raise the library's exception naming the device);
    * ``_mmio_window(off, size)``: the :class:`Window` that holds the range,
      or None (then the range goes through pread/pwrite);
    * ``_mmio_pread(off, size)`` / ``_mmio_pwrite(off, data)``: the fallback;
    * ``_mmio_device``: the device name for messages.

    It calls :meth:`_mmio_set_whole` with a window covering ``[0,
    _mmio_size)`` (or None when it goes away) for the fast path of
    :meth:`read32`/:meth:`write32`: two closures that replace the methods on
    the instance while the window lives.
    """

    endian: str = LITTLE
    _mmio_whole: Optional[Window] = None
    _mmio_size: int = 0
    _mmio_device: Optional[str] = None
    _loads: Dict[int, Any] = _LOADS_NATIVE if NATIVE == LITTLE else _LOADS_SWAP
    _stores: Dict[int, Any] = _STORES_NATIVE if NATIVE == LITTLE else _STORES_SWAP
    _ld32: Any = staticmethod(_loads[4])
    _st32: Any = staticmethod(_stores[4])

    def _mmio_init(self, endian: str = LITTLE) -> None:
        self.set_endian(endian)

    def set_endian(self, endian: str) -> None:
        """Declare the byte order of the device's registers (``"little"`` or ``"big"``)."""
        self._loads, self._stores = _tables(endian)
        self._ld32, self._st32 = self._loads[4], self._stores[4]
        self.endian = endian
        self._mmio_set_whole(self._mmio_whole)

    def _mmio_set_whole(self, window: Optional[Window]) -> None:
        """Use ``window`` (covering the whole object) for the 32-bit fast path, or stop."""
        self._mmio_whole = window
        d = self.__dict__
        d.pop("read32", None)
        d.pop("write32", None)
        if window is None:
            return
        addr, last, ld, st = window.addr, self._mmio_size - 4, self._ld32, self._st32
        slow_load, slow_store = self._load, self._store

        def read32(off: int) -> int:
            """One 32-bit load at ``off``, in the device's byte order."""
            if type(off) is int and 0 <= off <= last and not off & 3:
                return int(ld(addr + off))
            return slow_load(off, 4)

        def write32(off: int, value: int) -> None:
            """One 32-bit store at ``off``, in the device's byte order."""
            if type(off) is int and 0 <= off <= last and not off & 3 \
                    and type(value) is int and 0 <= value <= 0xFFFFFFFF:
                st(addr + off, value)
                return
            slow_store(off, 4, value)

        d["read32"], d["write32"] = read32, write32

    # -- what the user of the mixin provides ----------------------------------------
    def _mmio_check(self, off: int, size: int, write: bool) -> None:  # pragma: no cover
        raise NotImplementedError

    def _mmio_window(self, off: int, size: int) -> Optional[Window]:
        return None

    def _mmio_pread(self, off: int, size: int) -> bytes:  # pragma: no cover
        raise NotImplementedError

    def _mmio_pwrite(self, off: int, data: bytes) -> None:  # pragma: no cover
        raise NotImplementedError

    # -- single accesses -----------------------------------------------------------------
    def _aligned(self, off: int, size: int, op: str) -> None:
        if off % size:
            raise errors.InvalidArgumentError(
                f"{size * 8}-bit {op} at {off:#x} is not naturally aligned",
                device=self._mmio_device, remedy=f"use an offset that is a multiple of {size}")

    def _load(self, off: int, size: int) -> int:
        self._mmio_check(off, size, False)
        self._aligned(off, size, "read")
        w = self._mmio_window(off, size)
        if w is not None:
            return int(self._loads[size](w.addr + off - w.start))
        return int(struct.unpack(_FMT[self.endian, size], self._mmio_pread(off, size))[0])

    def _store(self, off: int, size: int, value: int) -> None:
        self._mmio_check(off, size, True)
        self._aligned(off, size, "write")
        if type(value) is bool or not isinstance(value, int):
            raise errors.ArgumentTypeError(
                f"the value to write must be an integer, not {value!r}",
                device=self._mmio_device,
                remedy=f"pass an integer from 0 to {(1 << size * 8) - 1:#x}")
        if value < 0 or value >> (size * 8):
            raise errors.InvalidArgumentError(
                f"{value!r} does not fit {size * 8} bits", device=self._mmio_device,
                remedy=f"pass an integer from 0 to {(1 << size * 8) - 1:#x}")
        w = self._mmio_window(off, size)
        if w is not None:
            self._stores[size](w.addr + off - w.start, value)
            return
        self._mmio_pwrite(off, struct.pack(_FMT[self.endian, size], value))

    def read8(self, off: int) -> int:
        """One 8-bit load at ``off``."""
        return self._load(off, 1)

    def read16(self, off: int) -> int:
        """One 16-bit load at ``off``, in the device's byte order."""
        return self._load(off, 2)

    def read32(self, off: int) -> int:
        """One 32-bit load at ``off``, in the device's byte order."""
        return self._load(off, 4)

    def read64(self, off: int) -> int:
        """One 64-bit load at ``off``, in the device's byte order."""
        return self._load(off, 8)

    def write8(self, off: int, value: int) -> None:
        """One 8-bit store at ``off``."""
        self._store(off, 1, value)

    def write16(self, off: int, value: int) -> None:
        """One 16-bit store at ``off``, in the device's byte order."""
        self._store(off, 2, value)

    def write32(self, off: int, value: int) -> None:
        """One 32-bit store at ``off``, in the device's byte order."""
        self._store(off, 4, value)

    def write64(self, off: int, value: int) -> None:
        """One 64-bit store at ``off``, in the device's byte order."""
        self._store(off, 8, value)

    # -- bulk accesses ------------------------------------------------------------------------
    def _width(self, off: int, n: int, width: Optional[int], op: str) -> None:
        if width is None:
            return
        if width not in WIDTHS:
            raise errors.InvalidArgumentError(
                f"access width {width!r} is not 1, 2, 4 or 8 bytes", device=self._mmio_device,
                remedy="use width=1, 2, 4 or 8, or width=None for a plain copy")
        if off % width or n % width:
            raise errors.InvalidArgumentError(
                f"{op} of {n} bytes at {off:#x} is not a whole number of aligned "
                f"{width * 8}-bit accesses", device=self._mmio_device,
                remedy=f"use an offset and a length that are multiples of {width}")

    def read(self, off: int, n: int, width: Optional[int] = None) -> bytes:
        """``n`` bytes at ``off``.

        With ``width`` (1, 2, 4 or 8): n/width loads of exactly that width, in
        address order, each a single access (a register block, a FIFO).
        Without: a plain copy that may use any access width (memory-like BARs).
        """
        self._mmio_check(off, n, False)
        self._width(off, n, width, "read")
        w = self._mmio_window(off, n)
        if width is None:
            if w is not None:
                return bytes(ffi.buffer(w.base + (off - w.start), n))
            return self._mmio_pread(off, n)
        if w is not None:
            return copy_from(w.base, off - w.start, n, width)
        return b"".join(self._mmio_pread(off + i, width) for i in range(0, n, width))

    def write(self, off: int, data: bytes, width: Optional[int] = None) -> None:
        """Copy ``data`` to ``off``.

        With ``width``: len(data)/width stores of exactly that width, in address
        order.  Without: a plain copy that may use any access width.
        """
        data = bytes(args.data(data, "data", device=self._mmio_device))
        n = len(data)
        self._mmio_check(off, n, True)
        self._width(off, n, width, "write")
        w = self._mmio_window(off, n)
        if width is None:
            if w is not None:
                ffi.memmove(w.base + (off - w.start), data, n)
            else:
                self._mmio_pwrite(off, data)
            return
        if w is not None:
            copy_to(w.base, off - w.start, data, width)
            return
        for i in range(0, n, width):
            self._mmio_pwrite(off + i, data[i:i + width])
