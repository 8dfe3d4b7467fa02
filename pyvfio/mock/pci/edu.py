"""QEMU's educational PCI device (``edu``) as a mock device model.

:class:`EduModel` follows QEMU's docs/specs/edu.rst: identification,
liveness, factorial, interrupt raise/acknowledge and a DMA engine with a
4 KiB buffer at 0x40000.  The factorial and DMA complete at the register
write that starts them; software polls the status bits as it would on the
device.
"""
from __future__ import annotations

import mmap
import os
from typing import Optional

from pyvfio.mock.pci.function import BarSpec, PciFunction

__all__ = ["EduModel"]


class EduModel(PciFunction):
    """QEMU's ``edu`` device: vendor 0x1234, device 0x11e8, class 0x00ff00, a 1 MiB BAR0.

    ``dma_mask_bits`` (QEMU's ``dma_mask`` property, 28 by default) clamps
    DMA addresses; ``pcie=True`` adds a PCIe capability with FLR (so vfio can
    reset it; the QEMU device has none); ``reset_registers=True`` makes a
    reset return the registers to power-on values (QEMU's edu has no reset
    handler: a reset only resets its PCI config space, and so does the model
    by default); ``extra_bar=True`` adds a 64 KiB
    64-bit prefetchable RAM BAR 2 with two mmap-able areas, to exercise
    mmap and the sparse-mmap capability; ``viable=False`` puts a host-driver
    bound function in the same IOMMU group.
    """

    vendor_id = 0x1234
    device_id = 0x11E8
    revision = 0x10
    class_code = 0x00FF00
    DMA_START = 0x40000
    DMA_SIZE = 4096
    FACT_IRQ = 0x00000001
    DMA_IRQ = 0x00000100
    STATUS_COMPUTING = 0x01
    STATUS_IRQFACT = 0x80
    DMA_RUN = 0x1
    DMA_TO_RAM = 0x2
    DMA_IRQ_EN = 0x4
    BAR0_SIZE = 1 << 20
    EXTRA_BAR_SIZE = 64 << 10

    def __init__(self, bdf: str = "0000:00:10.0", group: int = 5, *,
                 dma_mask_bits: Optional[int] = None, pcie: bool = False,
                 extra_bar: bool = False, viable: bool = True, reset_registers: bool = False,
                 bar0_address: Optional[int] = None) -> None:
        super().__init__(bdf, group, pcie=pcie, viable=viable)
        self.dma_mask_bits = dma_mask_bits
        self.reset_registers = reset_registers
        self.dma_buf = bytearray(self.DMA_SIZE)
        index = (self.bus << 8) | self.devfn
        base = bar0_address if bar0_address is not None else 0xFE000000 - ((index & 0x3F) << 21)
        self._add_bar(BarSpec(0, self.BAR0_SIZE, base))
        self._ram_fd = -1
        self._ram: Optional[mmap.mmap] = None
        self.mmap_areas = {}
        if extra_bar:
            self._add_bar(BarSpec(2, self.EXTRA_BAR_SIZE, 0x380000000000 + (index << 24),
                                  mem64=True, prefetch=True))
            self._ram_fd = os.memfd_create(f"edu-{self.bdf}-bar2", os.MFD_CLOEXEC)
            os.ftruncate(self._ram_fd, self.EXTRA_BAR_SIZE)
            self._ram = mmap.mmap(self._ram_fd, self.EXTRA_BAR_SIZE)
            self.mmap_areas = {2: [(0x0, 0x4000), (0x8000, 0x8000)]}
        self._add_msi(0x40)
        if pcie:
            self._add_pcie(0x80)
        self._snapshot_pristine()
        self._power_on()

    @property
    def dma_mask(self) -> int:
        return (1 << (self.dma_mask_bits or 28)) - 1

    def reset_state(self) -> None:
        if self.reset_registers:
            self._power_on()

    def _power_on(self) -> None:
        self.addr4 = 0
        self.fact = 0
        self.status = 0
        self.irq_status = 0
        self.dma_src = 0
        self.dma_dst = 0
        self.dma_cnt = 0
        self.dma_cmd = 0
        self.dma_buf[:] = bytes(self.DMA_SIZE)
        self.dma_count = 0
        if self._ram is not None:
            self._ram[:] = bytes(self.EXTRA_BAR_SIZE)

    # -- interrupts (QEMU's edu_raise_irq / edu_lower_irq) ----------------------------------

    def raise_irq(self, value: int) -> None:
        self.irq_status = (self.irq_status | value) & 0xFFFFFFFF
        if self.irq_status:
            if self.msi_enabled:
                self._msi_notify(0)
            else:
                self._drive_intx(True)

    def lower_irq(self, value: int) -> None:
        self.irq_status &= ~value & 0xFFFFFFFF
        if not self.irq_status and not self.msi_enabled:
            self._drive_intx(False)

    # -- MMIO -------------------------------------------------------------------------------

    def mmio_read(self, bar: int, offset: int, size: int) -> int:
        if bar == 2 and self._ram is not None:
            return int.from_bytes(self._ram[offset:offset + size], "little")
        ones = (1 << (8 * size)) - 1
        if size not in (4, 8):
            return 0        # below the valid access size: a decode error reads as 0
        if offset < 0x80 and size != 4:
            return ones
        regs = {0x00: 0x010000ED, 0x04: self.addr4, 0x08: self.fact, 0x20: self.status,
                0x24: self.irq_status, 0x80: self.dma_src, 0x88: self.dma_dst,
                0x90: self.dma_cnt, 0x98: self.dma_cmd}
        return regs.get(offset, ones) & ones

    def mmio_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if bar == 2 and self._ram is not None:
            self._ram[offset:offset + size] = value.to_bytes(size, "little")
            return
        if size not in (4, 8) or (offset < 0x80 and size != 4):
            return
        if offset == 0x04:
            self.addr4 = ~value & 0xFFFFFFFF
        elif offset == 0x08:
            if self.status & self.STATUS_COMPUTING:
                return
            self.fact = value & 0xFFFFFFFF
            self.status |= self.STATUS_COMPUTING
            self._compute_factorial()
        elif offset == 0x20:
            if value & self.STATUS_IRQFACT:
                self.status |= self.STATUS_IRQFACT
            else:
                self.status &= ~self.STATUS_IRQFACT
        elif offset == 0x60:
            self.raise_irq(value & 0xFFFFFFFF)
        elif offset == 0x64:
            self.lower_irq(value & 0xFFFFFFFF)
        elif offset in (0x80, 0x88, 0x90, 0x98):
            if self.dma_cmd & self.DMA_RUN:
                return
            if offset == 0x80:
                self.dma_src = value
            elif offset == 0x88:
                self.dma_dst = value
            elif offset == 0x90:
                self.dma_cnt = value
            elif value & self.DMA_RUN:
                self.dma_cmd = value
                self._run_dma()

    def _compute_factorial(self) -> None:
        # n! mod 2**32 is 0 from n = 34 on (34! holds 2**32): at most 33 steps, so
        # a huge input cannot stall the register write (QEMU computes in a thread)
        n, result = self.fact, 1
        if n >= 34:
            n, result = 0, 0
        while n > 0:
            result = (result * n) & 0xFFFFFFFF
            n -= 1
        self.fact = result
        self.status &= ~self.STATUS_COMPUTING
        if self.status & self.STATUS_IRQFACT:
            self.raise_irq(self.FACT_IRQ)

    def _clamp(self, addr: int) -> int:
        return addr & self.dma_mask

    def _run_dma(self) -> None:
        count = self.dma_cnt
        to_ram = bool(self.dma_cmd & self.DMA_TO_RAM)
        buf_addr = self.dma_src if to_ram else self.dma_dst
        start = buf_addr - self.DMA_START
        if buf_addr < self.DMA_START or start + count > self.DMA_SIZE:
            # QEMU logs a guest error and would run past its buffer; the model refuses
            self._fault(buf_addr, count, not to_ram,
                        "edu: DMA range outside the device buffer 0x40000-0x40fff")
        elif to_ram:
            self.dma_write(self._clamp(self.dma_dst), bytes(self.dma_buf[start:start + count]))
        else:
            self.dma_buf[start:start + count] = self.dma_read(self._clamp(self.dma_src), count)
        self.dma_count += 1
        self.dma_cmd &= ~self.DMA_RUN
        if self.dma_cmd & self.DMA_IRQ_EN:
            self.raise_irq(self.DMA_IRQ)

    def bar_fd(self, bar: int) -> Optional[int]:
        return self._ram_fd if bar == 2 and self._ram_fd >= 0 else None

    def close(self) -> None:
        if self._ram is not None:
            self._ram.close()
            self._ram = None
        if self._ram_fd >= 0:
            os.close(self._ram_fd)
            self._ram_fd = -1
