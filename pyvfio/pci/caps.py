"""PCI capabilities: their names, and the decoded values :class:`~pyvfio.pci.config.PciConfig` returns.

IDs, offsets and bits come from ``linux/pci_regs.h`` through the binding
(``lib.PCI_CAP_ID_*``, ``lib.PCI_EXT_CAP_ID_*``); a few IDs the 6.12 header
does not name yet appear as numbers, with the PCI Express Base
Specification's names.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from pyvfio.core.uapi import lib

__all__ = [
    "CAP_NAMES", "EXT_CAP_NAMES", "cap_name", "ext_cap_name",
    "Capability", "Bar", "MsiCapability", "MsixCapability", "PmCapability", "PowerState",
    "PcieCapability", "PcieType", "SriovCapability", "AerCapability",
]

CAP_NAMES: Dict[int, str] = {
    0x00: "Null",
    lib.PCI_CAP_ID_PM: "Power Management",
    lib.PCI_CAP_ID_AGP: "AGP",
    lib.PCI_CAP_ID_VPD: "Vital Product Data",
    lib.PCI_CAP_ID_SLOTID: "Slot Identification",
    lib.PCI_CAP_ID_MSI: "MSI",
    lib.PCI_CAP_ID_CHSWP: "CompactPCI Hot Swap",
    lib.PCI_CAP_ID_PCIX: "PCI-X",
    lib.PCI_CAP_ID_HT: "HyperTransport",
    lib.PCI_CAP_ID_VNDR: "Vendor Specific",
    lib.PCI_CAP_ID_DBG: "Debug Port",
    lib.PCI_CAP_ID_CCRC: "CompactPCI Central Resource Control",
    lib.PCI_CAP_ID_SHPC: "PCI Standard Hot-Plug Controller",
    lib.PCI_CAP_ID_SSVID: "Bridge Subsystem Vendor ID",
    lib.PCI_CAP_ID_AGP3: "AGP 8x",
    lib.PCI_CAP_ID_SECDEV: "Secure Device",
    lib.PCI_CAP_ID_EXP: "PCI Express",
    lib.PCI_CAP_ID_MSIX: "MSI-X",
    lib.PCI_CAP_ID_SATA: "SATA Data/Index Configuration",
    lib.PCI_CAP_ID_AF: "Advanced Features",
    lib.PCI_CAP_ID_EA: "Enhanced Allocation",
    0x15: "Flattening Portal Bridge",
}

EXT_CAP_NAMES: Dict[int, str] = {
    lib.PCI_EXT_CAP_ID_ERR: "Advanced Error Reporting",
    lib.PCI_EXT_CAP_ID_VC: "Virtual Channel",
    lib.PCI_EXT_CAP_ID_DSN: "Device Serial Number",
    lib.PCI_EXT_CAP_ID_PWR: "Power Budgeting",
    lib.PCI_EXT_CAP_ID_RCLD: "Root Complex Link Declaration",
    lib.PCI_EXT_CAP_ID_RCILC: "Root Complex Internal Link Control",
    lib.PCI_EXT_CAP_ID_RCEC: "Root Complex Event Collector Endpoint Association",
    lib.PCI_EXT_CAP_ID_MFVC: "Multi-Function Virtual Channel",
    lib.PCI_EXT_CAP_ID_VC9: "Virtual Channel (MFVC present)",
    lib.PCI_EXT_CAP_ID_RCRB: "Root Complex Register Block Header",
    lib.PCI_EXT_CAP_ID_VNDR: "Vendor Specific",
    lib.PCI_EXT_CAP_ID_CAC: "Configuration Access Correlation",
    lib.PCI_EXT_CAP_ID_ACS: "Access Control Services",
    lib.PCI_EXT_CAP_ID_ARI: "Alternative Routing-ID Interpretation",
    lib.PCI_EXT_CAP_ID_ATS: "Address Translation Services",
    lib.PCI_EXT_CAP_ID_SRIOV: "Single Root I/O Virtualization",
    lib.PCI_EXT_CAP_ID_MRIOV: "Multi-Root I/O Virtualization",
    lib.PCI_EXT_CAP_ID_MCAST: "Multicast",
    lib.PCI_EXT_CAP_ID_PRI: "Page Request Interface",
    lib.PCI_EXT_CAP_ID_AMD_XXX: "Reserved for AMD",
    lib.PCI_EXT_CAP_ID_REBAR: "Resizable BAR",
    lib.PCI_EXT_CAP_ID_DPA: "Dynamic Power Allocation",
    lib.PCI_EXT_CAP_ID_TPH: "TLP Processing Hints",
    lib.PCI_EXT_CAP_ID_LTR: "Latency Tolerance Reporting",
    lib.PCI_EXT_CAP_ID_SECPCI: "Secondary PCI Express",
    lib.PCI_EXT_CAP_ID_PMUX: "Protocol Multiplexing",
    lib.PCI_EXT_CAP_ID_PASID: "Process Address Space ID",
    0x1c: "LN Requester",
    lib.PCI_EXT_CAP_ID_DPC: "Downstream Port Containment",
    lib.PCI_EXT_CAP_ID_L1SS: "L1 PM Substates",
    lib.PCI_EXT_CAP_ID_PTM: "Precision Time Measurement",
    0x20: "PCI Express over M-PHY",
    0x21: "FRS Queueing",
    0x22: "Readiness Time Reporting",
    lib.PCI_EXT_CAP_ID_DVSEC: "Designated Vendor-Specific",
    0x24: "VF Resizable BAR",
    lib.PCI_EXT_CAP_ID_DLF: "Data Link Feature",
    lib.PCI_EXT_CAP_ID_PL_16GT: "Physical Layer 16.0 GT/s",
    0x27: "Lane Margining at the Receiver",
    0x28: "Hierarchy ID",
    lib.PCI_EXT_CAP_ID_NPEM: "Native PCIe Enclosure Management",
    lib.PCI_EXT_CAP_ID_PL_32GT: "Physical Layer 32.0 GT/s",
    0x2b: "Alternate Protocol",
    0x2c: "System Firmware Intermediary",
    0x2d: "Shadow Functions",
    lib.PCI_EXT_CAP_ID_DOE: "Data Object Exchange",
    0x2f: "Device 3",
    0x30: "Integrity and Data Encryption",
    0x31: "Physical Layer 64.0 GT/s",
}


def cap_name(cap_id: int) -> str:
    """The spec's name for standard capability ``cap_id``."""
    return CAP_NAMES.get(cap_id, f"Unknown capability 0x{cap_id:02x}")


def ext_cap_name(cap_id: int) -> str:
    """The spec's name for extended capability ``cap_id``."""
    return EXT_CAP_NAMES.get(cap_id, f"Unknown extended capability 0x{cap_id:04x}")


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
    ENDPOINT = lib.PCI_EXP_TYPE_ENDPOINT
    LEGACY_ENDPOINT = lib.PCI_EXP_TYPE_LEG_END
    ROOT_PORT = lib.PCI_EXP_TYPE_ROOT_PORT
    UPSTREAM_PORT = lib.PCI_EXP_TYPE_UPSTREAM
    DOWNSTREAM_PORT = lib.PCI_EXP_TYPE_DOWNSTREAM
    PCIE_TO_PCI_BRIDGE = lib.PCI_EXP_TYPE_PCI_BRIDGE
    PCI_TO_PCIE_BRIDGE = lib.PCI_EXP_TYPE_PCIE_BRIDGE
    RC_INTEGRATED_ENDPOINT = lib.PCI_EXP_TYPE_RC_END
    RC_EVENT_COLLECTOR = lib.PCI_EXP_TYPE_RC_EC

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
