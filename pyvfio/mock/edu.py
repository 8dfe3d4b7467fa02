"""PCI function models for the mock kernel, and QEMU's ``edu`` device.

:class:`PciFunction` is the hardware side of a PCI function: its physical
config space (with the write masks a real function has), its BARs, its INTx
line and MSI, and the bus-master gate on DMA.  The host side (the mock's
vfio-pci, :mod:`pyvfio.mock.vfio_pci`) attaches itself as ``host`` and
carries DMA to the IOMMU and interrupts to eventfds.

:class:`EduModel` follows QEMU's educational device (docs/specs/edu.rst):
identification, liveness, factorial, interrupt raise/acknowledge and a DMA
engine with a 4 KiB buffer at 0x40000.  The factorial and DMA complete at the
register write that starts them; software polls the status bits as it would
on the device.
"""
from __future__ import annotations

import mmap
import os
import re
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from pyvfio.mock._util import DmaFault

__all__ = ["BarSpec", "PciFunction", "EduModel", "parse_bdf"]

# Config space offsets and bits (PCI Local Bus spec; the names follow pci_regs.h).
PCI_VENDOR_ID = 0x00
PCI_DEVICE_ID = 0x02
PCI_COMMAND = 0x04
PCI_STATUS = 0x06
PCI_REVISION_ID = 0x08
PCI_CLASS_PROG = 0x09
PCI_CACHE_LINE_SIZE = 0x0C
PCI_LATENCY_TIMER = 0x0D
PCI_HEADER_TYPE = 0x0E
PCI_BASE_ADDRESS_0 = 0x10
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_SUBSYSTEM_ID = 0x2E
PCI_ROM_ADDRESS = 0x30
PCI_CAPABILITY_LIST = 0x34
PCI_INTERRUPT_LINE = 0x3C
PCI_INTERRUPT_PIN = 0x3D

PCI_COMMAND_IO = 0x1
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
PCI_COMMAND_PARITY = 0x40
PCI_COMMAND_SERR = 0x100
PCI_COMMAND_INTX_DISABLE = 0x400

PCI_STATUS_INTERRUPT = 0x08
PCI_STATUS_CAP_LIST = 0x10
PCI_STATUS_ERRORS = 0xF900  # the RW1C error bits

PCI_CAP_ID_MSI = 0x05
PCI_CAP_ID_EXP = 0x10
PCI_MSI_FLAGS = 2
PCI_MSI_FLAGS_ENABLE = 0x0001
PCI_MSI_FLAGS_QMASK = 0x000E
PCI_MSI_FLAGS_QSIZE = 0x0070
PCI_MSI_FLAGS_64BIT = 0x0080
PCI_MSI_ADDRESS_LO = 4
PCI_MSI_ADDRESS_HI = 8
PCI_MSI_DATA_64 = 12
PCI_EXP_DEVCAP = 4
PCI_EXP_DEVCAP_FLR = 0x10000000
PCI_EXP_DEVCTL = 8
PCI_EXP_DEVCTL_BCR_FLR = 0x8000

PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x04
PCI_BASE_ADDRESS_MEM_PREFETCH = 0x08

_BDF = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-1][0-9a-fA-F])\.([0-7])$")


def parse_bdf(bdf: str) -> Tuple[int, int, int, int]:
    """``"0000:00:10.0"`` → (segment, bus, device, function)."""
    m = _BDF.match(bdf)
    if not m:
        raise ValueError(f"not a PCI address (DDDD:BB:DD.F): {bdf!r}")
    seg, bus, dev, fn = (int(g, 16) for g in m.groups())
    if dev > 0x1F:
        raise ValueError(f"PCI device number out of range in {bdf!r}")
    return seg, bus, dev, fn


class BarSpec(NamedTuple):
    """A memory BAR as the firmware assigned it."""
    bar: int
    size: int
    address: int
    mem64: bool = False
    prefetch: bool = False

    @property
    def flags(self) -> int:
        return ((PCI_BASE_ADDRESS_MEM_TYPE_64 if self.mem64 else 0)
                | (PCI_BASE_ADDRESS_MEM_PREFETCH if self.prefetch else 0))


class PciFunction:
    """The hardware of one PCI function (a type 0 header), to be subclassed.

    Subclasses set the identity class attributes, call ``_add_bar`` and
    ``_add_msi``/``_add_pcie`` in ``__init__`` and implement
    :meth:`mmio_read`/:meth:`mmio_write` and :meth:`reset_state`.
    """

    vendor_id = 0xFFFF
    device_id = 0xFFFF
    revision = 0
    class_code = 0
    subsystem_vendor_id = 0x1AF4   # QEMU's default subsystem ids
    subsystem_id = 0x1100
    interrupt_pin = 1
    #: the command register as the firmware leaves it (SeaBIOS: I/O, memory, SERR)
    firmware_command = PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_SERR

    def __init__(self, bdf: str, group: int, *, pcie: bool = False, viable: bool = True) -> None:
        self.bdf = bdf.lower()
        self.segment, self.bus, self.slot, self.function = parse_bdf(self.bdf)
        self.devfn = (self.slot << 3) | self.function
        self.group = group
        self.viable = viable
        self.pcie = pcie
        self.cfg_size = 4096 if pcie else 256
        self.config = bytearray(self.cfg_size)
        self.wmask = bytearray(self.cfg_size)
        self.w1cmask = bytearray(self.cfg_size)
        self.bars: Dict[int, BarSpec] = {}
        #: BAR index → [(offset, size)] of the areas user space may mmap (a sparse-mmap capability)
        self.mmap_areas: Dict[int, List[Tuple[int, int]]] = {}
        self.msi_cap = 0
        self.pcie_cap = 0
        self._last_cap = 0
        self.intx_level = False
        self.host: Any = None           # the mock vfio-pci device, when bound
        self.faults: List[DmaFault] = []
        self._init_header()

    # -- construction -------------------------------------------------------------------

    def _init_header(self) -> None:
        self._set(PCI_VENDOR_ID, 2, self.vendor_id)
        self._set(PCI_DEVICE_ID, 2, self.device_id)
        self._set(PCI_REVISION_ID, 1, self.revision)
        self._set(PCI_CLASS_PROG, 3, self.class_code)
        self._set(PCI_SUBSYSTEM_VENDOR_ID, 2, self.subsystem_vendor_id)
        self._set(PCI_SUBSYSTEM_ID, 2, self.subsystem_id)
        self._set(PCI_INTERRUPT_PIN, 1, self.interrupt_pin)
        self._set(PCI_INTERRUPT_LINE, 1, 0x0A if self.interrupt_pin else 0)
        self._setmask(PCI_COMMAND, 2, PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER
                      | PCI_COMMAND_PARITY | PCI_COMMAND_SERR | PCI_COMMAND_INTX_DISABLE)
        self._setmask(PCI_CACHE_LINE_SIZE, 1, 0xFF)
        self._setmask(PCI_LATENCY_TIMER, 1, 0xFF)
        self._setmask(PCI_INTERRUPT_LINE, 1, 0xFF)
        self.w1cmask[PCI_STATUS:PCI_STATUS + 2] = PCI_STATUS_ERRORS.to_bytes(2, "little")

    def _add_bar(self, spec: BarSpec) -> None:
        self.bars[spec.bar] = spec
        off = PCI_BASE_ADDRESS_0 + 4 * spec.bar
        value = spec.address | spec.flags
        self._set(off, 4, value & 0xFFFFFFFF)
        self._setmask(off, 4, (~(spec.size - 1)) & 0xFFFFFFF0)
        if spec.mem64:
            self._set(off + 4, 4, value >> 32)
            self._setmask(off + 4, 4, ((~(spec.size - 1)) >> 32) & 0xFFFFFFFF)

    def _add_cap(self, offset: int, cap_id: int) -> None:
        self._set(offset, 1, cap_id)
        self._set(offset + 1, 1, 0)
        if self._last_cap:
            self._set(self._last_cap + 1, 1, offset)
        else:
            self._set(PCI_CAPABILITY_LIST, 1, offset)
            self._set(PCI_STATUS, 2, self._get(PCI_STATUS, 2) | PCI_STATUS_CAP_LIST)
        self._last_cap = offset

    def _add_msi(self, offset: int = 0x40) -> None:
        """A 64-bit MSI capability with one vector and no per-vector masking."""
        self._add_cap(offset, PCI_CAP_ID_MSI)
        self._set(offset + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_64BIT)
        self._setmask(offset + PCI_MSI_FLAGS, 2, PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE)
        self._setmask(offset + PCI_MSI_ADDRESS_LO, 4, 0xFFFFFFFC)
        self._setmask(offset + PCI_MSI_ADDRESS_HI, 4, 0xFFFFFFFF)
        self._setmask(offset + PCI_MSI_DATA_64, 2, 0xFFFF)
        self.msi_cap = offset

    def _add_pcie(self, offset: int = 0x80) -> None:
        """A PCI Express endpoint capability (v2) advertising function-level reset."""
        self._add_cap(offset, PCI_CAP_ID_EXP)
        self._set(offset + 2, 2, 0x0002)                        # version 2, endpoint
        self._set(offset + PCI_EXP_DEVCAP, 4, PCI_EXP_DEVCAP_FLR)
        self._setmask(offset + PCI_EXP_DEVCTL, 2, 0x7FFF | PCI_EXP_DEVCTL_BCR_FLR)
        self.pcie_cap = offset

    # -- raw config access ---------------------------------------------------------------

    def _get(self, off: int, size: int) -> int:
        return int.from_bytes(self.config[off:off + size], "little")

    def _set(self, off: int, size: int, value: int) -> None:
        self.config[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def _setmask(self, off: int, size: int, value: int) -> None:
        self.wmask[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def power_on_config(self) -> bytes:
        """The config space as after power-on (what a reset returns to)."""
        return bytes(self._pristine)

    def _snapshot_pristine(self) -> None:
        """Record the power-on config space, then apply what the firmware sets up."""
        self._pristine = bytes(self.config)
        self._set(PCI_COMMAND, 2, self.firmware_command)

    # -- config space as the bus sees it -------------------------------------------------

    def config_read(self, off: int, size: int) -> int:
        """A config read by the host (the physical value)."""
        if off < 0 or off + size > self.cfg_size:
            return (1 << (8 * size)) - 1
        return self._get(off, size)

    def config_write(self, off: int, size: int, value: int) -> None:
        """A config write by the host, through the function's write masks."""
        if off < 0 or off + size > self.cfg_size:
            return
        old_cmd = self.command
        old_msi = self.msi_enabled
        data = value.to_bytes(size, "little")
        for i in range(size):
            a = off + i
            wm, w1c = self.wmask[a], self.w1cmask[a]
            b = (self.config[a] & ~wm) | (data[i] & wm)
            b &= ~(data[i] & w1c)
            self.config[a] = b & 0xFF
        if self.command != old_cmd:
            self._command_changed(old_cmd)
        if self.msi_enabled and not old_msi:
            # enabling MSI takes the function off INTx (QEMU's msi_write_config)
            self._drive_intx(False)
        devctl = self.pcie_cap + PCI_EXP_DEVCTL
        if self.pcie_cap and off <= devctl + 1 and off + size > devctl:
            ctl = self._get(self.pcie_cap + PCI_EXP_DEVCTL, 2)
            if ctl & PCI_EXP_DEVCTL_BCR_FLR:
                self._set(self.pcie_cap + PCI_EXP_DEVCTL, 2, ctl & ~PCI_EXP_DEVCTL_BCR_FLR)
                self.function_reset()

    @property
    def command(self) -> int:
        return self._get(PCI_COMMAND, 2)

    @property
    def memory_enabled(self) -> bool:
        return bool(self.command & PCI_COMMAND_MEMORY)

    @property
    def bus_master(self) -> bool:
        return bool(self.command & PCI_COMMAND_MASTER)

    @property
    def intx_disabled(self) -> bool:
        return bool(self.command & PCI_COMMAND_INTX_DISABLE)

    @property
    def msi_enabled(self) -> bool:
        return bool(self.msi_cap) and bool(self._get(self.msi_cap + PCI_MSI_FLAGS, 2) & PCI_MSI_FLAGS_ENABLE)

    @property
    def intx_output(self) -> bool:
        """The INTx level that reaches the interrupt controller."""
        return self.intx_level and not self.intx_disabled

    def _command_changed(self, old: int) -> None:
        if (old ^ self.command) & PCI_COMMAND_INTX_DISABLE and self.host is not None:
            self.host.intx_changed()

    # -- interrupts and DMA, gated like the bus gates them -------------------------------------

    def _drive_intx(self, level: bool) -> None:
        """pci_set_irq: the INTx pin and the Interrupt Status bit follow ``level``."""
        if not self.interrupt_pin:
            return
        self.intx_level = level
        st = self._get(PCI_STATUS, 2)
        self._set(PCI_STATUS, 2, (st | PCI_STATUS_INTERRUPT) if level else (st & ~PCI_STATUS_INTERRUPT))
        if self.host is not None:
            self.host.intx_changed()

    def _msi_notify(self, vector: int = 0) -> None:
        """An MSI write: a memory write, so it needs bus mastering."""
        if not self.msi_enabled or not self.bus_master:
            return
        if self.host is not None:
            self.host.msi(vector)

    def _fault(self, addr: int, length: int, write: bool, reason: str) -> None:
        fault = DmaFault(self.bdf, addr, length, write, reason)
        self.faults.append(fault)
        if self.host is not None:
            self.host.kernel.faults.append(fault)

    def dma_read(self, addr: int, length: int) -> bytes:
        """Read ``length`` bytes of host memory at bus address ``addr``.

        Bytes the IOMMU refuses read as zeros (an unsupported-request
        completion), and the fault is recorded.
        """
        if not self.bus_master:
            self._fault(addr, length, False, "bus master disabled")
            return bytes(length)
        if self.host is None:
            self._fault(addr, length, False, "no DMA translation (device not in use)")
            return bytes(length)
        return self.host.dma_read(addr, length)

    def dma_write(self, addr: int, data: bytes) -> None:
        """Write ``data`` to host memory at bus address ``addr`` (refused bytes are dropped)."""
        if not self.bus_master:
            self._fault(addr, len(data), True, "bus master disabled")
            return
        if self.host is None:
            self._fault(addr, len(data), True, "no DMA translation (device not in use)")
            return
        self.host.dma_write(addr, data)

    # -- to implement ---------------------------------------------------------------------

    def mmio_read(self, bar: int, offset: int, size: int) -> int:
        """A memory read of ``size`` bytes (1, 2, 4 or 8) at ``offset`` of BAR ``bar``."""
        return (1 << (8 * size)) - 1

    def mmio_write(self, bar: int, offset: int, size: int, value: int) -> None:
        """A memory write of ``size`` bytes at ``offset`` of BAR ``bar``."""

    def reset_state(self) -> None:
        """Return the device-internal state (not config space) to power-on values."""

    def function_reset(self) -> None:
        """A function-level (or bus) reset: config space and internal state to power-on."""
        self.config[:] = self._pristine
        self.reset_state()
        self.intx_level = False
        if self.host is not None:
            self.host.intx_changed()

    def bar_fd(self, bar: int) -> Optional[int]:
        """A file descriptor backing BAR ``bar`` for mmap, if it is RAM-like."""
        return None

    def close(self) -> None:
        """Release host resources (files backing BARs)."""


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
