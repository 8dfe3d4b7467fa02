"""The hardware side of a PCI function in the mock kernel.

:class:`PciFunction` is the device itself: its physical config space (with
the write masks a real function has), its BARs, its INTx line and MSI, and
the bus-master gate on DMA.  The host side (the mock's vfio-pci,
:mod:`pyvfio.mock.vfio.pci`) attaches itself as ``host`` and carries DMA to
the IOMMU and interrupts to eventfds.  Register offsets and bits come from
``linux/pci_regs.h`` through the binding.
"""
from __future__ import annotations

import collections
from typing import Any, Deque, Dict, List, NamedTuple, Optional, Tuple

from pyvfio.core.uapi import lib
from pyvfio.mock.core.uaccess import DmaFault
from pyvfio.pci.address import PciAddress

__all__ = ["BarSpec", "BusAccess", "PciFunction", "HostFunction"]

#: The RW1C error bits of the status register.
_STATUS_ERRORS = (lib.PCI_STATUS_DETECTED_PARITY | lib.PCI_STATUS_SIG_SYSTEM_ERROR
                  | lib.PCI_STATUS_REC_MASTER_ABORT | lib.PCI_STATUS_REC_TARGET_ABORT
                  | lib.PCI_STATUS_SIG_TARGET_ABORT | lib.PCI_STATUS_PARITY)


class HostFunction(NamedTuple):
    """A function bound to a host driver (it makes its IOMMU group non-viable)."""
    bdf: str
    group: int
    segment: int
    bus: int
    devfn: int
    vendor: int = 0x8086
    device: int = 0x10D3
    class_code: int = 0x020000
    driver: str = "e1000e"


class BusAccess(NamedTuple):
    """One access a PCI function saw on its BARs."""
    op: str          # "read" or "write"
    bar: int
    offset: int
    size: int        # bytes: 1, 2, 4 or 8
    value: int


class BarSpec(NamedTuple):
    """A memory BAR as the firmware assigned it."""
    bar: int
    size: int
    address: int
    mem64: bool = False
    prefetch: bool = False

    @property
    def flags(self) -> int:
        return ((lib.PCI_BASE_ADDRESS_MEM_TYPE_64 if self.mem64 else 0)
                | (lib.PCI_BASE_ADDRESS_MEM_PREFETCH if self.prefetch else 0))


class PciFunction:
    """The hardware of one PCI function (a type 0 header), to be subclassed.

    Subclasses set the identity class attributes, call ``_add_bar`` and
    ``_add_msi``/``_add_pcie`` in ``__init__`` and implement
    :meth:`mmio_read`/:meth:`mmio_write` and :meth:`reset_state`.
    """

    #: DMA address width, for models that clamp it (declared only: others lack it)
    dma_mask_bits: Optional[int]
    vendor_id = 0xFFFF
    device_id = 0xFFFF
    revision = 0
    class_code = 0
    subsystem_vendor_id = 0x1AF4   # QEMU's default subsystem ids
    subsystem_id = 0x1100
    interrupt_pin = 1
    #: the command register as the firmware leaves it (SeaBIOS: I/O, memory, SERR)
    firmware_command = lib.PCI_COMMAND_IO | lib.PCI_COMMAND_MEMORY | lib.PCI_COMMAND_SERR

    def __init__(self, bdf: str, group: int, *, pcie: bool = False, viable: bool = True) -> None:
        address = PciAddress.parse(bdf)
        self.bdf = str(address)
        self.segment, self.bus, self.slot, self.function = (address.domain, address.bus,
                                                            address.slot, address.function)
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
        #: the memory accesses that reached the function over the bus, in order (the last 64 Ki)
        self.accesses: Deque[BusAccess] = collections.deque(maxlen=1 << 16)
        self.msi_sent = 0               # MSIs the function sent
        #: The machine's fault log (the mock's process family), set when plugged in.
        self.faults_log: Optional[List[DmaFault]] = None
        self._init_header()

    # -- construction -------------------------------------------------------------------

    def _init_header(self) -> None:
        self._set(lib.PCI_VENDOR_ID, 2, self.vendor_id)
        self._set(lib.PCI_DEVICE_ID, 2, self.device_id)
        self._set(lib.PCI_REVISION_ID, 1, self.revision)
        self._set(lib.PCI_CLASS_PROG, 3, self.class_code)
        self._set(lib.PCI_SUBSYSTEM_VENDOR_ID, 2, self.subsystem_vendor_id)
        self._set(lib.PCI_SUBSYSTEM_ID, 2, self.subsystem_id)
        self._set(lib.PCI_INTERRUPT_PIN, 1, self.interrupt_pin)
        self._set(lib.PCI_INTERRUPT_LINE, 1, 0x0A if self.interrupt_pin else 0)
        self._setmask(lib.PCI_COMMAND, 2, lib.PCI_COMMAND_IO | lib.PCI_COMMAND_MEMORY | lib.PCI_COMMAND_MASTER
                      | lib.PCI_COMMAND_PARITY | lib.PCI_COMMAND_SERR | lib.PCI_COMMAND_INTX_DISABLE)
        self._setmask(lib.PCI_CACHE_LINE_SIZE, 1, 0xFF)
        self._setmask(lib.PCI_LATENCY_TIMER, 1, 0xFF)
        self._setmask(lib.PCI_INTERRUPT_LINE, 1, 0xFF)
        self.w1cmask[lib.PCI_STATUS:lib.PCI_STATUS + 2] = _STATUS_ERRORS.to_bytes(2, "little")

    def _add_bar(self, spec: BarSpec) -> None:
        self.bars[spec.bar] = spec
        off = lib.PCI_BASE_ADDRESS_0 + 4 * spec.bar
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
            self._set(lib.PCI_CAPABILITY_LIST, 1, offset)
            self._set(lib.PCI_STATUS, 2, self._get(lib.PCI_STATUS, 2) | lib.PCI_STATUS_CAP_LIST)
        self._last_cap = offset

    def _add_msi(self, offset: int = 0x40) -> None:
        """A 64-bit MSI capability with one vector and no per-vector masking."""
        self._add_cap(offset, lib.PCI_CAP_ID_MSI)
        self._set(offset + lib.PCI_MSI_FLAGS, 2, lib.PCI_MSI_FLAGS_64BIT)
        self._setmask(offset + lib.PCI_MSI_FLAGS, 2, lib.PCI_MSI_FLAGS_ENABLE | lib.PCI_MSI_FLAGS_QSIZE)
        self._setmask(offset + lib.PCI_MSI_ADDRESS_LO, 4, 0xFFFFFFFC)
        self._setmask(offset + lib.PCI_MSI_ADDRESS_HI, 4, 0xFFFFFFFF)
        self._setmask(offset + lib.PCI_MSI_DATA_64, 2, 0xFFFF)
        self.msi_cap = offset

    def _add_pcie(self, offset: int = 0x80) -> None:
        """A PCI Express endpoint capability (v2) advertising function-level reset."""
        self._add_cap(offset, lib.PCI_CAP_ID_EXP)
        self._set(offset + 2, 2, 0x0002)                        # version 2, endpoint
        self._set(offset + lib.PCI_EXP_DEVCAP, 4, lib.PCI_EXP_DEVCAP_FLR)
        self._setmask(offset + lib.PCI_EXP_DEVCTL, 2, 0x7FFF | lib.PCI_EXP_DEVCTL_BCR_FLR)
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
        self._set(lib.PCI_COMMAND, 2, self.firmware_command)

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
        devctl = self.pcie_cap + lib.PCI_EXP_DEVCTL
        if self.pcie_cap and off <= devctl + 1 and off + size > devctl:
            ctl = self._get(self.pcie_cap + lib.PCI_EXP_DEVCTL, 2)
            if ctl & lib.PCI_EXP_DEVCTL_BCR_FLR:
                self._set(self.pcie_cap + lib.PCI_EXP_DEVCTL, 2, ctl & ~lib.PCI_EXP_DEVCTL_BCR_FLR)
                self.function_reset()

    @property
    def command(self) -> int:
        return self._get(lib.PCI_COMMAND, 2)

    @property
    def memory_enabled(self) -> bool:
        return bool(self.command & lib.PCI_COMMAND_MEMORY)

    @property
    def bus_master(self) -> bool:
        return bool(self.command & lib.PCI_COMMAND_MASTER)

    @property
    def intx_disabled(self) -> bool:
        return bool(self.command & lib.PCI_COMMAND_INTX_DISABLE)

    @property
    def msi_enabled(self) -> bool:
        return bool(self.msi_cap) and bool(self._get(self.msi_cap + lib.PCI_MSI_FLAGS, 2) & lib.PCI_MSI_FLAGS_ENABLE)

    @property
    def intx_output(self) -> bool:
        """The INTx level that reaches the interrupt controller."""
        return self.intx_level and not self.intx_disabled

    def _command_changed(self, old: int) -> None:
        if (old ^ self.command) & lib.PCI_COMMAND_INTX_DISABLE and self.host is not None:
            self.host.intx_changed()

    # -- interrupts and DMA, gated like the bus gates them -------------------------------------

    def _drive_intx(self, level: bool) -> None:
        """pci_set_irq: the INTx pin and the Interrupt Status bit follow ``level``."""
        if not self.interrupt_pin:
            return
        self.intx_level = level
        st = self._get(lib.PCI_STATUS, 2)
        self._set(lib.PCI_STATUS, 2, (st | lib.PCI_STATUS_INTERRUPT) if level else (st & ~lib.PCI_STATUS_INTERRUPT))
        if self.host is not None:
            self.host.intx_changed()

    def _msi_notify(self, vector: int = 0) -> None:
        """An MSI write: a memory write, so it needs bus mastering."""
        if not self.msi_enabled or not self.bus_master:
            return
        self.msi_sent += 1
        if self.host is not None:
            self.host.msi(vector)

    def _fault(self, addr: int, length: int, write: bool, reason: str) -> None:
        fault = DmaFault(self.bdf, addr, length, write, reason)
        self.faults.append(fault)
        if self.faults_log is not None:
            self.faults_log.append(fault)

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
        return bytes(self.host.dma_read(addr, length))

    def dma_write(self, addr: int, data: bytes) -> None:
        """Write ``data`` to host memory at bus address ``addr`` (refused bytes are dropped)."""
        if not self.bus_master:
            self._fault(addr, len(data), True, "bus master disabled")
            return
        if self.host is None:
            self._fault(addr, len(data), True, "no DMA translation (device not in use)")
            return
        self.host.dma_write(addr, data)

    # -- the bus side: what the host's accesses look like to the function ------------------

    def bus_read(self, bar: int, offset: int, size: int) -> int:
        """One memory read TLP of ``size`` bytes: logged in :attr:`accesses`, then decoded."""
        value = self.mmio_read(bar, offset, size)
        self.accesses.append(BusAccess("read", bar, offset, size, value))
        return value

    def bus_write(self, bar: int, offset: int, size: int, value: int) -> None:
        """One memory write TLP of ``size`` bytes: logged in :attr:`accesses`, then decoded."""
        self.accesses.append(BusAccess("write", bar, offset, size, value))
        self.mmio_write(bar, offset, size, value)

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
