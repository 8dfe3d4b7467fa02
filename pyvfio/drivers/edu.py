"""A userspace driver for QEMU's ``edu`` teaching device (PCI 1234:11e8).

Register map of BAR0 (QEMU's docs/specs/edu.rst):

====== ===========================================================
0x00   identification: 0xRRrr00ed (major, minor version)
0x04   liveness check: reads back the bitwise NOT of what was written
0x08   factorial: write n, read n! once status bit 0 clears
0x20   status: bit 0 factorial busy, bit 7 raise IRQ when factorial done
0x24   interrupt status (read); 0x60 raise (write bits); 0x64 acknowledge
0x80   DMA source, 0x88 DMA destination, 0x90 DMA count (bytes)
0x98   DMA command: bit 0 start/busy, bit 1 direction (1 = device → RAM),
       bit 2 raise interrupt 0x100 when done
====== ===========================================================

The device's DMA buffer lives at device address 0x40000 (4 KiB); the device
can address 28 bits unless QEMU's ``dma_mask`` property says otherwise.

Byte order: edu's registers are QEMU "native-endian", i.e. in the byte order
of the machine QEMU emulates, not of the guest: big-endian under
``qemu-system-ppc64`` even for a little-endian ppc64le guest, little-endian
under x86-64 and arm64.  The driver declares it on the BAR (``endian=``), or,
by default, tells it from the identification register, whose low byte is
0xed in the device's order.
"""
from __future__ import annotations

import time
from typing import Any, Optional, Tuple

from pyvfio import errors
from pyvfio.core import mmio
from pyvfio.core import args
from pyvfio.core.eventfd import check_timeout

__all__ = ["Edu"]

VENDOR_ID, DEVICE_ID = 0x1234, 0x11E8
ID, LIVENESS, FACTORIAL, STATUS = 0x00, 0x04, 0x08, 0x20
IRQ_STATUS, IRQ_RAISE, IRQ_ACK = 0x24, 0x60, 0x64
DMA_SRC, DMA_DST, DMA_COUNT, DMA_CMD = 0x80, 0x88, 0x90, 0x98
DMA_START, DMA_TO_RAM, DMA_IRQ = 1, 2, 4
DMA_BUFFER, DMA_BUFFER_SIZE = 0x40000, 4096
DMA_MASK_BITS = 28
STATUS_BUSY, STATUS_IRQ_ON_FACTORIAL = 0x01, 0x80
IRQ_DMA_DONE = 0x100


class Edu:
    """Drive an edu device opened through VFIO (``device`` is a :class:`pyvfio.Device`)."""

    def __init__(self, device: Any, *, timeout: float = 10.0,
                 endian: Optional[str] = None) -> None:
        self.device = device
        t = check_timeout(timeout, device=getattr(device, "name", None))
        if t is None:
            raise errors.InvalidArgumentError("edu needs a finite timeout for its polls",
                                              device=getattr(device, "name", None))
        self.timeout = t
        self.bar = device.bar(0)
        self.bar.set_endian(endian or self.detect_endian(self.bar))
        if getattr(device, "dma_mask_bits", None) is None:
            device.dma_mask_bits = DMA_MASK_BITS              # edu addresses 28 bits
        device.config.enable(bus_master=True, memory=True)   # DMA and MSI are bus-master writes

    @staticmethod
    def detect_endian(bar: Any) -> str:
        """``"little"`` or ``"big"``: the order in which the identification register
        reads 0xRRrr00ed (see the module's doc)."""
        ident = bar.read32(ID)
        endian: str = bar.endian                            # the bar is any register window
        if ident & 0xFF == 0xED:
            return endian
        if ident >> 24 == 0xED:
            return mmio.BIG if bar.endian == mmio.LITTLE else mmio.LITTLE
        raise errors.NotFoundError(f"not an edu device (identification {ident:#010x})",
                                   remedy="check the device's vendor and device IDs (1234:11e8)")

    # -- registers ---------------------------------------------------------------
    @property
    def version(self) -> Tuple[int, int]:
        """(major, minor) from the identification register."""
        ident = self.bar.read32(ID)
        if ident & 0xFF != 0xED:
            raise errors.NotFoundError(f"not an edu device (identification {ident:#010x})",
                                       device=self.device.name)
        return ident >> 24, (ident >> 16) & 0xFF

    def liveness(self, value: int) -> int:
        """Write ``value`` to the liveness register and read back its complement."""
        self.bar.write32(LIVENESS, value)
        return int(self.bar.read32(LIVENESS))

    def factorial(self, n: int, *, irq: bool = False) -> int:
        """Let the device compute ``n!`` (mod 2**32)."""
        n = args.integer(n, "n", device=self.device.name, hi=args.U32)
        irq = args.boolean(irq, "irq", device=self.device.name)
        self.bar.write32(STATUS, STATUS_IRQ_ON_FACTORIAL if irq else 0)
        self.bar.write32(FACTORIAL, n)
        self._poll(STATUS, STATUS_BUSY, "factorial")
        return int(self.bar.read32(FACTORIAL))

    def _poll(self, reg: int, bit: int, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while self.bar.read32(reg) & bit:
            if time.monotonic() > deadline:
                raise errors.TimedOutError(f"edu {what} did not complete within {self.timeout} s",
                                           device=self.device.name)
            time.sleep(0.0005)

    # -- interrupts ------------------------------------------------------------------
    @property
    def irq_status(self) -> int:
        return int(self.bar.read32(IRQ_STATUS))

    def raise_irq(self, bits: int = 1) -> None:
        """Set interrupt status bits: the device asserts its interrupt."""
        self.bar.write32(IRQ_RAISE, bits)

    def ack_irq(self, bits: int) -> None:
        """Clear interrupt status bits; the interrupt deasserts when none is left."""
        self.bar.write32(IRQ_ACK, bits)

    # -- DMA -----------------------------------------------------------------------------
    def dma(self, src: int, dst: int, count: int, *, to_ram: bool, irq: bool = False) -> None:
        """Run one DMA transfer and wait until the device reports it done."""
        name = self.device.name
        src = args.integer(src, "src", device=name)
        dst = args.integer(dst, "dst", device=name)
        count = args.integer(count, "count", device=name, lo=None, hi=None)
        to_ram = args.boolean(to_ram, "to_ram", device=name)
        irq = args.boolean(irq, "irq", device=name)
        if not 0 < count <= DMA_BUFFER_SIZE:
            raise errors.InvalidArgumentError(
                f"edu DMA count must be 1..{DMA_BUFFER_SIZE}, not {count}", device=self.device.name)
        self.bar.write64(DMA_SRC, src)
        self.bar.write64(DMA_DST, dst)
        self.bar.write64(DMA_COUNT, count)
        self.bar.write64(DMA_CMD, DMA_START | (DMA_TO_RAM if to_ram else 0) | (DMA_IRQ if irq else 0))
        self._poll(DMA_CMD, DMA_START, "DMA")

    def to_device(self, addr: int, count: int, offset: int = 0, *, irq: bool = False) -> None:
        """Copy ``count`` bytes from bus address ``addr`` into the device buffer at ``offset``."""
        offset = args.integer(offset, "offset", device=self.device.name, hi=DMA_BUFFER_SIZE - 1)
        self.dma(addr, DMA_BUFFER + offset, count, to_ram=False, irq=irq)

    def from_device(self, addr: int, count: int, offset: int = 0, *, irq: bool = False) -> None:
        """Copy ``count`` bytes from the device buffer at ``offset`` to bus address ``addr``."""
        offset = args.integer(offset, "offset", device=self.device.name, hi=DMA_BUFFER_SIZE - 1)
        self.dma(DMA_BUFFER + offset, addr, count, to_ram=True, irq=irq)
