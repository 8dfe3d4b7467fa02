"""A minimal userspace NVMe driver: admin queue, Identify, clean shutdown.

The controller's registers sit at the start of BAR0 (NVMe base
specification, "Controller Registers"):

====== ===== ==============================================================
0x00   CAP   capabilities: MQES (max queue entries − 1), TO (ready timeout,
             500 ms units), DSTRD (doorbell stride 4 << n), CSS, MPSMIN/MAX
0x08   VS    version: major 31:16, minor 15:8, tertiary 7:0
0x14   CC    configuration: EN, CSS, MPS, SHN (shutdown), IOSQES, IOCQES
0x1C   CSTS  status: RDY, CFS (fatal), SHST (shutdown state)
0x24   AQA   admin queue sizes (entries − 1): ASQS 11:0, ACQS 27:16
0x28   ASQ   admin submission queue base (64-bit, page aligned)
0x30   ACQ   admin completion queue base (64-bit, page aligned)
0x1000       doorbells: SQ y tail at 0x1000 + 2y·stride,
             CQ y head at 0x1000 + (2y+1)·stride
====== ===== ==============================================================

The host places 64-byte commands in a submission queue and rings its tail
doorbell; the controller posts 16-byte completions whose phase bit flips on
each pass through the completion queue, and raises the queue's interrupt.
The admin completion queue always uses interrupt vector 0: this driver
connects MSI-X vector 0 to an eventfd and sleeps on it.  I/O queue pairs
(:meth:`Nvme.create_io_queue`) name their own vector in Create I/O
Completion Queue.

The device may come through VFIO (a :class:`pyvfio.Device`) or UIO (a
:class:`pyvfio.uio.UioDevice` bound to ``uio_msi``): the driver needs
``bar(0)``, ``config``, ``msix`` (``enable``/``wait``/``disable``) and
``dma`` (None: the controller gets bus addresses from the device's
``bus_address`` or, failing that, physical addresses).
"""
from __future__ import annotations

import struct
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from pyvfio import errors
from pyvfio.core import mmio
from pyvfio.core.memory import PAGE_SIZE, DmaBuffer

__all__ = [
    "Nvme", "NvmeError", "QueuePair", "Capabilities", "Completion", "ControllerInfo",
    "NamespaceInfo",
    "LbaFormat", "status_text", "CLASS_CODE",
]

CLASS_CODE = 0x010802            # mass storage / non-volatile memory / NVM Express

# controller registers
CAP, VS, INTMS, INTMC, CC, CSTS, NSSR, AQA, ASQ, ACQ = (
    0x00, 0x08, 0x0C, 0x10, 0x14, 0x1C, 0x20, 0x24, 0x28, 0x30)
DOORBELLS = 0x1000

CC_EN = 1 << 0
CC_CSS_SHIFT, CC_MPS_SHIFT, CC_AMS_SHIFT = 4, 7, 11
CC_SHN_SHIFT, CC_SHN_MASK = 14, 3 << 14
CC_SHN_NORMAL, CC_SHN_ABRUPT = 1, 2
CC_IOSQES_SHIFT, CC_IOCQES_SHIFT = 16, 20
CSTS_RDY, CSTS_CFS = 1 << 0, 1 << 1
CSTS_SHST_SHIFT, CSTS_SHST_MASK = 2, 3 << 2
SHST_NORMAL, SHST_OCCURRING, SHST_COMPLETE = 0, 1, 2

SQE_SIZE, CQE_SIZE = 64, 16
MPS_4K = 4096

# admin opcodes
OPC_DELETE_IO_SQ, OPC_CREATE_IO_SQ, OPC_GET_LOG_PAGE = 0x00, 0x01, 0x02
OPC_DELETE_IO_CQ, OPC_CREATE_IO_CQ, OPC_IDENTIFY = 0x04, 0x05, 0x06
OPC_ABORT, OPC_SET_FEATURES, OPC_GET_FEATURES = 0x08, 0x09, 0x0A
OPC_ASYNC_EVENT_REQUEST = 0x0C

# NVM command set opcodes (I/O queues)
OPC_FLUSH, OPC_WRITE, OPC_READ = 0x00, 0x01, 0x02
IO_OPCODES = {OPC_FLUSH: "Flush", OPC_WRITE: "Write", OPC_READ: "Read"}

ADMIN_OPCODES = {
    OPC_DELETE_IO_SQ: "Delete I/O Submission Queue",
    OPC_CREATE_IO_SQ: "Create I/O Submission Queue",
    OPC_GET_LOG_PAGE: "Get Log Page", OPC_DELETE_IO_CQ: "Delete I/O Completion Queue",
    OPC_CREATE_IO_CQ: "Create I/O Completion Queue", OPC_IDENTIFY: "Identify",
    OPC_ABORT: "Abort", OPC_SET_FEATURES: "Set Features", OPC_GET_FEATURES: "Get Features",
    OPC_ASYNC_EVENT_REQUEST: "Asynchronous Event Request",
}

# Identify CNS values
CNS_NAMESPACE, CNS_CONTROLLER, CNS_ACTIVE_NAMESPACES = 0x00, 0x01, 0x02
IDENTIFY_SIZE = 4096

# status code types and the codes this driver names (NVMe base specification, "Status Field")
SCT_GENERIC, SCT_COMMAND_SPECIFIC, SCT_MEDIA, SCT_PATH, SCT_VENDOR = 0, 1, 2, 3, 7
SCT_NAMES = {
    SCT_GENERIC: "Generic Command Status", SCT_COMMAND_SPECIFIC: "Command Specific Status",
    SCT_MEDIA: "Media and Data Integrity Errors", SCT_PATH: "Path Related Status",
    SCT_VENDOR: "Vendor Specific",
}
STATUS_CODES: Dict[Tuple[int, int], str] = {
    (0, 0x00): "Successful Completion",
    (0, 0x01): "Invalid Command Opcode",
    (0, 0x02): "Invalid Field in Command",
    (0, 0x03): "Command ID Conflict",
    (0, 0x04): "Data Transfer Error",
    (0, 0x05): "Commands Aborted due to Power Loss Notification",
    (0, 0x06): "Internal Error",
    (0, 0x07): "Command Abort Requested",
    (0, 0x08): "Command Aborted due to SQ Deletion",
    (0, 0x09): "Command Aborted due to Failed Fused Command",
    (0, 0x0A): "Command Aborted due to Missing Fused Command",
    (0, 0x0B): "Invalid Namespace or Format",
    (0, 0x0C): "Command Sequence Error",
    (0, 0x0D): "Invalid SGL Segment Descriptor",
    (0, 0x0E): "Invalid Number of SGL Descriptors",
    (0, 0x0F): "Data SGL Length Invalid",
    (0, 0x10): "Metadata SGL Length Invalid",
    (0, 0x11): "SGL Descriptor Type Invalid",
    (0, 0x12): "Invalid Use of Controller Memory Buffer",
    (0, 0x13): "PRP Offset Invalid",
    (0, 0x14): "Atomic Write Unit Exceeded",
    (0, 0x15): "Operation Denied",
    (0, 0x16): "SGL Offset Invalid",
    (0, 0x18): "Host Identifier Inconsistent Format",
    (0, 0x19): "Keep Alive Timer Expired",
    (0, 0x1A): "Keep Alive Timeout Invalid",
    (0, 0x1B): "Command Aborted due to Preempt and Abort",
    (0, 0x1C): "Sanitize Failed",
    (0, 0x1D): "Sanitize In Progress",
    (0, 0x1E): "SGL Data Block Granularity Invalid",
    (0, 0x1F): "Command Not Supported for Queue in CMB",
    (0, 0x20): "Namespace is Write Protected",
    (0, 0x21): "Command Interrupted",
    (0, 0x22): "Transient Transport Error",
    (0, 0x80): "LBA Out of Range",
    (0, 0x81): "Capacity Exceeded",
    (0, 0x82): "Namespace Not Ready",
    (0, 0x83): "Reservation Conflict",
    (0, 0x84): "Format In Progress",
    (1, 0x00): "Completion Queue Invalid",
    (1, 0x01): "Invalid Queue Identifier",
    (1, 0x02): "Invalid Queue Size",
    (1, 0x03): "Abort Command Limit Exceeded",
    (1, 0x05): "Asynchronous Event Request Limit Exceeded",
    (1, 0x06): "Invalid Firmware Slot",
    (1, 0x07): "Invalid Firmware Image",
    (1, 0x08): "Invalid Interrupt Vector",
    (1, 0x09): "Invalid Log Page",
    (1, 0x0A): "Invalid Format",
    (1, 0x0B): "Firmware Activation Requires Conventional Reset",
    (1, 0x0C): "Invalid Queue Deletion",
    (1, 0x0D): "Feature Identifier Not Saveable",
    (1, 0x0E): "Feature Not Changeable",
    (1, 0x0F): "Feature Not Namespace Specific",
    (1, 0x10): "Firmware Activation Requires NVM Subsystem Reset",
    (1, 0x11): "Firmware Activation Requires Controller Level Reset",
    (1, 0x12): "Firmware Activation Requires Maximum Time Violation",
    (1, 0x13): "Firmware Activation Prohibited",
    (1, 0x14): "Overlapping Range",
    (1, 0x15): "Namespace Insufficient Capacity",
    (1, 0x16): "Namespace Identifier Unavailable",
    (1, 0x18): "Namespace Already Attached",
    (1, 0x19): "Namespace Is Private",
    (1, 0x1A): "Namespace Not Attached",
    (1, 0x1B): "Thin Provisioning Not Supported",
    (1, 0x1C): "Controller List Invalid",
    (1, 0x80): "Conflicting Attributes",
    (1, 0x81): "Invalid Protection Information",
    (1, 0x82): "Attempted Write to Read Only Range",
    (2, 0x80): "Write Fault",
    (2, 0x81): "Unrecovered Read Error",
    (2, 0x82): "End-to-end Guard Check Error",
    (2, 0x83): "End-to-end Application Tag Check Error",
    (2, 0x84): "End-to-end Reference Tag Check Error",
    (2, 0x85): "Compare Failure",
    (2, 0x86): "Access Denied",
    (2, 0x87): "Deallocated or Unwritten Logical Block",
    (3, 0x00): "Internal Path Error",
    (3, 0x01): "Asymmetric Access Persistent Loss",
    (3, 0x02): "Asymmetric Access Inaccessible",
    (3, 0x03): "Asymmetric Access Transition",
    (3, 0x60): "Controller Pathing Error",
    (3, 0x70): "Host Pathing Error",
    (3, 0x71): "Command Aborted By Host",
}


def status_text(sct: int, sc: int) -> str:
    """The name of status code ``sc`` of type ``sct``, e.g. ``Invalid Field in Command``."""
    name = STATUS_CODES.get((sct, sc))
    if name is not None:
        return name
    kind = SCT_NAMES.get(sct, f"status code type {sct:#x}")
    return f"{kind}: status code {sc:#04x}"


class NvmeError(errors.PyvfioError):
    """The controller completed a command with an error status."""

    def __init__(self, message: str, *, sct: int = 0, sc: int = 0, dnr: bool = False,
                 more: bool = False, opcode: Optional[int] = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.sct, self.sc, self.dnr, self.more, self.opcode = sct, sc, dnr, more, opcode

    @property
    def status_text(self) -> str:
        return status_text(self.sct, self.sc)


# ---------------------------------------------------------------------------
# decoded structures
# ---------------------------------------------------------------------------

class Capabilities(NamedTuple):
    """The CAP register decoded."""
    raw: int
    max_queue_entries: int     # MQES + 1
    contiguous_queues: bool    # CQR
    timeout: float             # TO in seconds: worst-case wait for CSTS.RDY
    doorbell_stride: int       # bytes between doorbells: 4 << DSTRD
    command_sets: int          # CSS bit mask (bit 0: NVM command set)
    page_size_min: int         # 4 KiB << MPSMIN
    page_size_max: int         # 4 KiB << MPSMAX

    @classmethod
    def decode(cls, cap: int) -> "Capabilities":
        return cls(cap, (cap & 0xFFFF) + 1, bool(cap >> 16 & 1), ((cap >> 24) & 0xFF) * 0.5,
                   4 << ((cap >> 32) & 0xF), (cap >> 37) & 0xFF,
                   MPS_4K << ((cap >> 48) & 0xF), MPS_4K << ((cap >> 52) & 0xF))


class Completion(NamedTuple):
    """One 16-byte completion queue entry."""
    result: int        # DW0, command specific
    sq_head: int
    sq_id: int
    cid: int
    phase: int
    status: int        # bits 15:1 of DW3's upper half: SC, SCT, CRD, M, DNR

    @classmethod
    def decode(cls, data: bytes) -> "Completion":
        dw0, _dw1, dw2, dw3 = struct.unpack("<4I", data)
        return cls(dw0, dw2 & 0xFFFF, dw2 >> 16, dw3 & 0xFFFF, (dw3 >> 16) & 1, dw3 >> 17)

    @property
    def sc(self) -> int:
        return self.status & 0xFF

    @property
    def sct(self) -> int:
        return (self.status >> 8) & 0x7

    @property
    def more(self) -> bool:
        return bool(self.status >> 13 & 1)

    @property
    def dnr(self) -> bool:
        return bool(self.status >> 14 & 1)

    @property
    def ok(self) -> bool:
        return self.sc == 0 and self.sct == 0


def _text(data: bytes) -> str:
    return data.decode("ascii", "replace").rstrip(" \0")


class ControllerInfo(NamedTuple):
    """The Identify Controller data structure (CNS 01h), main fields."""
    vendor_id: int
    subsystem_vendor_id: int
    serial: str
    model: str
    firmware: str
    ieee_oui: int
    max_transfer_pages: int     # MDTS: 2**n minimum pages (0: no limit)
    controller_id: int
    version: Tuple[int, int, int]
    namespaces: int             # NN: highest namespace identifier
    sq_entry_size: int          # required SQE size in bytes (SQES 3:0)
    cq_entry_size: int          # required CQE size in bytes (CQES 3:0)
    subnqn: str
    raw: bytes

    @classmethod
    def decode(cls, data: bytes) -> "ControllerInfo":
        vid, ssvid = struct.unpack_from("<HH", data, 0)
        oui = int.from_bytes(data[73:76], "little")
        cntlid, ver = struct.unpack_from("<HI", data, 78)
        nn, = struct.unpack_from("<I", data, 516)
        return cls(vid, ssvid, _text(data[4:24]), _text(data[24:64]), _text(data[64:72]), oui,
                   data[77], cntlid, (ver >> 16, (ver >> 8) & 0xFF, ver & 0xFF), nn,
                   1 << (data[512] & 0xF), 1 << (data[513] & 0xF), _text(data[768:1024]),
                   bytes(data))


class LbaFormat(NamedTuple):
    """One LBA format of a namespace: block size, metadata bytes, relative performance."""
    block_size: int
    metadata_size: int
    relative_performance: int


class NamespaceInfo(NamedTuple):
    """The Identify Namespace data structure (CNS 00h), main fields."""
    nsid: int
    size: int                  # NSZE, in logical blocks
    capacity: int              # NCAP, in logical blocks
    utilization: int           # NUSE, in logical blocks
    lba_format_index: int
    lba_formats: Tuple[LbaFormat, ...]
    raw: bytes

    @property
    def lba_format(self) -> LbaFormat:
        return self.lba_formats[self.lba_format_index]

    @property
    def block_size(self) -> int:
        return self.lba_format.block_size

    @property
    def size_bytes(self) -> int:
        return self.size * self.block_size

    @classmethod
    def decode(cls, nsid: int, data: bytes) -> "NamespaceInfo":
        nsze, ncap, nuse = struct.unpack_from("<3Q", data, 0)
        nlbaf, flbas = data[25] + 1, data[26]
        index = (flbas & 0xF) | (((flbas >> 5) & 0x3) << 4 if nlbaf > 16 else 0)
        formats = []
        for i in range(min(nlbaf, 64)):
            dw, = struct.unpack_from("<I", data, 128 + 4 * i)
            lbads = (dw >> 16) & 0xFF
            formats.append(LbaFormat(1 << lbads if lbads else 0, dw & 0xFFFF, (dw >> 24) & 3))
        return cls(nsid, nsze, ncap, nuse, index, tuple(formats), bytes(data))


# ---------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------


class QueuePair:
    """A submission queue and its completion queue, sharing one identifier.

    ``vector`` is the interrupt the completion queue raises (None: polled).
    Counts of interrupts received are kept in :attr:`interrupts`.
    """

    def __init__(self, nvme: "Nvme", qid: int, depth: int, vector: Optional[int]) -> None:
        self.nvme = nvme
        self.qid = qid
        self.depth = depth
        self.vector = vector
        self.interrupts = 0
        self.sq, self.sq_addr = nvme._alloc(depth * SQE_SIZE)
        self.cq, self.cq_addr = nvme._alloc(depth * CQE_SIZE)
        self.reset()

    def reset(self) -> None:
        self.sq.fill(0)
        self.cq.fill(0)
        self.sq_tail = self.sq_head = self.cq_head = 0
        self.phase = 1
        self.cid = 0

    @property
    def names(self) -> Dict[int, str]:
        return ADMIN_OPCODES if self.qid == 0 else IO_OPCODES

    def submit(self, opcode: int, *, nsid: int = 0, prp1: int = 0, prp2: int = 0,
               cdw10: int = 0, cdw11: int = 0, cdw12: int = 0, cdw13: int = 0,
               cdw14: int = 0, cdw15: int = 0, timeout: Optional[float] = None) -> Completion:
        """Submit one command and wait for its completion (NvmeError on an error status)."""
        nvme = self.nvme
        if (self.sq_tail + 1) % self.depth == self.sq_head:
            raise errors.BusyError(f"submission queue {self.qid} is full", device=nvme.name,
                                   remedy=None)
        cid = self.cid
        self.cid = (self.cid + 1) & 0xFFFF
        sqe = struct.pack("<IIQQQQ6I", opcode | cid << 16, nsid, 0, 0, prp1, prp2,
                          cdw10, cdw11, cdw12, cdw13, cdw14, cdw15)
        self.sq.write(self.sq_tail * SQE_SIZE, sqe)
        self.sq_tail = (self.sq_tail + 1) % self.depth
        mmio.wmb()                      # the command in memory before the doorbell rings
        nvme.bar.write32(nvme.sq_doorbell(self.qid), self.sq_tail)
        cqe = self._wait(cid, opcode, nvme.timeout if timeout is None else timeout)
        if not cqe.ok:
            what = self.names.get(opcode, "command")
            raise NvmeError(
                f"{what} (opcode {opcode:#04x}) failed: {status_text(cqe.sct, cqe.sc)} "
                f"(SCT {cqe.sct:#x}, SC {cqe.sc:#04x}{', do not retry' if cqe.dnr else ''})",
                sct=cqe.sct, sc=cqe.sc, dnr=cqe.dnr, more=cqe.more, opcode=opcode,
                device=nvme.name, op=what)
        return cqe

    def reap(self) -> Optional[Completion]:
        """The next completion if the controller posted one (phase matches), else None."""
        off = self.cq_head * CQE_SIZE
        dw3, = struct.unpack("<I", self.cq.read(off + 12, 4))
        if (dw3 >> 16) & 1 != self.phase:
            return None
        mmio.dma_rmb()                  # the phase bit before the rest of the entry
        cqe = Completion.decode(self.cq.read(off, CQE_SIZE))
        self.cq_head += 1
        if self.cq_head == self.depth:
            self.cq_head = 0
            self.phase ^= 1
        self.sq_head = cqe.sq_head
        self.nvme.bar.write32(self.nvme.cq_doorbell(self.qid), self.cq_head)
        return cqe

    def _wait(self, cid: int, opcode: int, timeout: float) -> Completion:
        nvme = self.nvme
        deadline = time.monotonic() + timeout
        what = f"{self.names.get(opcode, 'command')} (cid {cid}, queue {self.qid})"
        msix = nvme._msix if self.vector is not None else None
        while True:
            left = deadline - time.monotonic()
            if msix is not None:
                # sleep until the queue's vector fires, then look at the queue
                try:
                    self.interrupts += msix.wait(self.vector, timeout=max(left, 0.0))
                except errors.TimedOutError:
                    raise errors.TimedOutError(
                        f"no completion of {what} (no MSI-X interrupt on vector "
                        f"{self.vector}) within {timeout:g} s (CSTS={nvme.csts:#x})",
                        device=nvme.name,
                        remedy="check bus mastering and that MSI-X is enabled") from None
            elif left < 0:
                raise errors.TimedOutError(f"no completion of {what} within {timeout:g} s "
                                           f"(CSTS={nvme.csts:#x})", device=nvme.name)
            while True:
                cqe = self.reap()
                if cqe is None:
                    break
                if cqe.cid == cid and cqe.sq_id == self.qid:
                    return cqe
            if msix is None:
                time.sleep(0.0002)


class Nvme:
    """Drive an NVMe controller opened through VFIO (``device`` is a :class:`pyvfio.Device`).

    Construction resets the controller, sets up the admin queue pair with
    ``queue_depth`` entries and enables it.  Admin commands complete by MSI-X
    vector 0 (``interrupts=True``) or by polling the completion queue.
    :meth:`close` shuts the controller down and frees the queues; the
    device itself stays open (its owner closes it).
    """

    def __init__(self, device: Any, *, queue_depth: int = 32, timeout: float = 10.0,
                 interrupts: bool = True, vectors: int = 1) -> None:
        self.device = device
        self.name = device.name
        self.timeout = timeout
        self.bar = device.bar(0)
        self.cap = Capabilities.decode(self._read64(CAP))
        if self.cap.raw == 0xFFFFFFFFFFFFFFFF:
            raise errors.NotFoundError("BAR0 reads all ones: the controller does not answer",
                                       device=self.name, remedy="check the device is an NVMe "
                                       "controller and was not surprise-removed")
        if not self.cap.command_sets & 1:
            raise errors.NotSupportedError("the controller lacks the NVM command set",
                                           device=self.name)
        if self.cap.page_size_min > MPS_4K:
            raise errors.NotSupportedError(
                f"the controller's smallest memory page is {self.cap.page_size_min} bytes; "
                "this driver uses 4 KiB pages", device=self.name)
        self.depth = max(2, min(queue_depth, self.cap.max_queue_entries, PAGE_SIZE // SQE_SIZE))
        self.use_interrupts = interrupts
        self._buffers: List[DmaBuffer] = []
        self._mapped: List[Any] = []
        self._enabled = False           # accepting admin commands
        self._configured = False        # CC.EN set by us: the controller may DMA to the queues
        self._msix = None
        self.io_queues: Dict[int, QueuePair] = {}
        try:
            device.config.enable(bus_master=True, memory=True)   # DMA and MSI-X: bus-master writes
            self.admin_queue = QueuePair(self, 0, self.depth, 0 if interrupts else None)
            self._data, self._data_addr = self._alloc(IDENTIFY_SIZE)
            if interrupts:
                self._msix = device.msix
                self._msix.enable(vectors)
            self.disable()
            self._enable()
        except BaseException:
            try:
                if self._configured:
                    self.disable()
            except errors.PyvfioError:
                pass                    # the first error is the one to report
            finally:
                self._release()
            raise

    @property
    def interrupts(self) -> int:
        """MSI-X interrupts received for the admin queue (vector 0)."""
        return self.admin_queue.interrupts

    # -- registers -----------------------------------------------------------------
    def _read64(self, off: int) -> int:
        # two 32-bit reads, low half first: every controller must accept those
        return int(self.bar.read32(off) | self.bar.read32(off + 4) << 32)

    def _write64(self, off: int, value: int) -> None:
        self.bar.write32(off, value & 0xFFFFFFFF)
        self.bar.write32(off + 4, value >> 32)

    @property
    def version(self) -> Tuple[int, int, int]:
        """(major, minor, tertiary) from the VS register."""
        vs = self.bar.read32(VS)
        return vs >> 16, (vs >> 8) & 0xFF, vs & 0xFF

    @property
    def cc(self) -> int:
        return int(self.bar.read32(CC))

    @property
    def csts(self) -> int:
        return int(self.bar.read32(CSTS))

    def sq_doorbell(self, qid: int) -> int:
        """Offset in BAR0 of submission queue ``qid``'s tail doorbell."""
        return DOORBELLS + 2 * qid * self.cap.doorbell_stride

    def cq_doorbell(self, qid: int) -> int:
        """Offset in BAR0 of completion queue ``qid``'s head doorbell."""
        return DOORBELLS + (2 * qid + 1) * self.cap.doorbell_stride

    # -- memory ----------------------------------------------------------------------
    def _alloc(self, size: int) -> Tuple[DmaBuffer, int]:
        """A zeroed DMA buffer and the address the controller sees it at."""
        buf = DmaBuffer(size)
        self._buffers.append(buf)
        if self.device.dma is None:             # no-IOMMU: one page, physical address
            bus_address = getattr(self.device, "bus_address", None)
            return buf, bus_address(buf) if bus_address is not None else buf.physical_address(0)
        mapping = self.device.dma.map(buf)
        self._mapped.append(mapping)
        return buf, mapping.iova

    # -- enable / disable ----------------------------------------------------------------
    def _wait_csts(self, what: str, done: Callable[[int], object], timeout: float) -> int:
        deadline = time.monotonic() + timeout
        delay = 0.0001
        while True:
            csts = self.csts
            if csts == 0xFFFFFFFF:
                raise errors.NotFoundError(f"the controller stopped answering while waiting "
                                           f"for {what}", device=self.name, remedy=None)
            if done(csts):
                return csts
            if csts & CSTS_CFS and "RDY=0" not in what:
                raise errors.PyvfioError(f"controller fatal status (CSTS.CFS) while waiting for "
                                         f"{what} (CSTS={csts:#x})", device=self.name,
                                         remedy="reset the device (device.reset()) and retry")
            if time.monotonic() > deadline:
                raise errors.TimedOutError(
                    f"NVMe controller did not reach {what} within {timeout:g} s "
                    f"(CC={self.cc:#x} CSTS={csts:#x})", device=self.name)
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def _ready_timeout(self) -> float:
        return max(self.cap.timeout, 0.5)

    def disable(self) -> None:
        """Clear CC.EN and wait for CSTS.RDY=0: the controller resets, queues are gone."""
        cc = self.cc
        # a transition in progress must finish first: wait until RDY follows EN
        self._wait_csts(f"CSTS.RDY={cc & CC_EN}", lambda s: (s & CSTS_RDY) == (cc & CC_EN)
                        or s & CSTS_CFS, self._ready_timeout())
        if cc & CC_EN:
            self.bar.write32(CC, cc & ~(CC_EN | CC_SHN_MASK))
        self._wait_csts("CSTS.RDY=0", lambda s: not s & CSTS_RDY, self._ready_timeout())
        self._enabled = self._configured = False

    def _enable(self) -> None:
        aq = self.admin_queue
        aq.reset()
        self.io_queues.clear()          # a disabled controller forgets its I/O queues
        self.bar.write32(AQA, (self.depth - 1) << 16 | (self.depth - 1))
        self._write64(ASQ, aq.sq_addr)
        self._write64(ACQ, aq.cq_addr)
        cc = (CC_EN | 0 << CC_CSS_SHIFT | 0 << CC_MPS_SHIFT | 0 << CC_AMS_SHIFT
              | 6 << CC_IOSQES_SHIFT | 4 << CC_IOCQES_SHIFT)     # NVM set, 4 KiB pages, 64/16 B
        self._configured = True
        self.bar.write32(CC, cc)
        self._wait_csts("CSTS.RDY=1", lambda s: s & CSTS_RDY, self._ready_timeout())
        self._enabled = True

    def shutdown(self) -> None:
        """Normal shutdown: CC.SHN=01b, then wait for CSTS.SHST=10b (complete)."""
        if not self._enabled:
            return
        cc = self.cc
        self.bar.write32(CC, (cc & ~CC_SHN_MASK) | CC_SHN_NORMAL << CC_SHN_SHIFT)
        self._wait_csts("CSTS.SHST=complete (normal shutdown)",
                        lambda s: (s & CSTS_SHST_MASK) >> CSTS_SHST_SHIFT == SHST_COMPLETE,
                        max(self.timeout, self._ready_timeout()))
        self._enabled = False

    # -- admin commands --------------------------------------------------------------------
    def admin(self, opcode: int, *, nsid: int = 0, prp1: int = 0, prp2: int = 0,
              cdw10: int = 0, cdw11: int = 0, cdw12: int = 0, cdw13: int = 0,
              cdw14: int = 0, cdw15: int = 0, timeout: Optional[float] = None) -> Completion:
        """Submit one admin command and wait for its completion.

        Raises :class:`NvmeError` when it completes with an error status.
        """
        if not self._enabled:
            raise errors.ClosedError(f"NVMe controller {self.name}")
        return self.admin_queue.submit(opcode, nsid=nsid, prp1=prp1, prp2=prp2, cdw10=cdw10,
                                       cdw11=cdw11, cdw12=cdw12, cdw13=cdw13, cdw14=cdw14,
                                       cdw15=cdw15, timeout=timeout)

    # -- I/O queues ---------------------------------------------------------------------------
    def create_io_queue(self, qid: int = 1, *, depth: Optional[int] = None,
                        vector: Optional[int] = 1) -> QueuePair:
        """Create I/O completion queue ``qid`` (raising ``vector``; None: polled, no
        interrupts) and I/O submission queue ``qid`` that completes into it."""
        if qid in self.io_queues or not 0 < qid < 0xFFFF:
            raise errors.InvalidArgumentError(f"I/O queue {qid} exists or is invalid",
                                              device=self.name)
        depth = max(2, min(depth or self.depth, self.cap.max_queue_entries,
                           PAGE_SIZE // SQE_SIZE))
        polled = vector is None or self._msix is None
        q = QueuePair(self, qid, depth, None if polled else vector)
        self.admin(OPC_CREATE_IO_CQ, prp1=q.cq_addr, cdw10=(depth - 1) << 16 | qid,
                   cdw11=(0 if vector is None or polled else vector) << 16
                   | (0 if polled else 2) | 1)   # PC, IEN
        try:
            self.admin(OPC_CREATE_IO_SQ, prp1=q.sq_addr, cdw10=(depth - 1) << 16 | qid,
                       cdw11=qid << 16 | 1)                       # CQID, physically contiguous
        except BaseException:
            self.admin(OPC_DELETE_IO_CQ, cdw10=qid)
            raise
        self.io_queues[qid] = q
        return q

    def delete_io_queue(self, qid: int) -> None:
        """Delete I/O submission queue ``qid`` and then its completion queue."""
        if self.io_queues.pop(qid, None) is None:
            raise errors.InvalidArgumentError(f"no I/O queue {qid}", device=self.name)
        self.admin(OPC_DELETE_IO_SQ, cdw10=qid)
        self.admin(OPC_DELETE_IO_CQ, cdw10=qid)

    def _io(self, opcode: int, qid: int, nsid: int, lba: int, blocks: int,
            buf: DmaBuffer, addr: int, block_size: int) -> Completion:
        q = self.io_queues.get(qid)
        if q is None:
            raise errors.InvalidArgumentError(f"no I/O queue {qid}", device=self.name,
                                              remedy="create it with create_io_queue()")
        size = blocks * block_size
        if not 0 < blocks <= 0x10000 or size > 2 * PAGE_SIZE or size > buf.size:
            raise errors.InvalidArgumentError(
                f"{blocks} blocks of {block_size} bytes do not fit this driver's two-page "
                f"transfers", device=self.name)
        prp2 = addr + PAGE_SIZE if size > PAGE_SIZE else 0
        return q.submit(opcode, nsid=nsid, prp1=addr, prp2=prp2, cdw10=lba & 0xFFFFFFFF,
                        cdw11=lba >> 32, cdw12=blocks - 1)

    def write(self, lba: int, data: bytes, *, nsid: int = 1, qid: int = 1,
              block_size: int = 512) -> None:
        """Write ``data`` (whole blocks, at most a page) at ``lba`` through I/O queue ``qid``."""
        if not data or len(data) % block_size or len(data) > PAGE_SIZE:
            raise errors.InvalidArgumentError(
                f"write of {len(data)} bytes: whole {block_size}-byte blocks, at most a page",
                device=self.name)
        self._data.fill(0)
        self._data.write(0, data)
        self._io(OPC_WRITE, qid, nsid, lba, len(data) // block_size, self._data,
                 self._data_addr, block_size)

    def read(self, lba: int, blocks: int = 1, *, nsid: int = 1, qid: int = 1,
             block_size: int = 512) -> bytes:
        """Read ``blocks`` blocks at ``lba`` through I/O queue ``qid`` (at most a page)."""
        if blocks * block_size > PAGE_SIZE:
            raise errors.InvalidArgumentError("reads of at most a page", device=self.name)
        self._data.fill(0)
        self._io(OPC_READ, qid, nsid, lba, blocks, self._data, self._data_addr, block_size)
        return self._data.read(0, blocks * block_size)

    # -- Identify ---------------------------------------------------------------------------
    def identify(self, cns: int, nsid: int = 0, cntid: int = 0) -> bytes:
        """Run Identify with ``cns`` and return its 4 KiB data structure."""
        self._data.fill(0)
        self.admin(OPC_IDENTIFY, nsid=nsid, prp1=self._data_addr, cdw10=cns | cntid << 16)
        return self._data.read(0, IDENTIFY_SIZE)

    def identify_controller(self) -> ControllerInfo:
        """Identify Controller (CNS 01h): model, serial, firmware, vendor, namespaces..."""
        return ControllerInfo.decode(self.identify(CNS_CONTROLLER))

    def active_namespaces(self, start: int = 0) -> List[int]:
        """Active namespace IDs above ``start`` (CNS 02h, up to 1024 of them)."""
        data = self.identify(CNS_ACTIVE_NAMESPACES, nsid=start)
        ids = struct.unpack("<1024I", data)
        return list(ids[:ids.index(0)] if 0 in ids else ids)

    def identify_namespace(self, nsid: int = 1) -> NamespaceInfo:
        """Identify Namespace (CNS 00h): size in blocks and LBA format of ``nsid``."""
        if not 0 < nsid < 0xFFFFFFFF:
            raise errors.InvalidArgumentError(f"invalid namespace ID {nsid}", device=self.name)
        return NamespaceInfo.decode(nsid, self.identify(CNS_NAMESPACE, nsid=nsid))

    # -- lifetime ------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return not self._buffers and not self._configured

    def _release(self) -> None:
        first: Optional[BaseException] = None
        if self._msix is not None:
            try:
                if not self.device.closed:
                    self._msix.disable()
            except errors.PyvfioError as exc:
                first = exc
            self._msix = None
        dma = self.device.dma
        for m in self._mapped:
            try:
                if dma is not None and not dma.closed:
                    dma.unmap(m)
            except errors.PyvfioError as exc:
                first = first or exc
        self._mapped = []
        for buf in self._buffers:
            buf.close()
        self._buffers = []
        if first is not None:
            raise first

    def close(self) -> None:
        """Shut the controller down (normal shutdown), disable it, free the queues."""
        if self.closed:
            return
        try:
            if self._configured and not self.device.closed:
                try:
                    self.shutdown()
                finally:
                    self.disable()     # no DMA may reach the queues once they are freed
        finally:
            self._enabled = self._configured = False
            self._release()

    def __enter__(self) -> "Nvme":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self.close()
        except errors.PyvfioError:
            if exc_type is None:
                raise

    def __repr__(self) -> str:
        state = "enabled" if self._enabled else "disabled"
        return f"<Nvme {self.name} {state} admin depth {self.depth}>"
