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

import enum
import errno as _errno
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Protocol, Tuple, Union

from pyvfio.core.mmio import MmioAccess
from pyvfio.errors import InvalidArgumentError, OutOfBoundsError, PyvfioError

__all__ = [
    "ConfigSpace", "BufferSpace", "PciConfig", "CapabilityListError",
    "Capability", "Bar", "MsiCapability", "MsixCapability", "PmCapability",
    "PcieCapability", "SriovCapability", "AerCapability", "PowerState", "PcieType",
    "CAP_NAMES", "EXT_CAP_NAMES", "cap_name", "ext_cap_name",
    # standard capability IDs
    "CAP_ID_PM", "CAP_ID_AGP", "CAP_ID_VPD", "CAP_ID_SLOTID", "CAP_ID_MSI",
    "CAP_ID_CHSWP", "CAP_ID_PCIX", "CAP_ID_HT", "CAP_ID_VNDR", "CAP_ID_DBG",
    "CAP_ID_CCRC", "CAP_ID_SHPC", "CAP_ID_SSVID", "CAP_ID_AGP3", "CAP_ID_SECDEV",
    "CAP_ID_EXP", "CAP_ID_MSIX", "CAP_ID_SATA", "CAP_ID_AF", "CAP_ID_EA", "CAP_ID_FPB",
    # extended capability IDs
    "EXT_CAP_ID_ERR", "EXT_CAP_ID_VC", "EXT_CAP_ID_DSN", "EXT_CAP_ID_PWR",
    "EXT_CAP_ID_VNDR", "EXT_CAP_ID_ACS", "EXT_CAP_ID_ARI", "EXT_CAP_ID_ATS",
    "EXT_CAP_ID_SRIOV", "EXT_CAP_ID_PRI", "EXT_CAP_ID_REBAR", "EXT_CAP_ID_TPH",
    "EXT_CAP_ID_LTR", "EXT_CAP_ID_SECPCI", "EXT_CAP_ID_PASID", "EXT_CAP_ID_DPC",
    "EXT_CAP_ID_L1SS", "EXT_CAP_ID_PTM", "EXT_CAP_ID_DVSEC", "EXT_CAP_ID_DLF",
    "EXT_CAP_ID_PL_16GT", "EXT_CAP_ID_PL_32GT", "EXT_CAP_ID_DOE",
    # header offsets and command bits
    "COMMAND_IO", "COMMAND_MEMORY", "COMMAND_MASTER", "COMMAND_INTX_DISABLE",
    "STATUS_INTERRUPT", "STATUS_CAP_LIST",
]


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


# ----------------------------------------------------------------------------- registers
# Type 0/1/2 common header
_VENDOR_ID = 0x00
_DEVICE_ID = 0x02
_COMMAND = 0x04
_STATUS = 0x06
_REVISION = 0x08
_CLASS_PROG = 0x09          # prog-if, subclass at 0x0a, base class at 0x0b
_HEADER_TYPE = 0x0e
_BAR0 = 0x10
_SUBSYSTEM_VENDOR_ID = 0x2c  # type 0
_SUBSYSTEM_ID = 0x2e         # type 0
_CAPABILITY_LIST = 0x34      # types 0 and 1
_CB_CAPABILITY_LIST = 0x14   # type 2 (CardBus bridge)
_CB_SUBSYSTEM_VENDOR_ID = 0x40
_CB_SUBSYSTEM_ID = 0x42
_INTERRUPT_LINE = 0x3c
_INTERRUPT_PIN = 0x3d

_STD_HEADER_END = 0x40       # first byte a standard capability may occupy
_EXT_START = 0x100           # the extended list starts here, in PCIe config space

HEADER_NORMAL = 0
HEADER_BRIDGE = 1
HEADER_CARDBUS = 2
_HEADER_NAMES = {HEADER_NORMAL: "endpoint", HEADER_BRIDGE: "PCI-to-PCI bridge",
                 HEADER_CARDBUS: "CardBus bridge"}
_BAR_COUNT = {HEADER_NORMAL: 6, HEADER_BRIDGE: 2, HEADER_CARDBUS: 1}

COMMAND_IO = 1 << 0
COMMAND_MEMORY = 1 << 1
COMMAND_MASTER = 1 << 2
COMMAND_SPECIAL = 1 << 3
COMMAND_INVALIDATE = 1 << 4
COMMAND_VGA_PALETTE = 1 << 5
COMMAND_PARITY = 1 << 6
COMMAND_SERR = 1 << 8
COMMAND_FAST_BACK = 1 << 9
COMMAND_INTX_DISABLE = 1 << 10
_COMMAND_BITS = [(COMMAND_IO, "io"), (COMMAND_MEMORY, "memory"), (COMMAND_MASTER, "bus-master"),
                 (COMMAND_SPECIAL, "special-cycles"), (COMMAND_INVALIDATE, "mwi"),
                 (COMMAND_VGA_PALETTE, "vga-snoop"), (COMMAND_PARITY, "parity"),
                 (COMMAND_SERR, "serr"), (COMMAND_FAST_BACK, "fast-b2b"),
                 (COMMAND_INTX_DISABLE, "intx-disable")]

STATUS_IMM_READY = 1 << 0
STATUS_INTERRUPT = 1 << 3
STATUS_CAP_LIST = 1 << 4
STATUS_66MHZ = 1 << 5
STATUS_FAST_BACK = 1 << 7
STATUS_PARITY = 1 << 8
STATUS_SIG_TARGET_ABORT = 1 << 11
STATUS_REC_TARGET_ABORT = 1 << 12
STATUS_REC_MASTER_ABORT = 1 << 13
STATUS_SIG_SYSTEM_ERROR = 1 << 14
STATUS_DETECTED_PARITY = 1 << 15
_STATUS_BITS = [(STATUS_IMM_READY, "imm-ready"), (STATUS_INTERRUPT, "intx-pending"),
                (STATUS_CAP_LIST, "cap-list"), (STATUS_66MHZ, "66MHz"),
                (STATUS_FAST_BACK, "fast-b2b"), (STATUS_PARITY, "master-parity-error"),
                (STATUS_SIG_TARGET_ABORT, "signaled-target-abort"),
                (STATUS_REC_TARGET_ABORT, "received-target-abort"),
                (STATUS_REC_MASTER_ABORT, "received-master-abort"),
                (STATUS_SIG_SYSTEM_ERROR, "signaled-system-error"),
                (STATUS_DETECTED_PARITY, "detected-parity-error")]

_BAR_IO = 0x1
_BAR_MEM_TYPE_MASK = 0x6
_BAR_MEM_TYPE_64 = 0x4
_BAR_MEM_TYPE_1M = 0x2
_BAR_PREFETCH = 0x8

# ----------------------------------------------------------------------------- capability IDs
CAP_ID_NULL = 0x00
CAP_ID_PM = 0x01
CAP_ID_AGP = 0x02
CAP_ID_VPD = 0x03
CAP_ID_SLOTID = 0x04
CAP_ID_MSI = 0x05
CAP_ID_CHSWP = 0x06
CAP_ID_PCIX = 0x07
CAP_ID_HT = 0x08
CAP_ID_VNDR = 0x09
CAP_ID_DBG = 0x0a
CAP_ID_CCRC = 0x0b
CAP_ID_SHPC = 0x0c
CAP_ID_SSVID = 0x0d
CAP_ID_AGP3 = 0x0e
CAP_ID_SECDEV = 0x0f
CAP_ID_EXP = 0x10
CAP_ID_MSIX = 0x11
CAP_ID_SATA = 0x12
CAP_ID_AF = 0x13
CAP_ID_EA = 0x14
CAP_ID_FPB = 0x15

CAP_NAMES: Dict[int, str] = {
    CAP_ID_NULL: "Null",
    CAP_ID_PM: "Power Management",
    CAP_ID_AGP: "AGP",
    CAP_ID_VPD: "Vital Product Data",
    CAP_ID_SLOTID: "Slot Identification",
    CAP_ID_MSI: "MSI",
    CAP_ID_CHSWP: "CompactPCI Hot Swap",
    CAP_ID_PCIX: "PCI-X",
    CAP_ID_HT: "HyperTransport",
    CAP_ID_VNDR: "Vendor Specific",
    CAP_ID_DBG: "Debug Port",
    CAP_ID_CCRC: "CompactPCI Central Resource Control",
    CAP_ID_SHPC: "PCI Standard Hot-Plug Controller",
    CAP_ID_SSVID: "Bridge Subsystem Vendor ID",
    CAP_ID_AGP3: "AGP 8x",
    CAP_ID_SECDEV: "Secure Device",
    CAP_ID_EXP: "PCI Express",
    CAP_ID_MSIX: "MSI-X",
    CAP_ID_SATA: "SATA Data/Index Configuration",
    CAP_ID_AF: "Advanced Features",
    CAP_ID_EA: "Enhanced Allocation",
    CAP_ID_FPB: "Flattening Portal Bridge",
}

EXT_CAP_ID_ERR = 0x01
EXT_CAP_ID_VC = 0x02
EXT_CAP_ID_DSN = 0x03
EXT_CAP_ID_PWR = 0x04
EXT_CAP_ID_RCLD = 0x05
EXT_CAP_ID_RCILC = 0x06
EXT_CAP_ID_RCEC = 0x07
EXT_CAP_ID_MFVC = 0x08
EXT_CAP_ID_VC9 = 0x09
EXT_CAP_ID_RCRB = 0x0a
EXT_CAP_ID_VNDR = 0x0b
EXT_CAP_ID_CAC = 0x0c
EXT_CAP_ID_ACS = 0x0d
EXT_CAP_ID_ARI = 0x0e
EXT_CAP_ID_ATS = 0x0f
EXT_CAP_ID_SRIOV = 0x10
EXT_CAP_ID_MRIOV = 0x11
EXT_CAP_ID_MCAST = 0x12
EXT_CAP_ID_PRI = 0x13
EXT_CAP_ID_AMD_XXX = 0x14
EXT_CAP_ID_REBAR = 0x15
EXT_CAP_ID_DPA = 0x16
EXT_CAP_ID_TPH = 0x17
EXT_CAP_ID_LTR = 0x18
EXT_CAP_ID_SECPCI = 0x19
EXT_CAP_ID_PMUX = 0x1a
EXT_CAP_ID_PASID = 0x1b
EXT_CAP_ID_LNR = 0x1c
EXT_CAP_ID_DPC = 0x1d
EXT_CAP_ID_L1SS = 0x1e
EXT_CAP_ID_PTM = 0x1f
EXT_CAP_ID_MPCIE = 0x20
EXT_CAP_ID_FRS = 0x21
EXT_CAP_ID_RTR = 0x22
EXT_CAP_ID_DVSEC = 0x23
EXT_CAP_ID_VF_REBAR = 0x24
EXT_CAP_ID_DLF = 0x25
EXT_CAP_ID_PL_16GT = 0x26
EXT_CAP_ID_LMR = 0x27
EXT_CAP_ID_HIER_ID = 0x28
EXT_CAP_ID_NPEM = 0x29
EXT_CAP_ID_PL_32GT = 0x2a
EXT_CAP_ID_ALT_PROTO = 0x2b
EXT_CAP_ID_SFI = 0x2c
EXT_CAP_ID_SHADOW = 0x2d
EXT_CAP_ID_DOE = 0x2e
EXT_CAP_ID_DEV3 = 0x2f
EXT_CAP_ID_IDE = 0x30
EXT_CAP_ID_PL_64GT = 0x31

EXT_CAP_NAMES: Dict[int, str] = {
    EXT_CAP_ID_ERR: "Advanced Error Reporting",
    EXT_CAP_ID_VC: "Virtual Channel",
    EXT_CAP_ID_DSN: "Device Serial Number",
    EXT_CAP_ID_PWR: "Power Budgeting",
    EXT_CAP_ID_RCLD: "Root Complex Link Declaration",
    EXT_CAP_ID_RCILC: "Root Complex Internal Link Control",
    EXT_CAP_ID_RCEC: "Root Complex Event Collector Endpoint Association",
    EXT_CAP_ID_MFVC: "Multi-Function Virtual Channel",
    EXT_CAP_ID_VC9: "Virtual Channel (MFVC present)",
    EXT_CAP_ID_RCRB: "Root Complex Register Block Header",
    EXT_CAP_ID_VNDR: "Vendor Specific",
    EXT_CAP_ID_CAC: "Configuration Access Correlation",
    EXT_CAP_ID_ACS: "Access Control Services",
    EXT_CAP_ID_ARI: "Alternative Routing-ID Interpretation",
    EXT_CAP_ID_ATS: "Address Translation Services",
    EXT_CAP_ID_SRIOV: "Single Root I/O Virtualization",
    EXT_CAP_ID_MRIOV: "Multi-Root I/O Virtualization",
    EXT_CAP_ID_MCAST: "Multicast",
    EXT_CAP_ID_PRI: "Page Request Interface",
    EXT_CAP_ID_AMD_XXX: "Reserved for AMD",
    EXT_CAP_ID_REBAR: "Resizable BAR",
    EXT_CAP_ID_DPA: "Dynamic Power Allocation",
    EXT_CAP_ID_TPH: "TLP Processing Hints",
    EXT_CAP_ID_LTR: "Latency Tolerance Reporting",
    EXT_CAP_ID_SECPCI: "Secondary PCI Express",
    EXT_CAP_ID_PMUX: "Protocol Multiplexing",
    EXT_CAP_ID_PASID: "Process Address Space ID",
    EXT_CAP_ID_LNR: "LN Requester",
    EXT_CAP_ID_DPC: "Downstream Port Containment",
    EXT_CAP_ID_L1SS: "L1 PM Substates",
    EXT_CAP_ID_PTM: "Precision Time Measurement",
    EXT_CAP_ID_MPCIE: "PCI Express over M-PHY",
    EXT_CAP_ID_FRS: "FRS Queueing",
    EXT_CAP_ID_RTR: "Readiness Time Reporting",
    EXT_CAP_ID_DVSEC: "Designated Vendor-Specific",
    EXT_CAP_ID_VF_REBAR: "VF Resizable BAR",
    EXT_CAP_ID_DLF: "Data Link Feature",
    EXT_CAP_ID_PL_16GT: "Physical Layer 16.0 GT/s",
    EXT_CAP_ID_LMR: "Lane Margining at the Receiver",
    EXT_CAP_ID_HIER_ID: "Hierarchy ID",
    EXT_CAP_ID_NPEM: "Native PCIe Enclosure Management",
    EXT_CAP_ID_PL_32GT: "Physical Layer 32.0 GT/s",
    EXT_CAP_ID_ALT_PROTO: "Alternate Protocol",
    EXT_CAP_ID_SFI: "System Firmware Intermediary",
    EXT_CAP_ID_SHADOW: "Shadow Functions",
    EXT_CAP_ID_DOE: "Data Object Exchange",
    EXT_CAP_ID_DEV3: "Device 3",
    EXT_CAP_ID_IDE: "Integrity and Data Encryption",
    EXT_CAP_ID_PL_64GT: "Physical Layer 64.0 GT/s",
}


def cap_name(cap_id: int) -> str:
    """The spec's name for standard capability ``cap_id``."""
    return CAP_NAMES.get(cap_id, f"Unknown capability 0x{cap_id:02x}")


def ext_cap_name(cap_id: int) -> str:
    """The spec's name for extended capability ``cap_id``."""
    return EXT_CAP_NAMES.get(cap_id, f"Unknown extended capability 0x{cap_id:04x}")


# Longest possible walks: every standard capability takes at least 4 bytes of
# 0x40..0xff, every extended one at least 8 bytes of 0x100..0xfff.
_MAX_STD_CAPS = (256 - _STD_HEADER_END) // 4
_MAX_EXT_CAPS = (4096 - _EXT_START) // 8

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


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Capability:
    """One entry of a capability list: its ID, where it sits, its name.

    ``version`` is the 4-bit version of an extended capability's header
    (``None`` for standard ones); ``extended`` tells the two lists apart.
    """
    id: int
    offset: int
    name: str
    version: Optional[int] = None
    extended: bool = False


@dataclass(frozen=True)
class Bar:
    """A Base Address Register as the function (or VFIO) presents it.

    ``address`` is the base with the flag bits cleared (the 64-bit value for
    a 64-bit BAR, which also uses the next register).  Sizes are not probed
    here: VFIO reports them in the region info.
    """
    index: int
    is_io: bool
    is_64bit: bool
    prefetchable: bool
    address: int
    raw: int
    below_1m: bool = False

    @property
    def kind(self) -> str:
        """``io``, ``mem32`` or ``mem64`` (with a ``-pref`` suffix when prefetchable)."""
        if self.is_io:
            return "io"
        base = "mem64" if self.is_64bit else "mem32"
        return base + ("-pref" if self.prefetchable else "")


@dataclass(frozen=True)
class MsiCapability:
    """The MSI capability: message control decoded, address and data registers.

    ``multiple_message_capable``/``multiple_message_enable`` are vector counts
    (1, 2, 4 … 32), not the 3-bit encodings.  ``mask``/``pending`` exist only
    with per-vector masking.
    """
    offset: int
    control: int
    enabled: bool
    multiple_message_capable: int
    multiple_message_enable: int
    is_64bit: bool
    per_vector_masking: bool
    address: int
    data: int
    mask: Optional[int] = None
    pending: Optional[int] = None


@dataclass(frozen=True)
class MsixCapability:
    """The MSI-X capability: table size and where table and PBA live.

    ``table_bir``/``pba_bir`` are BAR indexes; offsets are from that BAR's start.
    """
    offset: int
    control: int
    enabled: bool
    function_mask: bool
    table_size: int
    table_bir: int
    table_offset: int
    pba_bir: int
    pba_offset: int


class PowerState(enum.IntEnum):
    """A function's power state in the PM control/status register."""
    D0 = 0
    D1 = 1
    D2 = 2
    D3HOT = 3

    def __str__(self) -> str:
        return "D3hot" if self is PowerState.D3HOT else self.name


_PME_STATES = ("D0", "D1", "D2", "D3hot", "D3cold")


@dataclass(frozen=True)
class PmCapability:
    """The Power Management capability: version, state and wake (PME) support.

    ``pme_support`` is the 5-bit field of PMC: bit 0 = PME# from D0, then D1,
    D2, D3hot, D3cold.
    """
    offset: int
    version: int
    power_state: PowerState
    pme_support: int
    d1_support: bool
    d2_support: bool
    no_soft_reset: bool
    pme_enable: bool
    pme_status: bool

    @property
    def pme_states(self) -> Tuple[str, ...]:
        """Names of the states the function can signal PME# from."""
        return tuple(s for i, s in enumerate(_PME_STATES) if self.pme_support >> i & 1)


class PcieType(enum.IntEnum):
    """Device/Port Type field of the PCI Express Capabilities register."""
    ENDPOINT = 0x0
    LEGACY_ENDPOINT = 0x1
    ROOT_PORT = 0x4
    UPSTREAM_PORT = 0x5
    DOWNSTREAM_PORT = 0x6
    PCIE_TO_PCI_BRIDGE = 0x7
    PCI_TO_PCIE_BRIDGE = 0x8
    RC_INTEGRATED_ENDPOINT = 0x9
    RC_EVENT_COLLECTOR = 0xa

    def __str__(self) -> str:
        return _PCIE_TYPE_NAMES[self]


_PCIE_TYPE_NAMES = {
    PcieType.ENDPOINT: "endpoint",
    PcieType.LEGACY_ENDPOINT: "legacy endpoint",
    PcieType.ROOT_PORT: "root port",
    PcieType.UPSTREAM_PORT: "upstream switch port",
    PcieType.DOWNSTREAM_PORT: "downstream switch port",
    PcieType.PCIE_TO_PCI_BRIDGE: "PCIe-to-PCI bridge",
    PcieType.PCI_TO_PCIE_BRIDGE: "PCI-to-PCIe bridge",
    PcieType.RC_INTEGRATED_ENDPOINT: "root complex integrated endpoint",
    PcieType.RC_EVENT_COLLECTOR: "root complex event collector",
}

# Link speed encodings of Link Capabilities/Status, in GT/s.
_LINK_SPEEDS = {1: 2.5, 2: 5.0, 3: 8.0, 4: 16.0, 5: 32.0, 6: 64.0}


@dataclass(frozen=True)
class PcieCapability:
    """The PCI Express capability: port type, payload sizes and the link.

    Payload and read-request sizes are in bytes; link speeds in GT/s.  Root
    complex integrated endpoints and event collectors have no link: their link
    fields are ``None``.  A speed encoding the spec does not define is ``None``.
    """
    offset: int
    version: int
    port_type: Union[PcieType, int]
    slot_implemented: bool
    max_payload_supported: int
    max_payload: int
    max_read_request: int
    flr: bool
    link_max_speed: Optional[float]
    link_max_width: Optional[int]
    link_speed: Optional[float]
    link_width: Optional[int]


@dataclass(frozen=True)
class SriovCapability:
    """The SR-IOV extended capability: how many VFs and how they are numbered.

    VF *n* (1-based) has routing ID ``PF + vf_offset + (n - 1) * vf_stride``.
    """
    offset: int
    version: int
    control: int
    vf_enable: bool
    vf_memory_enable: bool
    initial_vfs: int
    total_vfs: int
    num_vfs: int
    vf_offset: int
    vf_stride: int
    vf_device_id: int
    supported_page_sizes: int
    system_page_size: int


_AER_UNCORRECTABLE = {
    4: "Data Link Protocol Error", 5: "Surprise Down", 12: "Poisoned TLP",
    13: "Flow Control Protocol Error", 14: "Completion Timeout", 15: "Completer Abort",
    16: "Unexpected Completion", 17: "Receiver Overflow", 18: "Malformed TLP",
    19: "ECRC Error", 20: "Unsupported Request", 21: "ACS Violation",
    22: "Uncorrectable Internal Error", 23: "MC Blocked TLP", 24: "AtomicOp Egress Blocked",
    25: "TLP Prefix Blocked", 26: "Poisoned TLP Egress Blocked",
}
_AER_CORRECTABLE = {
    0: "Receiver Error", 6: "Bad TLP", 7: "Bad DLLP", 8: "REPLAY_NUM Rollover",
    12: "Replay Timer Timeout", 13: "Advisory Non-Fatal", 14: "Corrected Internal Error",
    15: "Header Log Overflow",
}


def _bit_names(value: int, names: Dict[int, str]) -> List[str]:
    return [names.get(bit, f"bit {bit}") for bit in range(32) if value >> bit & 1]


@dataclass(frozen=True)
class AerCapability:
    """The Advanced Error Reporting capability's error status and mask registers.

    Status bits are write-1-to-clear on the device.
    """
    offset: int
    version: int
    uncorrectable_status: int
    uncorrectable_mask: int
    uncorrectable_severity: int
    correctable_status: int
    correctable_mask: int

    @property
    def uncorrectable_errors(self) -> List[str]:
        """Names of the uncorrectable errors whose status bit is set."""
        return _bit_names(self.uncorrectable_status, _AER_UNCORRECTABLE)

    @property
    def correctable_errors(self) -> List[str]:
        """Names of the correctable errors whose status bit is set."""
        return _bit_names(self.correctable_status, _AER_CORRECTABLE)


# ----------------------------------------------------------------------------- PciConfig


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
        return self.read16(_VENDOR_ID)

    @property
    def device_id(self) -> int:
        return self.read16(_DEVICE_ID)

    @property
    def command(self) -> int:
        """The 16-bit command register."""
        return self.read16(_COMMAND)

    @command.setter
    def command(self, value: int) -> None:
        self.write16(_COMMAND, value)

    @property
    def status(self) -> int:
        """The 16-bit status register (its error bits are write-1-to-clear)."""
        return self.read16(_STATUS)

    @property
    def revision(self) -> int:
        return self.read8(_REVISION)

    @property
    def class_code(self) -> int:
        """24-bit class code: base class, subclass, programming interface."""
        return self.read32(_REVISION) >> 8

    @property
    def header_type(self) -> int:
        """Header layout: 0 endpoint, 1 PCI-to-PCI bridge, 2 CardBus bridge.

        The multi-function bit (bit 7 of the register) is in :attr:`multifunction`.
        """
        return self.read8(_HEADER_TYPE) & 0x7f

    @property
    def multifunction(self) -> bool:
        """Whether the device has functions other than 0 (header type bit 7)."""
        return bool(self.read8(_HEADER_TYPE) & 0x80)

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
        if htype == HEADER_NORMAL:
            return self.read16(_SUBSYSTEM_VENDOR_ID), self.read16(_SUBSYSTEM_ID)
        if htype == HEADER_CARDBUS:
            return self.read16(_CB_SUBSYSTEM_VENDOR_ID), self.read16(_CB_SUBSYSTEM_ID)
        cap = self.find(CAP_ID_SSVID)
        if cap is None:
            return None
        return self.read16(cap.offset + 4), self.read16(cap.offset + 6)

    @property
    def interrupt_line(self) -> int:
        """Interrupt line as firmware/the OS recorded it (informational only)."""
        return self.read8(_INTERRUPT_LINE)

    @property
    def interrupt_pin(self) -> int:
        """Legacy interrupt pin: 0 none, 1-4 INTA#-INTD#."""
        return self.read8(_INTERRUPT_PIN)

    def bars(self) -> List[Bar]:
        """The BAR registers decoded, without sizing them.

        The upper half of a 64-bit BAR is not listed on its own.  A BAR the
        function does not implement reads as 0 and is listed with address 0.
        """
        count = _BAR_COUNT.get(self.header_type, 0)
        result: List[Bar] = []
        index = 0
        while index < count:
            raw = self.read32(_BAR0 + 4 * index)
            if raw & _BAR_IO:
                result.append(Bar(index, True, False, False, raw & ~0x3 & 0xffffffff, raw))
                index += 1
                continue
            mtype = raw & _BAR_MEM_TYPE_MASK
            is64 = mtype == _BAR_MEM_TYPE_64
            address = raw & ~0xf & 0xffffffff
            if is64 and index + 1 < count:
                high = self.read32(_BAR0 + 4 * (index + 1))
                address |= high << 32
                raw |= high << 32
            result.append(Bar(index, False, is64, bool(raw & _BAR_PREFETCH), address, raw,
                              below_1m=mtype == _BAR_MEM_TYPE_1M))
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
        return self._command_bit(COMMAND_IO)

    @io_enable.setter
    def io_enable(self, on: bool) -> None:
        self._set_command_bit(COMMAND_IO, on)

    @property
    def memory_enable(self) -> bool:
        """Command bit 1: the function answers memory accesses to its BARs."""
        return self._command_bit(COMMAND_MEMORY)

    @memory_enable.setter
    def memory_enable(self, on: bool) -> None:
        self._set_command_bit(COMMAND_MEMORY, on)

    @property
    def bus_master(self) -> bool:
        """Command bit 2: the function may issue DMA and MSI writes."""
        return self._command_bit(COMMAND_MASTER)

    @bus_master.setter
    def bus_master(self, on: bool) -> None:
        self._set_command_bit(COMMAND_MASTER, on)

    @property
    def intx_disable(self) -> bool:
        """Command bit 10: the function may not assert its INTx# pin."""
        return self._command_bit(COMMAND_INTX_DISABLE)

    @intx_disable.setter
    def intx_disable(self, on: bool) -> None:
        self._set_command_bit(COMMAND_INTX_DISABLE, on)

    def enable(self, *, bus_master: bool = True, memory: bool = True, io: bool = False) -> int:
        """Turn on the chosen command bits in one write (none is turned off).

        Returns the command register as written.
        """
        cmd = self.command
        new = cmd
        if bus_master:
            new |= COMMAND_MASTER
        if memory:
            new |= COMMAND_MEMORY
        if io:
            new |= COMMAND_IO
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
        if not self.status & STATUS_CAP_LIST:
            return []
        head = _CB_CAPABILITY_LIST if self.header_type == HEADER_CARDBUS else _CAPABILITY_LIST
        pos = self.read8(head) & 0xfc        # the low two bits are reserved
        result: List[Capability] = []
        seen = set()
        prev = head
        while pos:
            if pos < _STD_HEADER_END or pos + 2 > self.size:
                raise CapabilityListError(
                    f"capability pointer at 0x{prev:x} is 0x{pos:x}: outside "
                    f"0x{_STD_HEADER_END:x}..0x{min(self.size, 256) - 1:x}")
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
        if self.size <= _EXT_START:
            return []
        result: List[Capability] = []
        seen = set()
        pos, prev = _EXT_START, None
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
            if pos < _EXT_START or pos + 4 > self.size:
                raise CapabilityListError(
                    f"extended capability at 0x{prev:x} points to 0x{pos:x}: outside "
                    f"0x{_EXT_START:x}..0x{self.size - 1:x}")
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

        Layout after message control (+2): address low (+4), then for 64-bit
        address high (+8), data (+0xc), mask (+0x10), pending (+0x14); for
        32-bit data (+8), mask (+0xc), pending (+0x10).
        """
        off = self._offset(cap, CAP_ID_MSI, False)
        if off is None:
            return None
        ctrl = self.read16(off + 2)
        is64 = bool(ctrl & 0x0080)
        pvm = bool(ctrl & 0x0100)
        address = self.read32(off + 4)
        if is64:
            address |= self.read32(off + 8) << 32
            data_off = off + 0xc
        else:
            data_off = off + 8
        mask = pending = None
        if pvm:
            mask = self.read32(data_off + 4)
            pending = self.read32(data_off + 8)
        return MsiCapability(
            offset=off, control=ctrl, enabled=bool(ctrl & 0x1),
            multiple_message_capable=1 << ((ctrl >> 1) & 0x7),
            multiple_message_enable=1 << ((ctrl >> 4) & 0x7),
            is_64bit=is64, per_vector_masking=pvm, address=address,
            data=self.read16(data_off), mask=mask, pending=pending)

    def msix(self, cap: Union[Capability, int, None] = None) -> Optional[MsixCapability]:
        """The MSI-X capability decoded, or None when the function has none.

        Message control (+2) holds table size − 1 (bits 10:0), function mask
        (bit 14) and enable (bit 15); +4 and +8 hold table and PBA locations as
        ``offset | BIR`` (BIR in bits 2:0).
        """
        off = self._offset(cap, CAP_ID_MSIX, False)
        if off is None:
            return None
        ctrl = self.read16(off + 2)
        table = self.read32(off + 4)
        pba = self.read32(off + 8)
        return MsixCapability(
            offset=off, control=ctrl, enabled=bool(ctrl & 0x8000),
            function_mask=bool(ctrl & 0x4000), table_size=(ctrl & 0x7ff) + 1,
            table_bir=table & 0x7, table_offset=table & ~0x7 & 0xffffffff,
            pba_bir=pba & 0x7, pba_offset=pba & ~0x7 & 0xffffffff)

    def pm(self, cap: Union[Capability, int, None] = None) -> Optional[PmCapability]:
        """The Power Management capability decoded, or None when absent.

        PMC (+2): version in bits 2:0, D1/D2 support in bits 9/10, PME support
        in bits 15:11.  PMCSR (+4): power state in bits 1:0, No_Soft_Reset in
        bit 3, PME enable bit 8, PME status bit 15.
        """
        off = self._offset(cap, CAP_ID_PM, False)
        if off is None:
            return None
        pmc = self.read16(off + 2)
        pmcsr = self.read16(off + 4)
        return PmCapability(
            offset=off, version=pmc & 0x7, power_state=PowerState(pmcsr & 0x3),
            pme_support=(pmc >> 11) & 0x1f, d1_support=bool(pmc & 0x0200),
            d2_support=bool(pmc & 0x0400), no_soft_reset=bool(pmcsr & 0x0008),
            pme_enable=bool(pmcsr & 0x0100), pme_status=bool(pmcsr & 0x8000))

    def pcie(self, cap: Union[Capability, int, None] = None) -> Optional[PcieCapability]:
        """The PCI Express capability decoded, or None for a conventional function.

        Capabilities register (+2): version bits 3:0, device/port type 7:4,
        slot implemented bit 8.  Device capabilities (+4): max payload
        supported 2:0, FLR bit 28.  Device control (+8): max payload 7:5, max
        read request 14:12.  Link capabilities (+0xc) and link status (+0x12):
        speed 3:0, width 9:4.
        """
        off = self._offset(cap, CAP_ID_EXP, False)
        if off is None:
            return None
        flags = self.read16(off + 2)
        raw_type = (flags >> 4) & 0xf
        try:
            port_type: Union[PcieType, int] = PcieType(raw_type)
        except ValueError:
            port_type = raw_type
        devcap = self.read32(off + 4)
        devctl = self.read16(off + 8)
        has_link = port_type not in (PcieType.RC_INTEGRATED_ENDPOINT,
                                     PcieType.RC_EVENT_COLLECTOR)
        max_speed = max_width = speed = width = None
        if has_link:
            lnkcap = self.read32(off + 0xc)
            lnksta = self.read16(off + 0x12)
            max_speed = _LINK_SPEEDS.get(lnkcap & 0xf)
            max_width = (lnkcap >> 4) & 0x3f
            speed = _LINK_SPEEDS.get(lnksta & 0xf)
            width = (lnksta >> 4) & 0x3f
        return PcieCapability(
            offset=off, version=flags & 0xf, port_type=port_type,
            slot_implemented=bool(flags & 0x0100),
            max_payload_supported=128 << (devcap & 0x7),
            max_payload=128 << ((devctl >> 5) & 0x7),
            max_read_request=128 << ((devctl >> 12) & 0x7),
            flr=bool(devcap & (1 << 28)),
            link_max_speed=max_speed, link_max_width=max_width,
            link_speed=speed, link_width=width)

    def sriov(self, cap: Union[Capability, int, None] = None) -> Optional[SriovCapability]:
        """The SR-IOV extended capability decoded, or None when absent.

        Control (+8): VF enable bit 0, VF memory space enable bit 3.  Then
        InitialVFs (+0xc), TotalVFs (+0xe), NumVFs (+0x10), First VF Offset
        (+0x14), VF Stride (+0x16), VF Device ID (+0x1a), supported and system
        page sizes (+0x1c, +0x20).
        """
        off = self._offset(cap, EXT_CAP_ID_SRIOV, True)
        if off is None:
            return None
        ctrl = self.read16(off + 0x8)
        return SriovCapability(
            offset=off, version=(self.read32(off) >> 16) & 0xf, control=ctrl,
            vf_enable=bool(ctrl & 0x1), vf_memory_enable=bool(ctrl & 0x8),
            initial_vfs=self.read16(off + 0xc), total_vfs=self.read16(off + 0xe),
            num_vfs=self.read16(off + 0x10), vf_offset=self.read16(off + 0x14),
            vf_stride=self.read16(off + 0x16), vf_device_id=self.read16(off + 0x1a),
            supported_page_sizes=self.read32(off + 0x1c),
            system_page_size=self.read32(off + 0x20))

    def aer(self, cap: Union[Capability, int, None] = None) -> Optional[AerCapability]:
        """The AER extended capability's status/mask registers, or None when absent.

        Uncorrectable status, mask, severity at +4, +8, +0xc; correctable
        status and mask at +0x10, +0x14.
        """
        off = self._offset(cap, EXT_CAP_ID_ERR, True)
        if off is None:
            return None
        return AerCapability(
            offset=off, version=(self.read32(off) >> 16) & 0xf,
            uncorrectable_status=self.read32(off + 0x4),
            uncorrectable_mask=self.read32(off + 0x8),
            uncorrectable_severity=self.read32(off + 0xc),
            correctable_status=self.read32(off + 0x10),
            correctable_mask=self.read32(off + 0x14))

    def serial_number(self) -> Optional[int]:
        """The 64-bit Device Serial Number (extended capability 0x03), or None."""
        cap = self.find_extended(EXT_CAP_ID_DSN)
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
        if cap.id == CAP_ID_PM:
            pm = self.pm(cap)
            assert pm is not None
            wake = " ".join(pm.pme_states) or "none"
            return (f"version {pm.version}, state {pm.power_state}, PME from {wake}, "
                    f"no-soft-reset {_yn(pm.no_soft_reset)}")
        if cap.id == CAP_ID_MSI:
            m = self.msi(cap)
            assert m is not None
            text = (f"enabled {_yn(m.enabled)}, vectors {m.multiple_message_enable}/"
                    f"{m.multiple_message_capable}, {'64' if m.is_64bit else '32'}-bit, "
                    f"per-vector masking {_yn(m.per_vector_masking)}, "
                    f"address 0x{m.address:x} data 0x{m.data:04x}")
            if m.mask is not None:
                text += f", mask 0x{m.mask:08x} pending 0x{m.pending or 0:08x}"
            return text
        if cap.id == CAP_ID_MSIX:
            x = self.msix(cap)
            assert x is not None
            return (f"enabled {_yn(x.enabled)}, function mask {_yn(x.function_mask)}, "
                    f"{x.table_size} vectors, table BAR{x.table_bir}+0x{x.table_offset:x}, "
                    f"PBA BAR{x.pba_bir}+0x{x.pba_offset:x}")
        if cap.id == CAP_ID_EXP:
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
        if cap.id == CAP_ID_SSVID:
            return f"{self.read16(cap.offset + 4):04x}:{self.read16(cap.offset + 6):04x}"
        return ""

    def _describe_ext_cap(self, cap: Capability) -> str:
        if cap.id == EXT_CAP_ID_ERR:
            a = self.aer(cap)
            assert a is not None
            text = (f"uncorrectable status 0x{a.uncorrectable_status:08x}, "
                    f"correctable status 0x{a.correctable_status:08x}")
            errs = a.uncorrectable_errors + a.correctable_errors
            return text + (f" ({', '.join(errs)})" if errs else "")
        if cap.id == EXT_CAP_ID_DSN:
            sn = self.read32(cap.offset + 4) | self.read32(cap.offset + 8) << 32
            return "serial " + "-".join(f"{b:02x}" for b in sn.to_bytes(8, "big"))
        if cap.id == EXT_CAP_ID_SRIOV:
            s = self.sriov(cap)
            assert s is not None
            return (f"VFs {s.num_vfs}/{s.total_vfs} (initial {s.initial_vfs}), "
                    f"enabled {_yn(s.vf_enable)}, first VF offset {s.vf_offset}, "
                    f"stride {s.vf_stride}, VF device {s.vf_device_id:04x}")
        if cap.id in (EXT_CAP_ID_VNDR, EXT_CAP_ID_DVSEC):
            word = self.read32(cap.offset + 4) if cap.offset + 8 <= self.size else 0
            if cap.id == EXT_CAP_ID_VNDR:
                return f"ID 0x{word & 0xffff:04x} rev {(word >> 16) & 0xf}"
            return f"vendor {word & 0xffff:04x} rev {(word >> 16) & 0xf}"
        return ""
