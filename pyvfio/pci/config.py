"""PCI configuration space: register access, capability lists and decoders.

Every PCI function has a configuration space: 256 bytes for conventional PCI,
4096 for PCI Express.  The first 64 bytes are a standard header (IDs, the
command and status registers, BARs, interrupt pin); the rest holds two linked
lists of capabilities.  The standard list starts at the pointer in byte 0x34
(when bit 4 of the status register says it exists) and each entry is
``id:8, next:8``; the extended list (PCIe only) starts at 0x100 and each entry
is a 32-bit header ``id:16, version:4, next:12``.  All registers are
little-endian.

:class:`PciConfig` works over any object with ``read(offset, size) -> bytes``,
``write(offset, data)`` and ``size`` — in pyvfio the VFIO config region of a
device, whose reads and writes become pread()/pwrite() on the device fd.  VFIO
virtualises part of this space (BARs, some capability fields, hidden
capabilities), so values are what the kernel presents to user space.
"""
from __future__ import annotations

import errno as _errno
from typing import Any, List, Optional, Protocol, Tuple, Union

from pyvfio.core.mmio import MmioAccess
from pyvfio.core.uapi import lib
from pyvfio.pci.caps import (AerCapability, Bar, Capability, MsiCapability, MsixCapability,
                             PcieCapability, PcieType, PmCapability, PowerState, SriovCapability,
                             cap_name, ext_cap_name, _LINK_SPEEDS)
from pyvfio.errors import InvalidArgumentError, OutOfBoundsError, PyvfioError

__all__ = ["ConfigSpace", "BufferSpace", "PciConfig", "CapabilityListError"]


class ConfigSpace(Protocol):
    """What :class:`PciConfig` needs: byte access to a configuration space."""

    size: int

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...


class BufferSpace:
    """A configuration space held in memory (a dump, an image, a test fixture)."""

    def __init__(self, data: Union[bytes, bytearray]) -> None:
        self.data = bytearray(data)
        self.size = len(self.data)

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.data[offset:offset + size])

    def write(self, offset: int, data: bytes) -> None:
        self.data[offset:offset + len(data)] = data


class CapabilityListError(PyvfioError, ValueError):
    """A capability list that cannot be walked: a loop, or a pointer out of range.

    Real hardware does not produce these; a function that fell off the bus
    (reads of all ones), broken firmware or a bad emulation does.
    """

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("errno", _errno.EIO)
        super().__init__(message, **kw)


# ----------------------------------------------------------------------------- header
_BAR_COUNT = {lib.PCI_HEADER_TYPE_NORMAL: lib.PCI_STD_NUM_BARS, lib.PCI_HEADER_TYPE_BRIDGE: 2,
              lib.PCI_HEADER_TYPE_CARDBUS: 1}
_HEADER_NAMES = {lib.PCI_HEADER_TYPE_NORMAL: "endpoint", lib.PCI_HEADER_TYPE_BRIDGE: "PCI-to-PCI bridge",
                 lib.PCI_HEADER_TYPE_CARDBUS: "CardBus bridge"}
_BAR_COUNT = {lib.PCI_HEADER_TYPE_NORMAL: 6, lib.PCI_HEADER_TYPE_BRIDGE: 2, lib.PCI_HEADER_TYPE_CARDBUS: 1}

_COMMAND_BITS = [(lib.PCI_COMMAND_IO, "io"), (lib.PCI_COMMAND_MEMORY, "memory"), (lib.PCI_COMMAND_MASTER, "bus-master"),
                 (lib.PCI_COMMAND_SPECIAL, "special-cycles"), (lib.PCI_COMMAND_INVALIDATE, "mwi"),
                 (lib.PCI_COMMAND_VGA_PALETTE, "vga-snoop"), (lib.PCI_COMMAND_PARITY, "parity"),
                 (lib.PCI_COMMAND_SERR, "serr"), (lib.PCI_COMMAND_FAST_BACK, "fast-b2b"),
                 (lib.PCI_COMMAND_INTX_DISABLE, "intx-disable")]

_STATUS_BITS = [(lib.PCI_STATUS_IMM_READY, "imm-ready"), (lib.PCI_STATUS_INTERRUPT, "intx-pending"),
                (lib.PCI_STATUS_CAP_LIST, "cap-list"), (lib.PCI_STATUS_66MHZ, "66MHz"),
                (lib.PCI_STATUS_FAST_BACK, "fast-b2b"), (lib.PCI_STATUS_PARITY, "master-parity-error"),
                (lib.PCI_STATUS_SIG_TARGET_ABORT, "signaled-target-abort"),
                (lib.PCI_STATUS_REC_TARGET_ABORT, "received-target-abort"),
                (lib.PCI_STATUS_REC_MASTER_ABORT, "received-master-abort"),
                (lib.PCI_STATUS_SIG_SYSTEM_ERROR, "signaled-system-error"),
                (lib.PCI_STATUS_DETECTED_PARITY, "detected-parity-error")]

# Longest possible walks: every standard capability takes at least 4 bytes of
# 0x40..0xff, every extended one at least 8 bytes of 0x100..0xfff.
_MAX_STD_CAPS = (256 - lib.PCI_STD_HEADER_SIZEOF) // 4
_MAX_EXT_CAPS = (4096 - lib.PCI_CFG_SPACE_SIZE) // 8

_CLASS_NAMES = {
    0x00: "Unclassified", 0x01: "Mass storage controller", 0x02: "Network controller",
    0x03: "Display controller", 0x04: "Multimedia controller", 0x05: "Memory controller",
    0x06: "Bridge", 0x07: "Communication controller", 0x08: "Generic system peripheral",
    0x09: "Input device controller", 0x0a: "Docking station", 0x0b: "Processor",
    0x0c: "Serial bus controller", 0x0d: "Wireless controller",
    0x0e: "Intelligent controller", 0x0f: "Satellite communications controller",
    0x10: "Encryption controller", 0x11: "Signal processing controller",
    0x12: "Processing accelerator", 0x13: "Non-essential instrumentation",
    0x40: "Coprocessor", 0xff: "Unassigned class",
}


# ----------------------------------------------------------------------------- PciConfig


def _field(value: int, mask: int) -> int:
    """The field of ``value`` under ``mask``, shifted down (the kernel's FIELD_GET)."""
    return (value & mask) >> ((mask & -mask).bit_length() - 1)


def _ext_version(header: int) -> int:
    """The version in an extended capability header (bits 19:16)."""
    return (header >> 16) & 0xf


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def _flags(value: int, bits: List[Tuple[int, str]]) -> str:
    names = [name for bit, name in bits if value & bit]
    return " ".join(names) if names else "-"


def _speed(gts: Optional[float]) -> str:
    return "unknown speed" if gts is None else f"{gts:g} GT/s"


class PciConfig(MmioAccess):
    """Typed access to one function's configuration space.

    Every property reads the device afresh: configuration registers change
    under the driver (status bits, link state, power state).  ``read8`` ..
    ``write32`` come from :class:`pyvfio.core.mmio.MmioAccess`: each is one
    access of its size (one read or write of the space at that offset),
    little-endian as PCI defines.
    """

    def __init__(self, space: ConfigSpace) -> None:
        self.space = space
        self._mmio_device = getattr(getattr(space, "device", None), "name", None)
        self._mmio_init()

    @classmethod
    def from_bytes(cls, data: Union[bytes, bytearray]) -> "PciConfig":
        """A PciConfig over an in-memory image (e.g. a saved dump of the space)."""
        return cls(BufferSpace(data))

    @property
    def size(self) -> int:
        """Bytes of configuration space: 256 (conventional) or 4096 (PCIe)."""
        return int(self.space.size)

    def __repr__(self) -> str:
        return f"<PciConfig size={self.size} space={self.space!r}>"

    # -- raw access -------------------------------------------------------------------
    def _check(self, offset: int, size: int, *, align: bool) -> None:
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise InvalidArgumentError(f"config offset must be an int, not {offset!r}",
                                       errno=_errno.EINVAL)
        if offset < 0 or offset + size > self.size:
            raise OutOfBoundsError(
                f"config access of {size} byte(s) at offset {offset:#x} is outside "
                f"the {self.size}-byte configuration space")
        if align and offset % size:
            raise InvalidArgumentError(
                f"config access of {size} bytes at offset {offset:#x} is not "
                f"{size}-byte aligned", errno=_errno.EINVAL)

    def read(self, offset: int, size: int, width: Optional[int] = None) -> bytes:
        """``size`` raw bytes at ``offset`` (bounds-checked).

        Without ``width``: one read of the space, any alignment.  With ``width``
        (1, 2, 4): size/width reads of that width, as in
        :meth:`pyvfio.core.mmio.MmioAccess.read`.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgumentError(f"read size must be a non-negative int, not {size!r}",
                                       errno=_errno.EINVAL)
        return MmioAccess.read(self, offset, size, width)

    def write(self, offset: int, data: bytes, width: Optional[int] = None) -> None:
        """Write raw bytes at ``offset`` (bounds-checked); ``width`` as in :meth:`read`."""
        MmioAccess.write(self, offset, data, width)

    # -- what MmioAccess needs: typed accesses are one pread/pwrite of their size ----------
    def _mmio_check(self, offset: int, size: int, write: bool) -> None:
        self._check(offset, size, align=False)

    def _mmio_pread(self, offset: int, size: int) -> bytes:
        data = bytes(self.space.read(offset, size))
        if len(data) != size:
            raise PyvfioError(f"short config read at offset 0x{offset:x}: "
                              f"{len(data)} of {size} bytes", errno=_errno.EIO)
        return data

    def _mmio_pwrite(self, offset: int, data: bytes) -> None:
        self.space.write(offset, data)

    # -- header -----------------------------------------------------------------------
    @property
    def vendor_id(self) -> int:
        """Vendor ID (0xffff: no function answers)."""
        return self.read16(lib.PCI_VENDOR_ID)

    @property
    def device_id(self) -> int:
        return self.read16(lib.PCI_DEVICE_ID)

    @property
    def command(self) -> int:
        """The 16-bit command register."""
        return self.read16(lib.PCI_COMMAND)

    @command.setter
    def command(self, value: int) -> None:
        self.write16(lib.PCI_COMMAND, value)

    @property
    def status(self) -> int:
        """The 16-bit status register (its error bits are write-1-to-clear)."""
        return self.read16(lib.PCI_STATUS)

    @property
    def revision(self) -> int:
        return self.read8(lib.PCI_REVISION_ID)

    @property
    def class_code(self) -> int:
        """24-bit class code: base class, subclass, programming interface."""
        return self.read32(lib.PCI_REVISION_ID) >> 8

    @property
    def header_type(self) -> int:
        """Header layout: 0 endpoint, 1 PCI-to-PCI bridge, 2 CardBus bridge.

        The multi-function bit (bit 7 of the register) is in :attr:`multifunction`.
        """
        return int(self.read8(lib.PCI_HEADER_TYPE) & lib.PCI_HEADER_TYPE_MASK)

    @property
    def multifunction(self) -> bool:
        """Whether the device has functions other than 0 (header type bit 7)."""
        return bool(self.read8(lib.PCI_HEADER_TYPE) & lib.PCI_HEADER_TYPE_MFD)

    @property
    def subsystem_vendor_id(self) -> Optional[int]:
        """Subsystem vendor ID, from the header or (bridges) the SSVID capability."""
        ids = self._subsystem()
        return None if ids is None else ids[0]

    @property
    def subsystem_id(self) -> Optional[int]:
        """Subsystem ID, from the header or (bridges) the SSVID capability."""
        ids = self._subsystem()
        return None if ids is None else ids[1]

    def _subsystem(self) -> Optional[Tuple[int, int]]:
        htype = self.header_type
        if htype == lib.PCI_HEADER_TYPE_NORMAL:
            return self.read16(lib.PCI_SUBSYSTEM_VENDOR_ID), self.read16(lib.PCI_SUBSYSTEM_ID)
        if htype == lib.PCI_HEADER_TYPE_CARDBUS:
            return self.read16(lib.PCI_CB_SUBSYSTEM_VENDOR_ID), self.read16(lib.PCI_CB_SUBSYSTEM_ID)
        cap = self.find(lib.PCI_CAP_ID_SSVID)
        if cap is None:
            return None
        return (self.read16(cap.offset + lib.PCI_SSVID_VENDOR_ID),
                self.read16(cap.offset + lib.PCI_SSVID_DEVICE_ID))

    @property
    def interrupt_line(self) -> int:
        """Interrupt line as firmware/the OS recorded it (informational only)."""
        return self.read8(lib.PCI_INTERRUPT_LINE)

    @property
    def interrupt_pin(self) -> int:
        """Legacy interrupt pin: 0 none, 1-4 INTA#-INTD#."""
        return self.read8(lib.PCI_INTERRUPT_PIN)

    def bars(self) -> List[Bar]:
        """The BAR registers decoded, without sizing them.

        The upper half of a 64-bit BAR is not listed on its own.  A BAR the
        function does not implement reads as 0 and is listed with address 0.
        """
        count = _BAR_COUNT.get(self.header_type, 0)
        result: List[Bar] = []
        index = 0
        while index < count:
            raw = self.read32(lib.PCI_BASE_ADDRESS_0 + 4 * index)
            if raw & lib.PCI_BASE_ADDRESS_SPACE_IO:
                result.append(Bar(index, True, False, False,
                                  raw & lib.PCI_BASE_ADDRESS_IO_MASK & 0xffffffff, raw))
                index += 1
                continue
            mtype = raw & lib.PCI_BASE_ADDRESS_MEM_TYPE_MASK
            is64 = mtype == lib.PCI_BASE_ADDRESS_MEM_TYPE_64
            address = raw & lib.PCI_BASE_ADDRESS_MEM_MASK & 0xffffffff
            if is64 and index + 1 < count:
                high = self.read32(lib.PCI_BASE_ADDRESS_0 + 4 * (index + 1))
                address |= high << 32
                raw |= high << 32
            result.append(Bar(index, False, is64, bool(raw & lib.PCI_BASE_ADDRESS_MEM_PREFETCH), address, raw,
                              below_1m=mtype == lib.PCI_BASE_ADDRESS_MEM_TYPE_1M))
            index += 2 if is64 else 1
        return result

    # -- command register -------------------------------------------------------------
    def _command_bit(self, bit: int) -> bool:
        return bool(self.command & bit)

    def _set_command_bit(self, bit: int, on: bool) -> None:
        # A 16-bit write: a 32-bit one would also write the status register,
        # whose error bits clear when written with 1.
        cmd = self.command
        new = (cmd | bit) if on else (cmd & ~bit & 0xffff)
        if new != cmd:
            self.command = new

    @property
    def io_enable(self) -> bool:
        """Command bit 0: the function answers I/O-space accesses to its BARs."""
        return self._command_bit(lib.PCI_COMMAND_IO)

    @io_enable.setter
    def io_enable(self, on: bool) -> None:
        self._set_command_bit(lib.PCI_COMMAND_IO, on)

    @property
    def memory_enable(self) -> bool:
        """Command bit 1: the function answers memory accesses to its BARs."""
        return self._command_bit(lib.PCI_COMMAND_MEMORY)

    @memory_enable.setter
    def memory_enable(self, on: bool) -> None:
        self._set_command_bit(lib.PCI_COMMAND_MEMORY, on)

    @property
    def bus_master(self) -> bool:
        """Command bit 2: the function may issue DMA and MSI writes."""
        return self._command_bit(lib.PCI_COMMAND_MASTER)

    @bus_master.setter
    def bus_master(self, on: bool) -> None:
        self._set_command_bit(lib.PCI_COMMAND_MASTER, on)

    @property
    def intx_disable(self) -> bool:
        """Command bit 10: the function may not assert its INTx# pin."""
        return self._command_bit(lib.PCI_COMMAND_INTX_DISABLE)

    @intx_disable.setter
    def intx_disable(self, on: bool) -> None:
        self._set_command_bit(lib.PCI_COMMAND_INTX_DISABLE, on)

    def enable(self, *, bus_master: bool = True, memory: bool = True, io: bool = False) -> int:
        """Turn on the chosen command bits in one write (none is turned off).

        Returns the command register as written.
        """
        cmd = self.command
        new = cmd
        if bus_master:
            new |= lib.PCI_COMMAND_MASTER
        if memory:
            new |= lib.PCI_COMMAND_MEMORY
        if io:
            new |= lib.PCI_COMMAND_IO
        if new != cmd:
            self.command = new
        return new

    # -- capability lists -------------------------------------------------------------
    def capabilities(self) -> List[Capability]:
        """The standard capability list, in chain order.

        Empty when the status register says there is no list.  Raises
        :class:`CapabilityListError` on a loop or a pointer into the header
        or past the end of the space.
        """
        if not self.status & lib.PCI_STATUS_CAP_LIST:
            return []
        head = lib.PCI_CB_CAPABILITY_LIST if self.header_type == lib.PCI_HEADER_TYPE_CARDBUS else lib.PCI_CAPABILITY_LIST
        pos = self.read8(head) & 0xfc        # the low two bits are reserved
        result: List[Capability] = []
        seen = set()
        prev = head
        while pos:
            if pos < lib.PCI_STD_HEADER_SIZEOF or pos + 2 > self.size:
                raise CapabilityListError(
                    f"capability pointer at 0x{prev:x} is 0x{pos:x}: outside "
                    f"0x{lib.PCI_STD_HEADER_SIZEOF:x}..0x{min(self.size, 256) - 1:x}")
            if pos in seen or len(result) >= _MAX_STD_CAPS:
                raise CapabilityListError(
                    f"capability list loops: pointer at 0x{prev:x} leads back to 0x{pos:x}")
            seen.add(pos)
            header = self.read16(pos)
            cap_id, nxt = header & 0xff, (header >> 8) & 0xfc
            result.append(Capability(cap_id, pos, cap_name(cap_id)))
            prev, pos = pos + 1, nxt
        return result

    def extended_capabilities(self) -> List[Capability]:
        """The PCIe extended capability list from 0x100, in chain order.

        Empty for a 256-byte space or when the header at 0x100 is 0 or all
        ones.  An entry with ID 0 (VFIO puts one at 0x100 when it hides the
        first capability) is skipped but its next pointer followed.
        """
        if self.size <= lib.PCI_CFG_SPACE_SIZE:
            return []
        result: List[Capability] = []
        seen = set()
        pos, prev = lib.PCI_CFG_SPACE_SIZE, None
        while True:
            header = self.read32(pos)
            if header in (0, 0xffffffff):
                break
            seen.add(pos)
            cap_id, version, nxt = header & 0xffff, (header >> 16) & 0xf, (header >> 20) & 0xffc
            if cap_id:
                result.append(Capability(cap_id, pos, ext_cap_name(cap_id), version, True))
            if not nxt:
                break
            prev, pos = pos, nxt
            if pos < lib.PCI_CFG_SPACE_SIZE or pos + 4 > self.size:
                raise CapabilityListError(
                    f"extended capability at 0x{prev:x} points to 0x{pos:x}: outside "
                    f"0x{lib.PCI_CFG_SPACE_SIZE:x}..0x{self.size - 1:x}")
            if pos in seen or len(seen) >= _MAX_EXT_CAPS:
                raise CapabilityListError(
                    f"extended capability list loops: 0x{prev:x} leads back to 0x{pos:x}")
        return result

    def find(self, cap_id: int) -> Optional[Capability]:
        """The first standard capability with ID ``cap_id``, or None."""
        for cap in self.capabilities():
            if cap.id == cap_id:
                return cap
        return None

    def find_all(self, cap_id: int) -> List[Capability]:
        """Every standard capability with ID ``cap_id`` (e.g. vendor-specific ones)."""
        return [cap for cap in self.capabilities() if cap.id == cap_id]

    def find_extended(self, cap_id: int) -> Optional[Capability]:
        """The first extended capability with ID ``cap_id``, or None."""
        for cap in self.extended_capabilities():
            if cap.id == cap_id:
                return cap
        return None

    def find_all_extended(self, cap_id: int) -> List[Capability]:
        """Every extended capability with ID ``cap_id`` (e.g. VSEC, DVSEC)."""
        return [cap for cap in self.extended_capabilities() if cap.id == cap_id]

    # -- decoders ---------------------------------------------------------------------
    def _offset(self, cap: Union[Capability, int, None], cap_id: int, extended: bool
                ) -> Optional[int]:
        if isinstance(cap, Capability):
            return cap.offset
        if isinstance(cap, int) and not isinstance(cap, bool):
            return cap
        found = self.find_extended(cap_id) if extended else self.find(cap_id)
        return None if found is None else found.offset

    def msi(self, cap: Union[Capability, int, None] = None) -> Optional[MsiCapability]:
        """The MSI capability decoded, or None when the function has none.

        After message control come the address (high half only with 64-bit
        addressing), the data and, with per-vector masking, mask and pending.
        """
        off = self._offset(cap, lib.PCI_CAP_ID_MSI, False)
        if off is None:
            return None
        ctrl = self.read16(off + lib.PCI_MSI_FLAGS)
        is64 = bool(ctrl & lib.PCI_MSI_FLAGS_64BIT)
        pvm = bool(ctrl & lib.PCI_MSI_FLAGS_MASKBIT)
        address = self.read32(off + lib.PCI_MSI_ADDRESS_LO)
        if is64:
            address |= self.read32(off + lib.PCI_MSI_ADDRESS_HI) << 32
            data_off, mask_off, pending_off = (lib.PCI_MSI_DATA_64, lib.PCI_MSI_MASK_64,
                                               lib.PCI_MSI_PENDING_64)
        else:
            data_off, mask_off, pending_off = (lib.PCI_MSI_DATA_32, lib.PCI_MSI_MASK_32,
                                               lib.PCI_MSI_PENDING_32)
        mask = pending = None
        if pvm:
            mask = self.read32(off + mask_off)
            pending = self.read32(off + pending_off)
        return MsiCapability(
            offset=off, control=ctrl, enabled=bool(ctrl & lib.PCI_MSI_FLAGS_ENABLE),
            multiple_message_capable=1 << _field(ctrl, lib.PCI_MSI_FLAGS_QMASK),
            multiple_message_enable=1 << _field(ctrl, lib.PCI_MSI_FLAGS_QSIZE),
            is_64bit=is64, per_vector_masking=pvm, address=address,
            data=self.read16(off + data_off), mask=mask, pending=pending)

    def msix(self, cap: Union[Capability, int, None] = None) -> Optional[MsixCapability]:
        """The MSI-X capability decoded, or None when the function has none.

        Message control holds table size − 1, function mask and enable; the
        table and PBA registers hold their location as ``offset | BIR``.
        """
        off = self._offset(cap, lib.PCI_CAP_ID_MSIX, False)
        if off is None:
            return None
        ctrl = self.read16(off + lib.PCI_MSIX_FLAGS)
        table = self.read32(off + lib.PCI_MSIX_TABLE)
        pba = self.read32(off + lib.PCI_MSIX_PBA)
        return MsixCapability(
            offset=off, control=ctrl, enabled=bool(ctrl & lib.PCI_MSIX_FLAGS_ENABLE),
            function_mask=bool(ctrl & lib.PCI_MSIX_FLAGS_MASKALL),
            table_size=(ctrl & lib.PCI_MSIX_FLAGS_QSIZE) + 1,
            table_bir=table & lib.PCI_MSIX_TABLE_BIR,
            table_offset=table & lib.PCI_MSIX_TABLE_OFFSET,
            pba_bir=pba & lib.PCI_MSIX_PBA_BIR, pba_offset=pba & lib.PCI_MSIX_PBA_OFFSET)

    def pm(self, cap: Union[Capability, int, None] = None) -> Optional[PmCapability]:
        """The Power Management capability decoded, or None when absent.

        PMC: version, D1/D2 support, the states PME can be signalled from.
        PMCSR: power state, No_Soft_Reset, PME enable and status.
        """
        off = self._offset(cap, lib.PCI_CAP_ID_PM, False)
        if off is None:
            return None
        pmc = self.read16(off + lib.PCI_PM_PMC)
        pmcsr = self.read16(off + lib.PCI_PM_CTRL)
        return PmCapability(
            offset=off, version=pmc & lib.PCI_PM_CAP_VER_MASK,
            power_state=PowerState(pmcsr & lib.PCI_PM_CTRL_STATE_MASK),
            pme_support=_field(pmc, lib.PCI_PM_CAP_PME_MASK),
            d1_support=bool(pmc & lib.PCI_PM_CAP_D1), d2_support=bool(pmc & lib.PCI_PM_CAP_D2),
            no_soft_reset=bool(pmcsr & lib.PCI_PM_CTRL_NO_SOFT_RESET),
            pme_enable=bool(pmcsr & lib.PCI_PM_CTRL_PME_ENABLE),
            pme_status=bool(pmcsr & lib.PCI_PM_CTRL_PME_STATUS))

    def pcie(self, cap: Union[Capability, int, None] = None) -> Optional[PcieCapability]:
        """The PCI Express capability decoded, or None for a conventional function.

        From the capabilities register: version, device/port type, slot;
        device capabilities: max payload supported, FLR; device control: max
        payload and read request; link capabilities and status: speed, width.
        """
        off = self._offset(cap, lib.PCI_CAP_ID_EXP, False)
        if off is None:
            return None
        flags = self.read16(off + lib.PCI_EXP_FLAGS)
        raw_type = _field(flags, lib.PCI_EXP_FLAGS_TYPE)
        try:
            port_type: Union[PcieType, int] = PcieType(raw_type)
        except ValueError:
            port_type = raw_type
        devcap = self.read32(off + lib.PCI_EXP_DEVCAP)
        devctl = self.read16(off + lib.PCI_EXP_DEVCTL)
        has_link = port_type not in (PcieType.RC_INTEGRATED_ENDPOINT,
                                     PcieType.RC_EVENT_COLLECTOR)
        max_speed = max_width = speed = width = None
        if has_link:
            lnkcap = self.read32(off + lib.PCI_EXP_LNKCAP)
            lnksta = self.read16(off + lib.PCI_EXP_LNKSTA)
            max_speed = _LINK_SPEEDS.get(lnkcap & lib.PCI_EXP_LNKCAP_SLS)
            max_width = _field(lnkcap, lib.PCI_EXP_LNKCAP_MLW)
            speed = _LINK_SPEEDS.get(lnksta & lib.PCI_EXP_LNKSTA_CLS)
            width = _field(lnksta, lib.PCI_EXP_LNKSTA_NLW)
        return PcieCapability(
            offset=off, version=flags & lib.PCI_EXP_FLAGS_VERS, port_type=port_type,
            slot_implemented=bool(flags & lib.PCI_EXP_FLAGS_SLOT),
            max_payload_supported=128 << (devcap & lib.PCI_EXP_DEVCAP_PAYLOAD),
            max_payload=128 << _field(devctl, lib.PCI_EXP_DEVCTL_PAYLOAD),
            max_read_request=128 << _field(devctl, lib.PCI_EXP_DEVCTL_READRQ),
            flr=bool(devcap & lib.PCI_EXP_DEVCAP_FLR),
            link_max_speed=max_speed, link_max_width=max_width,
            link_speed=speed, link_width=width)

    def sriov(self, cap: Union[Capability, int, None] = None) -> Optional[SriovCapability]:
        """The SR-IOV extended capability decoded, or None when absent."""
        off = self._offset(cap, lib.PCI_EXT_CAP_ID_SRIOV, True)
        if off is None:
            return None
        ctrl = self.read16(off + lib.PCI_SRIOV_CTRL)
        return SriovCapability(
            offset=off, version=_ext_version(self.read32(off)), control=ctrl,
            vf_enable=bool(ctrl & lib.PCI_SRIOV_CTRL_VFE),
            vf_memory_enable=bool(ctrl & lib.PCI_SRIOV_CTRL_MSE),
            initial_vfs=self.read16(off + lib.PCI_SRIOV_INITIAL_VF),
            total_vfs=self.read16(off + lib.PCI_SRIOV_TOTAL_VF),
            num_vfs=self.read16(off + lib.PCI_SRIOV_NUM_VF),
            vf_offset=self.read16(off + lib.PCI_SRIOV_VF_OFFSET),
            vf_stride=self.read16(off + lib.PCI_SRIOV_VF_STRIDE),
            vf_device_id=self.read16(off + lib.PCI_SRIOV_VF_DID),
            supported_page_sizes=self.read32(off + lib.PCI_SRIOV_SUP_PGSIZE),
            system_page_size=self.read32(off + lib.PCI_SRIOV_SYS_PGSIZE))

    def aer(self, cap: Union[Capability, int, None] = None) -> Optional[AerCapability]:
        """The AER extended capability's status/mask registers, or None when absent."""
        off = self._offset(cap, lib.PCI_EXT_CAP_ID_ERR, True)
        if off is None:
            return None
        return AerCapability(
            offset=off, version=_ext_version(self.read32(off)),
            uncorrectable_status=self.read32(off + lib.PCI_ERR_UNCOR_STATUS),
            uncorrectable_mask=self.read32(off + lib.PCI_ERR_UNCOR_MASK),
            uncorrectable_severity=self.read32(off + lib.PCI_ERR_UNCOR_SEVER),
            correctable_status=self.read32(off + lib.PCI_ERR_COR_STATUS),
            correctable_mask=self.read32(off + lib.PCI_ERR_COR_MASK))

    def serial_number(self) -> Optional[int]:
        """The 64-bit Device Serial Number (extended capability 0x03), or None."""
        cap = self.find_extended(lib.PCI_EXT_CAP_ID_DSN)
        if cap is None:
            return None
        return self.read32(cap.offset + 4) | self.read32(cap.offset + 8) << 32

    # -- description ------------------------------------------------------------------
    def describe(self) -> List[str]:
        """Human-readable lines: header fields, BARs, then each capability decoded.

        A malformed capability list is reported as a line, not raised.
        """
        vendor, device = self.vendor_id, self.device_id
        if vendor == 0xffff:
            return [f"vendor ffff device {device:04x}: no function responds "
                    "(removed, powered off or in reset)"]
        cls = self.class_code
        htype = self.header_type
        lines = [
            f"vendor {vendor:04x} device {device:04x} revision {self.revision:02x}",
            f"class {cls:06x} ({_CLASS_NAMES.get(cls >> 16, 'Unknown class')})",
            f"header type {htype} ({_HEADER_NAMES.get(htype, 'unknown')})"
            + (", multi-function" if self.multifunction else ""),
        ]
        ssvid, ssid = self.subsystem_vendor_id, self.subsystem_id
        if ssvid is not None and ssid is not None:
            lines.append(f"subsystem {ssvid:04x}:{ssid:04x}")
        cmd, sta = self.command, self.status
        lines.append(f"command 0x{cmd:04x}: {_flags(cmd, _COMMAND_BITS)}")
        lines.append(f"status 0x{sta:04x}: {_flags(sta, _STATUS_BITS)}")
        pin = self.interrupt_pin
        if pin:
            pin_name = f"INT{'ABCD'[pin - 1]}#" if 1 <= pin <= 4 else f"invalid ({pin})"
            lines.append(f"interrupt pin {pin_name}, line {self.interrupt_line}")
        else:
            lines.append("interrupt pin none")
        for bar in self.bars():
            if bar.raw:
                lines.append(f"BAR{bar.index}: {bar.kind} at 0x{bar.address:x}")
        try:
            caps = self.capabilities()
        except CapabilityListError as e:
            caps = []
            lines.append(f"capabilities: malformed list: {e.message}")
        if caps:
            lines.append("capabilities:")
        for cap in caps:
            detail = self._describe_cap(cap)
            lines.append(f"  [{cap.offset:02x}] {cap.name}" + (f": {detail}" if detail else ""))
        try:
            ecaps = self.extended_capabilities()
        except CapabilityListError as e:
            ecaps = []
            lines.append(f"extended capabilities: malformed list: {e.message}")
        if ecaps:
            lines.append("extended capabilities:")
        for cap in ecaps:
            detail = self._describe_ext_cap(cap)
            lines.append(f"  [{cap.offset:03x}] {cap.name} v{cap.version}"
                         + (f": {detail}" if detail else ""))
        return lines

    def _describe_cap(self, cap: Capability) -> str:
        if cap.id == lib.PCI_CAP_ID_PM:
            pm = self.pm(cap)
            assert pm is not None
            wake = " ".join(pm.pme_states) or "none"
            return (f"version {pm.version}, state {pm.power_state}, PME from {wake}, "
                    f"no-soft-reset {_yn(pm.no_soft_reset)}")
        if cap.id == lib.PCI_CAP_ID_MSI:
            m = self.msi(cap)
            assert m is not None
            text = (f"enabled {_yn(m.enabled)}, vectors {m.multiple_message_enable}/"
                    f"{m.multiple_message_capable}, {'64' if m.is_64bit else '32'}-bit, "
                    f"per-vector masking {_yn(m.per_vector_masking)}, "
                    f"address 0x{m.address:x} data 0x{m.data:04x}")
            if m.mask is not None:
                text += f", mask 0x{m.mask:08x} pending 0x{m.pending or 0:08x}"
            return text
        if cap.id == lib.PCI_CAP_ID_MSIX:
            x = self.msix(cap)
            assert x is not None
            return (f"enabled {_yn(x.enabled)}, function mask {_yn(x.function_mask)}, "
                    f"{x.table_size} vectors, table BAR{x.table_bir}+0x{x.table_offset:x}, "
                    f"PBA BAR{x.pba_bir}+0x{x.pba_offset:x}")
        if cap.id == lib.PCI_CAP_ID_EXP:
            e = self.pcie(cap)
            assert e is not None
            kind = str(e.port_type) if isinstance(e.port_type, PcieType) \
                else f"reserved type 0x{e.port_type:x}"
            text = (f"version {e.version} {kind}, max payload {e.max_payload} B "
                    f"(supports {e.max_payload_supported} B), max read request "
                    f"{e.max_read_request} B, FLR {_yn(e.flr)}")
            if e.link_width is not None:
                text += (f", link {_speed(e.link_speed)} x{e.link_width} "
                         f"(capable {_speed(e.link_max_speed)} x{e.link_max_width})")
            return text
        if cap.id == lib.PCI_CAP_ID_SSVID:
            return f"{self.read16(cap.offset + 4):04x}:{self.read16(cap.offset + 6):04x}"
        return ""

    def _describe_ext_cap(self, cap: Capability) -> str:
        if cap.id == lib.PCI_EXT_CAP_ID_ERR:
            a = self.aer(cap)
            assert a is not None
            text = (f"uncorrectable status 0x{a.uncorrectable_status:08x}, "
                    f"correctable status 0x{a.correctable_status:08x}")
            errs = a.uncorrectable_errors + a.correctable_errors
            return text + (f" ({', '.join(errs)})" if errs else "")
        if cap.id == lib.PCI_EXT_CAP_ID_DSN:
            sn = self.read32(cap.offset + 4) | self.read32(cap.offset + 8) << 32
            return "serial " + "-".join(f"{b:02x}" for b in sn.to_bytes(8, "big"))
        if cap.id == lib.PCI_EXT_CAP_ID_SRIOV:
            s = self.sriov(cap)
            assert s is not None
            return (f"VFs {s.num_vfs}/{s.total_vfs} (initial {s.initial_vfs}), "
                    f"enabled {_yn(s.vf_enable)}, first VF offset {s.vf_offset}, "
                    f"stride {s.vf_stride}, VF device {s.vf_device_id:04x}")
        if cap.id in (lib.PCI_EXT_CAP_ID_VNDR, lib.PCI_EXT_CAP_ID_DVSEC):
            word = self.read32(cap.offset + 4) if cap.offset + 8 <= self.size else 0
            if cap.id == lib.PCI_EXT_CAP_ID_VNDR:
                return f"ID 0x{word & 0xffff:04x} rev {(word >> 16) & 0xf}"
            return f"vendor {word & 0xffff:04x} rev {(word >> 16) & 0xf}"
        return ""
