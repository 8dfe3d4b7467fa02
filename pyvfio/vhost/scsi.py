"""vhost-scsi: a LIO target's LUNs served over virtio-scsi by the kernel.

The target is made through configfs (``/sys/kernel/config/target``), with no
targetcli: a backstore (``core/rd_mcp_N/<name>`` ramdisk or
``core/fileio_N/<name>``) configured through its ``control`` file and
enabled; the vhost fabric's WWPN (``vhost/naa.<16 hex>``), a TPG
(``tpgt_N``), a LUN (``lun/lun_N`` linked to the backstore) and the TPG's
nexus (an initiator WWPN).  :class:`LioTarget` makes them and removes them
again in reverse order.

``/dev/vhost-scsi`` then serves that TPG once ``VHOST_SCSI_SET_ENDPOINT``
names the WWPN and TPG number.  Its vrings: 0 control, 1 event, 2.. requests.
Each request is a ``struct virtio_scsi_cmd_req`` plus data-out (readable),
then a ``struct virtio_scsi_cmd_resp`` plus data-in (writable).
"""
from __future__ import annotations

import errno as _errno
import os
import struct
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.sysfs import host
from pyvfio.core.uapi import ffi, lib
from pyvfio.vhost.backend import VhostBackend
from pyvfio.virtio.memory import DeviceMemory
from pyvfio.virtio.queue import SplitQueue

__all__ = ["VhostScsi", "LioTarget", "VirtioScsi", "ScsiResult", "CTL", "EVT", "REQ0"]

CTL, EVT, REQ0 = 0, 1, 2
GOOD, CHECK_CONDITION = 0x00, 0x02
ILLEGAL_REQUEST = 0x05
_REQ_LEN = ffi.sizeof("struct virtio_scsi_cmd_req")
_RESP_LEN = ffi.sizeof("struct virtio_scsi_cmd_resp")


class VhostScsi(VhostBackend):
    """``/dev/vhost-scsi``: endpoint, ABI version, events missed, workers."""

    node = "vhost-scsi"
    module = "vhost_scsi"
    num_queues = 130            # control, event and VHOST_SCSI_MAX_IO_VQ request queues
    device_type = "scsi"

    def get_abi_version(self) -> int:
        """VHOST_SCSI_GET_ABI_VERSION."""
        v = ffi.new("int *")
        self._ioctl(lib.VHOST_SCSI_GET_ABI_VERSION, v)
        return int(v[0])

    def _target(self, wwpn: str, tpgt: int) -> Any:
        t = ffi.new("struct vhost_scsi_target *")
        t.abi_version = lib.VHOST_SCSI_ABI_VERSION
        name = wwpn.encode()
        if len(name) >= ffi.sizeof(t.vhost_wwpn):
            raise errors.InvalidArgumentError(f"WWPN {wwpn!r} is too long", device=self.name)
        ffi.memmove(t.vhost_wwpn, name, len(name))
        t.vhost_tpgt = tpgt
        return t

    def set_endpoint(self, wwpn: str, tpgt: int) -> None:
        """VHOST_SCSI_SET_ENDPOINT: serve the vhost TPG ``tpgt`` of ``wwpn``."""
        try:
            self._ioctl(lib.VHOST_SCSI_SET_ENDPOINT, self._target(wwpn, tpgt))
        except errors.PyvfioError as exc:
            if exc.errno == _errno.ENODEV:
                raise errors.NotFoundError(
                    f"no vhost TPG {wwpn} tpgt_{tpgt} with a LUN and a nexus", errno=exc.errno,
                    op=exc.op, device=self.name,
                    remedy="make the LIO target first (LioTarget), or check the WWPN") from None
            if exc.errno == _errno.EEXIST:
                raise errors.BusyError(f"TPG {wwpn} tpgt_{tpgt} is served by another vhost-scsi "
                                       "device", errno=exc.errno, op=exc.op, device=self.name,
                                       remedy="clear the endpoint there first") from None
            raise
        self.endpoint: Optional[Tuple[str, int]] = (wwpn, tpgt)

    def clear_endpoint(self, wwpn: str, tpgt: int) -> None:
        """VHOST_SCSI_CLEAR_ENDPOINT."""
        self._ioctl(lib.VHOST_SCSI_CLEAR_ENDPOINT, self._target(wwpn, tpgt))
        self.endpoint = None

    def get_events_missed(self) -> int:
        """VHOST_SCSI_GET_EVENTS_MISSED: whether hotplug events were dropped (no event buffer)."""
        v = ffi.new("uint32_t *")
        self._ioctl(lib.VHOST_SCSI_GET_EVENTS_MISSED, v)
        return int(v[0])

    def set_events_missed(self, value: int = 0) -> None:
        """VHOST_SCSI_SET_EVENTS_MISSED."""
        self._ioctl(lib.VHOST_SCSI_SET_EVENTS_MISSED, ffi.new("uint32_t *", value))

    def _extra_info(self) -> Dict[str, object]:
        try:
            return {"abi_version": self.get_abi_version()}
        except errors.PyvfioError:
            return {}


# ----------------------------------------------------------------------------- LIO
def _wwn(seed: int) -> str:
    return f"naa.5001405{seed:09x}"[:20]


class LioTarget:
    """A LIO target for vhost-scsi, made through configfs and removed by :meth:`close`.

    ``backstore`` is ``"ramdisk"`` (``size`` bytes of kernel memory) or
    ``"fileio"`` (``path``, created with ``size`` bytes).  ``vendor`` and
    ``model`` become the LUN's INQUIRY vendor and product identification.
    """

    def __init__(self, *, backstore: str = "ramdisk", size: int = 8 << 20,
                 path: Optional[str] = None, name: str = "pyvfio", tpgt: int = 1,
                 vendor: str = "PYVFIO", model: str = "VHOST-TEST", hba: int = 77,
                 seed: Optional[int] = None) -> None:
        if backstore not in ("ramdisk", "fileio"):
            raise errors.InvalidArgumentError(f"unknown backstore {backstore!r}",
                                              remedy="use ramdisk or fileio")
        if backstore == "fileio" and not path:
            raise errors.InvalidArgumentError("a fileio backstore needs a path")
        self.root = host().sys_path("kernel", "config", "target")
        seed = os.getpid() if seed is None else seed
        self.wwpn = _wwn(seed)
        self.initiator = _wwn(seed + 1)
        self.tpgt = tpgt
        self.size = size
        self.block_size = 512
        self._undo: List[Tuple[str, ...]] = []     # (action, path[, value]) to undo, in order
        kind = "rd_mcp" if backstore == "ramdisk" else "fileio"
        self.hba_dir = os.path.join(self.root, "core", f"{kind}_{hba}")
        self.dev_dir = os.path.join(self.hba_dir, name)
        fabric = os.path.join(self.root, "vhost")
        self.tpg_dir = os.path.join(fabric, self.wwpn, f"tpgt_{tpgt}")
        try:
            if not os.path.isdir(self.root):
                raise errors.ModuleMissingError(
                    f"{self.root} is missing", path=self.root,
                    remedy="load target_core_mod (`modprobe vhost_scsi` does) and mount configfs: "
                           "`mount -t configfs none /sys/kernel/config`")
            self._mkdir(self.hba_dir)
            self._mkdir(self.dev_dir)
            if backstore == "ramdisk":
                pages = (size + 4095) // 4096
                self._write(os.path.join(self.dev_dir, "control"), f"rd_pages={pages}")
            else:
                self._write(os.path.join(self.dev_dir, "control"),
                            f"fd_dev_name={path},fd_dev_size={size}")
            self._write(os.path.join(self.dev_dir, "enable"), "1")
            self._write(os.path.join(self.dev_dir, "wwn", "vendor_id"), vendor)
            self._write(os.path.join(self.dev_dir, "wwn", "product_id"), model)
            if not os.path.isdir(fabric):
                self._mkdir(fabric)
            self._mkdir(os.path.dirname(self.tpg_dir))
            self._mkdir(self.tpg_dir)
            # the nexus goes before the LUN: it can only be dropped once no LUN is linked
            self._write(os.path.join(self.tpg_dir, "nexus"), self.initiator)
            self._undo.append(("write", os.path.join(self.tpg_dir, "nexus"), "NULL"))
            lun = os.path.join(self.tpg_dir, "lun", "lun_0")
            self._mkdir(lun)
            link = os.path.join(lun, "pyvfio_port")
            syscalls.symlink(self.dev_dir, link)
            self._undo.append(("unlink", link))
        except BaseException:
            self.close()
            raise

    def _mkdir(self, path: str) -> None:
        syscalls.mkdir(path)
        self._undo.append(("rmdir", path))

    def _write(self, path: str, text: str) -> None:
        fd = syscalls.open(path, os.O_WRONLY, device="LIO")
        try:
            syscalls.write(fd, text.encode(), device="LIO")
        finally:
            syscalls.close(fd)

    def close(self) -> None:
        """Remove what was made, in reverse order (the endpoint must be cleared first)."""
        first: Optional[BaseException] = None
        while self._undo:
            step = self._undo.pop()
            try:
                if step[0] == "rmdir":
                    syscalls.rmdir(step[1])
                elif step[0] == "unlink":
                    syscalls.unlink(step[1])
                else:
                    self._write(step[1], step[2])
            except OSError as exc:
                first = first or exc
        if first is not None:
            raise first

    def __enter__(self) -> "LioTarget":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ----------------------------------------------------------------------------- driver
class ScsiResult(NamedTuple):
    """A virtio-scsi response: virtio ``response``, SCSI ``status``, sense and data-in."""
    response: int
    status: int
    sense: bytes
    data: bytes
    resid: int

    @property
    def sense_key(self) -> int:
        return self.sense[2] & 0x0F if len(self.sense) > 2 else 0

    @property
    def asc(self) -> int:
        return self.sense[12] if len(self.sense) > 12 else 0


class VirtioScsi:
    """A virtio-scsi driver over vhost-scsi for one LIO target: one request queue."""

    def __init__(self, target: LioTarget, *, size: int = 64, path: Optional[str] = None) -> None:
        self.target = target
        self.memory = DeviceMemory(name="vhost-scsi memory")
        self.vhost: Optional[VhostScsi] = None
        self.queues: List[SplitQueue] = []
        self._tag = 0
        try:
            self.vhost = VhostScsi(path)
            want = 1 << lib.VIRTIO_F_VERSION_1
            self.vhost.set_features(want)
            for i, name in ((CTL, "control"), (EVT, "event"), (REQ0, "request")):
                self.queues.append(SplitQueue(self.memory, size, index=i, features=want,
                                              name=f"vhost-scsi {name}"))
            self.slots = self.memory.alloc(size * 8192, 4096)
            self.events = self.memory.alloc(8 * 16, 16)
            self.vhost.set_mem_table(self.memory)
            for i, q in enumerate(self.queues):
                self.vhost.setup_vring(i, q)
            evq = self.queues[EVT]
            for i in range(8):
                evq.add(writable=[self.events.sub(i * 16, 16)])
            evq.kick()
            self.vhost.set_endpoint(target.wwpn, target.tpgt)
        except BaseException:
            self.close()
            raise

    def command(self, cdb: bytes, *, data_out: bytes = b"", data_in: int = 0,
                lun: int = 0, timeout: float = 30.0) -> ScsiResult:
        """Send one SCSI command to ``lun``; returns the response and ``data_in`` bytes."""
        q = self.queues[REQ0]
        req = ffi.new("struct virtio_scsi_cmd_req *")
        req.lun[0] = 1
        req.lun[1] = self.target.tpgt
        req.lun[2] = 0x40 | (lun >> 8)
        req.lun[3] = lun & 0xFF
        self._tag += 1
        req.tag = self._tag
        req.task_attr = lib.VIRTIO_SCSI_S_SIMPLE
        ffi.memmove(req.cdb, cdb, len(cdb))
        slot = self.slots.sub(0, 8192) if len(data_out) + data_in + 256 <= 8192 else None
        if slot is None:
            raise errors.InvalidArgumentError("request does not fit an 8 KiB slot",
                                              device="vhost-scsi")
        slot.write(bytes(ffi.buffer(req)) + data_out)
        resp_off = (_REQ_LEN + len(data_out) + 15) // 16 * 16
        slot.write(bytes(_RESP_LEN + data_in), resp_off)
        readable = [slot.sub(0, _REQ_LEN)] + ([slot.sub(_REQ_LEN, len(data_out))] if data_out else [])
        writable = [slot.sub(resp_off, _RESP_LEN)] + (
            [slot.sub(resp_off + _RESP_LEN, data_in)] if data_in else [])
        q.add(readable, writable)
        q.kick()
        q.wait_for(1, timeout)
        resp = ffi.new("struct virtio_scsi_cmd_resp *")
        ffi.memmove(resp, slot.read(resp_off, _RESP_LEN), _RESP_LEN)
        data = slot.read(resp_off + _RESP_LEN, data_in) if data_in else b""
        return ScsiResult(int(resp.response), int(resp.status),
                          bytes(ffi.buffer(resp.sense))[:resp.sense_len], data, int(resp.resid))

    # -- a few commands ----------------------------------------------------------------------
    def inquiry(self) -> ScsiResult:
        return self.command(bytes([0x12, 0, 0, 0, 96, 0]), data_in=96)

    def read_capacity16(self) -> Tuple[int, int]:
        r = self.command(bytes([0x9E, 0x10]) + bytes(8) + struct.pack(">I", 32) + bytes(2),
                         data_in=32)
        last_lba, block = struct.unpack(">QI", r.data[:12])
        return last_lba + 1, block

    def write10(self, lba: int, data: bytes, block: int = 512) -> ScsiResult:
        return self.command(struct.pack(">BBIBHB", 0x2A, 0, lba, 0, len(data) // block, 0),
                            data_out=data)

    def read10(self, lba: int, blocks: int, block: int = 512) -> ScsiResult:
        return self.command(struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0),
                            data_in=blocks * block)

    def close(self) -> None:
        if self.vhost is not None and not self.vhost.closed:
            endpoint: Optional[Tuple[str, int]] = getattr(self.vhost, "endpoint", None)
            if endpoint:
                try:
                    self.vhost.clear_endpoint(*endpoint)
                except errors.PyvfioError:
                    pass
            self.vhost.close()
        for q in self.queues:
            q.close()
        self.memory.close()

    def __enter__(self) -> "VirtioScsi":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
