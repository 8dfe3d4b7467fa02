"""A vDPA device through ``/dev/vhost-vdpa-N``.

vhost-vdpa puts a vDPA device (a simulator, a VDUSE device served by a
process, a vDPA NIC's virtqueues) behind the vhost ioctls, plus its own
``VHOST_VDPA_*`` ioctls for what a virtio transport does: the device status,
the config space, the device id, vring enable and sizes, and address spaces.

Rules the kernel enforces and this module enforces first, with an error that
names the rule (:class:`~pyvfio.errors.VdpaStatusError`):

* the status follows ACKNOWLEDGE -> DRIVER -> FEATURES_OK -> DRIVER_OK; a bit
  is never cleared except by a reset to 0 (the kernel answers EINVAL);
* features are fixed once FEATURES_OK is set (the kernel answers EBUSY);
* vrings are programmed after FEATURES_OK and before DRIVER_OK;
* a vring index past the number of queues is refused (the kernel: ENOBUFS);
* ring and buffer addresses are IOVAs: memory reaches the device only through
  IOTLB v2 messages (with an address-space id) for ranges inside the
  device's IOVA range (``VHOST_VDPA_GET_IOVA_RANGE``).

Opening the node resets the device, and closing it resets it again.
"""
from __future__ import annotations

import errno as _errno
import os
import threading
import time
import weakref
from typing import Any, Dict, List, Optional, Tuple, Union

from pyvfio import errors
from pyvfio.core import argsz
from pyvfio.core.eventfd import EventFd
from pyvfio.core.memory import DmaBuffer
from pyvfio.core.space import IoAddressSpace
from pyvfio.core.sysfs import host, link_name
from pyvfio.core.uapi import ffi, lib
from pyvfio.vhost.backend import VhostBackend
from pyvfio.virtio.memory import DeviceMemory
from pyvfio.virtio.queue import PackedQueue, Virtqueue

__all__ = ["VhostVdpa", "VdpaAddressSpace", "IotlbMemory", "vhost_vdpa_path", "check_not_open",
           "status_names", "STATUS_ORDER"]

ACKNOWLEDGE = lib.VIRTIO_CONFIG_S_ACKNOWLEDGE
DRIVER = lib.VIRTIO_CONFIG_S_DRIVER
FEATURES_OK = lib.VIRTIO_CONFIG_S_FEATURES_OK
DRIVER_OK = lib.VIRTIO_CONFIG_S_DRIVER_OK
NEEDS_RESET = lib.VIRTIO_CONFIG_S_NEEDS_RESET
FAILED = lib.VIRTIO_CONFIG_S_FAILED
#: The order in which a driver sets the status bits.
STATUS_ORDER = (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK)
_STATUS_NAMES = ((ACKNOWLEDGE, "ACKNOWLEDGE"), (DRIVER, "DRIVER"), (FEATURES_OK, "FEATURES_OK"),
                 (DRIVER_OK, "DRIVER_OK"), (NEEDS_RESET, "NEEDS_RESET"), (FAILED, "FAILED"))

RULE_NO_CLEAR = "status bits are only cleared by a reset to 0"
RULE_ORDER = "status bits are set in order ACKNOWLEDGE -> DRIVER -> FEATURES_OK -> DRIVER_OK"
RULE_FEATURES = "features are fixed once FEATURES_OK is set"
RULE_VRINGS = "vrings are programmed after FEATURES_OK and before DRIVER_OK"

#: Backend features the library asks for when the device offers them.
WANTED_BACKEND_FEATURES = tuple(getattr(lib, n) for n in (
    "VHOST_BACKEND_F_IOTLB_MSG_V2", "VHOST_BACKEND_F_IOTLB_BATCH", "VHOST_BACKEND_F_IOTLB_ASID",
    "VHOST_BACKEND_F_SUSPEND", "VHOST_BACKEND_F_RESUME",
    "VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK") if hasattr(lib, n))


def status_names(status: int) -> str:
    """``ACKNOWLEDGE|DRIVER|...`` for a status byte ("0" for a reset device)."""
    names = [n for bit, n in _STATUS_NAMES if status & bit]
    return "|".join(names) or "0"


# -- finding the node, and who holds it ------------------------------------------------------

def vhost_vdpa_path(name: str, timeout: float = 5.0) -> str:
    """The ``/dev/vhost-vdpa-N`` node of vDPA device ``name``, waiting for udev/devtmpfs."""
    d = host().sys_path("bus", "vdpa", "devices", name)
    deadline = time.monotonic() + timeout
    while True:
        if os.path.isdir(d):
            nodes = [e for e in os.listdir(d) if e.startswith("vhost-vdpa-")]
            if nodes:
                path = host().dev_path(nodes[0])
                if os.path.exists(path):
                    return path
            else:
                driver = link_name(os.path.join(d, "driver"))
                if driver is not None and driver != "vhost_vdpa" and time.monotonic() > deadline:
                    raise errors.NotBoundError(
                        f"vDPA device {name} is bound to {driver}, not vhost_vdpa",
                        device=name, remedy=f"echo vhost_vdpa > {d}/driver_override; rebind: "
                                            f"echo {name} > /sys/bus/vdpa/drivers/{driver}/unbind; "
                                            f"echo {name} > /sys/bus/vdpa/drivers/vhost_vdpa/bind")
        if time.monotonic() > deadline:
            if not os.path.isdir(d):
                raise errors.NotFoundError(f"no vDPA device {name}", device=name,
                                           remedy="create it: `pyvfio vdpa dev add NAME MGMTDEV`")
            raise errors.ModuleMissingError(
                f"vDPA device {name} has no vhost-vdpa node", device=name,
                remedy="load the vhost-vdpa driver: `modprobe vhost_vdpa`")
        time.sleep(0.01)


def vdpa_name_of(path: str) -> Optional[str]:
    """The vDPA device behind a ``/dev/vhost-vdpa-N`` node (from sysfs)."""
    node = os.path.basename(path)
    return link_name(host().sys_path("class", "vhost-vdpa", node, "device"))


_open_lock = threading.Lock()
_open: Dict[str, "weakref.WeakSet[VhostVdpa]"] = {}


def check_not_open(name: str) -> None:
    """Refuse to delete vDPA device ``name`` while a vhost-vdpa file of it is open.

    ``VDPA_CMD_DEV_DEL`` waits until every open file of the device is closed,
    so deleting a device this process holds would never return.
    """
    with _open_lock:
        holders = [d for d in _open.get(name, ()) if not d.closed]
    if holders:
        raise errors.BusyError(
            f"vDPA device {name} is still open here ({holders[0].path})", device=name,
            op="VDPA_CMD_DEV_DEL",
            remedy="close the VhostVdpa first (leave its `with` block): the kernel waits for "
                   "every open /dev/vhost-vdpa-N of the device before deleting it")
    d = host().sys_path("bus", "vdpa", "devices", name)
    try:
        nodes = [host().dev_path(e) for e in os.listdir(d) if e.startswith("vhost-vdpa-")]
    except OSError:
        return
    pids = _holders(nodes)
    if pids:
        raise errors.BusyError(
            f"vDPA device {name} is open in process(es) {', '.join(map(str, pids))} "
            f"({nodes[0]})", device=name, op="VDPA_CMD_DEV_DEL",
            remedy="stop those processes or have them close the device first: the kernel "
                   "waits for every open file of the device before deleting it")


def _holders(nodes: List[str]) -> List[int]:
    proc = host().proc_path()
    out: List[int] = []
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        fd_dir = os.path.join(proc, pid, "fd")
        try:
            links = [os.readlink(os.path.join(fd_dir, f)) for f in os.listdir(fd_dir)]
        except OSError:
            continue
        if any(link in nodes for link in links):
            out.append(int(pid))
    return out


# -- address spaces ------------------------------------------------------------------------------

class VdpaAddressSpace(IoAddressSpace):
    """One address space (ASID) of a vhost-vdpa device, mapped by IOTLB v2 messages.

    The usable range is what ``VHOST_VDPA_GET_IOVA_RANGE`` reports; a mapping
    outside it is refused before a message is written.
    """

    def __init__(self, device: "VhostVdpa", asid: int) -> None:
        super().__init__()
        self.device = device
        self.asid = asid
        self.name = f"{device.name} ASID {asid}"

    def _ranges(self) -> List[Tuple[int, int]]:
        return [self.device.iova_range()]

    def _map(self, vaddr: int, iova: int, size: int, readable: bool, writable: bool) -> None:
        perm = ((lib.VHOST_ACCESS_RO if readable else 0) | (lib.VHOST_ACCESS_WO if writable else 0))
        self.device.iotlb_update(iova, size, vaddr, perm, asid=self.asid)

    def _unmap(self, iova: int, size: int) -> Optional[int]:
        self.device.iotlb_invalidate(iova, size, asid=self.asid)
        return size

    def close(self) -> None:
        """Invalidate every mapping (while the device is open) and stop accepting new ones."""
        if self._closed:
            return
        if not self.device.closed:
            self.unmap_all()
        self._closed = True


class IotlbMemory(DeviceMemory):
    """Device memory whose buffers sit at IOVAs of one vhost-vdpa address space.

    Every buffer added (or allocated for rings and data) is mapped by an IOTLB
    update first, at an IOVA the address space's allocator picks inside the
    device's IOVA range, so a descriptor's address is always an IOVA the
    device can translate.
    """

    def __init__(self, space: VdpaAddressSpace) -> None:
        super().__init__(name=f"{space.name} memory")
        self.space = space

    def add(self, buffer: DmaBuffer, addr: Optional[int] = None) -> int:
        if buffer.kind == "anonymous":
            raise errors.InvalidArgumentError(
                "vDPA devices in VA mode (vdpa_sim, VDUSE) map only shared, file-backed memory",
                device=self.space.name, remedy='allocate DmaBuffer(size, "memfd")')
        m = self.space.map(buffer, iova=addr)
        try:
            return super().add(buffer, m.iova)
        except BaseException:
            self.space.unmap(m)
            raise


# -- the device ------------------------------------------------------------------------------------

class VhostVdpa(VhostBackend):
    """An open ``/dev/vhost-vdpa-N``: a vDPA device driven as a virtio transport.

    Give the vDPA device ``name`` (its node is found through sysfs) or the
    node's ``path``.  The device is reset by the open; the backend features
    the library uses (IOTLB v2 messages, batching, ASIDs, suspend/resume) are
    negotiated where offered.
    """

    node = "vhost-vdpa"
    module = "vhost_vdpa"

    def __init__(self, name: Optional[str] = None, *, path: Optional[str] = None,
                 timeout: float = 5.0) -> None:
        if path is None:
            if name is None:
                raise errors.InvalidArgumentError("VhostVdpa needs a vDPA device name or a path")
            path = vhost_vdpa_path(name, timeout)
        self.vdpa_name = name or vdpa_name_of(path) or os.path.basename(path)
        self._spaces: Dict[int, VdpaAddressSpace] = {}
        self._memories: List[IotlbMemory] = []
        self.config_event: Optional[EventFd] = None
        self.status = 0
        self._range: Optional[Tuple[int, int]] = None
        super().__init__(path, owner=True)
        self.name = f"{self.vdpa_name} ({os.path.basename(path)})"
        try:
            self.device_id = self.get_device_id()
            self.num_queues = self.get_vqs_count()
            self.device_type = {lib.VIRTIO_ID_NET: "net", lib.VIRTIO_ID_BLOCK: "blk"}.get(
                self.device_id, "")
            self.status = self.get_status()
            offered = self.get_backend_features()
            want = 0
            for bit in WANTED_BACKEND_FEATURES:
                want |= offered & (1 << bit)
            self.set_backend_features(want)
        except BaseException:
            self.close()
            raise
        with _open_lock:
            _open.setdefault(self.vdpa_name, weakref.WeakSet()).add(self)

    def _open(self) -> int:
        try:
            return super()._open()
        except errors.ModuleMissingError as exc:
            raise errors.NotFoundError(
                f"{self.path} does not exist", errno=exc.errno, op="open", path=self.path,
                remedy="create a vDPA device (`pyvfio vdpa dev add`) with vhost_vdpa loaded "
                       "(`modprobe vhost_vdpa`)") from None
        except errors.PyvfioError as exc:
            if exc.errno == _errno.ETIMEDOUT:
                raise errors.TimedOutError(
                    f"opening {self.path} timed out: the device's reset was not answered",
                    op="open", path=self.path,
                    remedy="a VDUSE device must be served (VduseDevice.serve()) before its "
                           "vhost-vdpa node is opened") from None
            raise

    def _release(self) -> None:
        for space in list(self._spaces.values()):
            try:
                space.close()
            except errors.PyvfioError:
                pass
        if self.config_event is not None:
            self.config_event.close()
            self.config_event = None
        super()._release()

    def close(self) -> None:
        """Close the queues set up on the device and the memory it handed out, unmap every
        IOVA, close the node (the kernel resets the device).

        A failed step (an IOTLB invalidate refused) does not stop the others:
        the node is closed all the same (closing it drops every mapping in the
        kernel) and the first error is raised afterwards.
        """
        first: Optional[BaseException] = None
        for q in list(self.queues.values()):
            try:
                q.close()
            except errors.PyvfioError as exc:
                first = first or exc
        self.queues.clear()
        for mem in self._memories:
            try:
                mem.close()
            except errors.PyvfioError as exc:
                first = first or exc
        self._memories.clear()
        super().close()
        if first is not None:
            raise first

    # -- plumbing ------------------------------------------------------------------------------
    def _get(self, request: int, ctype: str) -> int:
        v = ffi.new(ctype + " *")
        self._ioctl(request, v)
        return int(v[0])

    def _state(self, request: int, index: int, num: int = 0) -> int:
        s = ffi.new("struct vhost_vring_state *", {"index": index, "num": num})
        self._ioctl(request, s)
        return int(s.num)

    # -- identity and sizes --------------------------------------------------------------------
    def get_device_id(self) -> int:
        """VHOST_VDPA_GET_DEVICE_ID: the virtio device id (1 net, 2 block)."""
        return self._get(lib.VHOST_VDPA_GET_DEVICE_ID, "uint32_t")

    def get_vqs_count(self) -> int:
        """VHOST_VDPA_GET_VQS_COUNT: the number of virtqueues."""
        return self._get(lib.VHOST_VDPA_GET_VQS_COUNT, "uint32_t")

    def get_config_size(self) -> int:
        """VHOST_VDPA_GET_CONFIG_SIZE: bytes of the device's config space."""
        return self._get(lib.VHOST_VDPA_GET_CONFIG_SIZE, "uint32_t")

    def get_vring_num(self) -> int:
        """VHOST_VDPA_GET_VRING_NUM: the largest queue size the device takes."""
        return self._get(lib.VHOST_VDPA_GET_VRING_NUM, "uint16_t")

    def get_vring_size(self, index: int) -> int:
        """VHOST_VDPA_GET_VRING_SIZE: the largest size of vring ``index``."""
        self._check_index(index)
        return self._state(lib.VHOST_VDPA_GET_VRING_SIZE, index)

    def get_group_num(self) -> int:
        """VHOST_VDPA_GET_GROUP_NUM: the number of virtqueue groups."""
        return self._get(lib.VHOST_VDPA_GET_GROUP_NUM, "uint32_t")

    def get_as_num(self) -> int:
        """VHOST_VDPA_GET_AS_NUM: the number of address spaces."""
        return self._get(lib.VHOST_VDPA_GET_AS_NUM, "unsigned int")

    def get_vring_group(self, index: int) -> int:
        """VHOST_VDPA_GET_VRING_GROUP: the group of vring ``index``."""
        self._check_index(index)
        return self._state(lib.VHOST_VDPA_GET_VRING_GROUP, index)

    def get_vring_desc_group(self, index: int) -> int:
        """VHOST_VDPA_GET_VRING_DESC_GROUP: the group of vring ``index``'s descriptor table
        (needs VHOST_BACKEND_F_DESC_ASID)."""
        self._check_index(index)
        return self._state(lib.VHOST_VDPA_GET_VRING_DESC_GROUP, index)

    def set_group_asid(self, group: int, asid: int) -> None:
        """VHOST_VDPA_SET_GROUP_ASID: group ``group``'s vrings translate through ASID ``asid``."""
        groups, spaces = self.get_group_num(), self.get_as_num()
        if not 0 <= group < groups:
            raise errors.InvalidArgumentError(f"group {group} is past the device's {groups} groups",
                                              errno=_errno.EINVAL, device=self.name)
        if not 0 <= asid < spaces:
            raise errors.InvalidArgumentError(
                f"ASID {asid} is past the device's {spaces} address spaces", errno=_errno.EINVAL,
                device=self.name)
        s = ffi.new("struct vhost_vring_state *", {"index": group, "num": asid})
        self._ioctl(lib.VHOST_VDPA_SET_GROUP_ASID, s)

    def iova_range(self) -> Tuple[int, int]:
        """VHOST_VDPA_GET_IOVA_RANGE: the (first, last) IOVAs the device can translate."""
        if self._range is None:
            r = ffi.new("struct vhost_vdpa_iova_range *")
            self._ioctl(lib.VHOST_VDPA_GET_IOVA_RANGE, r)
            self._range = (int(r.first), int(r.last))
        return self._range

    # -- status ----------------------------------------------------------------------------------
    def get_status(self) -> int:
        """VHOST_VDPA_GET_STATUS: the device status byte."""
        return self._get(lib.VHOST_VDPA_GET_STATUS, "uint8_t")

    def set_status(self, status: int, *, check: bool = True) -> None:
        """VHOST_VDPA_SET_STATUS.  0 resets the device.

        The library refuses what breaks the protocol (``check=False`` sends it
        anyway, to see the kernel's answer, which becomes the same error).
        """
        if not (isinstance(status, int) and not isinstance(status, bool)) or not 0 <= status <= 0xFF:
            raise errors.InvalidArgumentError(f"status {status!r} is not a byte", device=self.name)
        old = self.status
        if check:
            self._check_status(old, status)
        try:
            self._ioctl(lib.VHOST_VDPA_SET_STATUS, ffi.new("uint8_t *", status))
        except errors.PyvfioError as exc:
            if exc.errno == _errno.EINVAL and old & ~status and status:
                raise self._status_error(RULE_NO_CLEAR, old, status, exc.errno) from None
            raise
        if status == 0:
            self._after_reset()
        self.status = status

    def _status_error(self, rule: str, old: int, new: int, err: int = _errno.EINVAL
                      ) -> errors.PyvfioError:
        return errors.VdpaStatusError(
            f"{rule}: status {status_names(old)} -> {status_names(new)}", errno=err,
            op="VHOST_VDPA_SET_STATUS", device=self.name,
            remedy="reset() (status 0) and start again: ACKNOWLEDGE, DRIVER, set_features, "
                   "FEATURES_OK, vrings, DRIVER_OK")

    def _check_status(self, old: int, new: int) -> None:
        if new == 0:
            return
        if old & ~new:
            raise self._status_error(RULE_NO_CLEAR, old, new)
        added = new & ~old
        if added & FEATURES_OK and self.acked_features is None:
            raise self._status_error(RULE_ORDER + " (set_features() before FEATURES_OK)", old, new)
        for i, bit in enumerate(STATUS_ORDER[1:], 1):
            if new & bit and not new & STATUS_ORDER[i - 1]:
                raise self._status_error(RULE_ORDER, old, new)

    def _after_reset(self) -> None:
        self.acked_features = None
        for q in self.queues.values():
            q.ready = False
        self.queues.clear()

    def reset(self) -> None:
        """Reset the device (status 0): features, vrings and the status start over."""
        self.set_status(0)

    def add_status(self, bits: int) -> None:
        """Set ``bits`` in addition to the current status."""
        self.set_status(self.status | bits)

    def negotiate(self, features: int) -> int:
        """ACKNOWLEDGE, DRIVER, acknowledge ``features``, FEATURES_OK; returns the features.

        Raises if the device clears FEATURES_OK (it refused the set).
        """
        if self.status:
            self.reset()
        self.add_status(ACKNOWLEDGE)
        self.add_status(DRIVER)
        self.set_features(features)
        self.add_status(FEATURES_OK)
        got = self.get_status()
        if not got & FEATURES_OK:
            raise errors.InvalidArgumentError(
                f"the device did not accept features {features:#x} (FEATURES_OK cleared)",
                device=self.name, remedy="acknowledge a subset the device can work with")
        return features

    def driver_ok(self) -> None:
        """DRIVER_OK: the device starts processing its enabled vrings."""
        self.add_status(DRIVER_OK)

    # -- features -------------------------------------------------------------------------------
    def set_features(self, features: int, *, check: bool = True) -> None:
        """VHOST_SET_FEATURES; refused once FEATURES_OK is set (the kernel: EBUSY)."""
        if check and self.status & FEATURES_OK:
            raise errors.VdpaStatusError(
                f"{RULE_FEATURES} (status {status_names(self.status)})", errno=_errno.EBUSY,
                op="VHOST_SET_FEATURES", device=self.name,
                remedy="reset() the device and negotiate again")
        if check and not self.status & DRIVER:
            raise errors.VdpaStatusError(
                f"{RULE_ORDER}: features are set after DRIVER (status {status_names(self.status)})",
                errno=_errno.EINVAL, op="VHOST_SET_FEATURES", device=self.name,
                remedy="add_status(ACKNOWLEDGE), add_status(DRIVER), then set_features()")
        offered = self.get_features()
        if check and offered >> lib.VIRTIO_F_ACCESS_PLATFORM & 1 and \
                not features >> lib.VIRTIO_F_ACCESS_PLATFORM & 1:
            raise errors.InvalidArgumentError(
                "this vDPA device translates every address (VIRTIO_F_ACCESS_PLATFORM) and refuses "
                "features without it", errno=_errno.EINVAL, op="VHOST_SET_FEATURES",
                device=self.name, remedy="include 1 << VIRTIO_F_ACCESS_PLATFORM")
        try:
            if check:
                super().set_features(features)
            else:
                self._set_u64(lib.VHOST_SET_FEATURES, features)
                self.acked_features = features
        except errors.PyvfioError as exc:
            if exc.errno == _errno.EBUSY:
                raise errors.VdpaStatusError(
                    f"{RULE_FEATURES} (the kernel refused: status {status_names(self.status)})",
                    errno=exc.errno, op="VHOST_SET_FEATURES", device=self.name,
                    remedy="reset() the device and negotiate again") from None
            raise

    # -- config space ---------------------------------------------------------------------------
    def get_config(self, offset: int = 0, size: Optional[int] = None) -> bytes:
        """VHOST_VDPA_GET_CONFIG: ``size`` bytes of the config space at ``offset``."""
        total = self.get_config_size()
        if size is None:
            size = total - offset
        self._config_bounds(offset, size, total)
        c = argsz.new_var("struct vhost_vdpa_config", "buf", size, off=offset, len=size)
        self._ioctl(lib.VHOST_VDPA_GET_CONFIG, c.ptr)
        return bytes(ffi.buffer(c.ptr.buf, size))

    def set_config(self, offset: int, data: bytes) -> None:
        """VHOST_VDPA_SET_CONFIG: write ``data`` into the config space at ``offset``."""
        self._config_bounds(offset, len(data), self.get_config_size())
        c = argsz.new_var("struct vhost_vdpa_config", "buf", len(data), off=offset, len=len(data))
        ffi.memmove(c.ptr.buf, data, len(data))
        self._ioctl(lib.VHOST_VDPA_SET_CONFIG, c.ptr)

    def _config_bounds(self, offset: int, size: int, total: int) -> None:
        if offset < 0 or size <= 0 or offset + size > total:
            raise errors.OutOfBoundsError(
                f"config access of {size} bytes at {offset} is outside the {total}-byte "
                "config space", device=self.name)

    def set_config_call(self, event: Union[EventFd, int, None] = None) -> Optional[EventFd]:
        """VHOST_VDPA_SET_CONFIG_CALL: an eventfd the device signals on config changes."""
        if event is None:
            if self.config_event is None:
                self.config_event = EventFd(f"{self.vdpa_name} config call")
            event = self.config_event
        fd = event if isinstance(event, int) else event.fileno()
        self._ioctl(lib.VHOST_VDPA_SET_CONFIG_CALL, ffi.new("int *", fd))
        return event if isinstance(event, EventFd) else self.config_event

    # -- vrings -----------------------------------------------------------------------------------
    def set_vring_enable(self, index: int, enable: bool = True) -> None:
        """VHOST_VDPA_SET_VRING_ENABLE: mark vring ``index`` ready (or not)."""
        self._vring_state(lib.VHOST_VDPA_SET_VRING_ENABLE, index, 1 if enable else 0)

    def _check_vring_window(self) -> None:
        if not self.status & FEATURES_OK or self.status & DRIVER_OK:
            raise errors.VdpaStatusError(
                f"{RULE_VRINGS} (status {status_names(self.status)})", errno=_errno.EINVAL,
                device=self.name,
                remedy="negotiate(features) first; program every vring before driver_ok()")

    def iotlb_memory(self, asid: int = 0) -> IotlbMemory:
        """Memory for queues and buffers, mapped at IOVAs of address space ``asid``."""
        mem = IotlbMemory(self.space(asid))
        self._memories.append(mem)
        return mem

    def space(self, asid: int = 0) -> VdpaAddressSpace:
        """Address space ``asid`` (0 .. get_as_num()-1)."""
        self._check_open()
        sp = self._spaces.get(asid)
        if sp is None:
            n = self.get_as_num()
            if not 0 <= asid < n:
                raise errors.InvalidArgumentError(
                    f"ASID {asid} is past the device's {n} address spaces", device=self.name)
            if asid and not self.acked_backend_features >> lib.VHOST_BACKEND_F_IOTLB_ASID & 1:
                raise errors.NotSupportedError(
                    "address spaces other than 0 need VHOST_BACKEND_F_IOTLB_ASID",
                    device=self.name)
            sp = self._spaces[asid] = VdpaAddressSpace(self, asid)
        return sp

    def setup_vring(self, index: int, queue: Virtqueue, *, enable: bool = True,
                    err: Any = None) -> None:
        """Give vring ``index`` the queue: num, base, IOVAs of its rings, kick, call, enable.

        Allowed after FEATURES_OK and before DRIVER_OK; the queue's memory must
        be an :meth:`iotlb_memory` of the address space its group uses.
        """
        self._check_index(index)
        queue._check_open()
        self._check_vring_window()
        if queue.features != self.acked_features:
            raise errors.InvalidArgumentError(
                f"queue made for features {queue.features:#x}, device acknowledged "
                f"{self.acked_features:#x}", device=self.name,
                remedy="create the queue with features=device.acked_features")
        if isinstance(queue, PackedQueue) != bool(
                self.acked_features >> lib.VIRTIO_F_RING_PACKED & 1):
            raise errors.InvalidArgumentError("the queue's ring layout does not match "
                                              "VIRTIO_F_RING_PACKED", device=self.name)
        if not isinstance(queue.memory, IotlbMemory) or queue.memory.space.device is not self:
            raise errors.InvalidArgumentError(
                "ring addresses are IOVAs: the queue's memory is not mapped in this device",
                device=self.name, remedy="create the queue on device.iotlb_memory(asid)")
        limit = self.get_vring_num()
        if queue.size > limit:
            raise errors.InvalidArgumentError(
                f"queue size {queue.size} exceeds the device's {limit}", device=self.name)
        self.set_vring_num(index, queue.size)
        if isinstance(queue, PackedQueue):
            base = queue.avail_idx | queue.last_used_idx << 16
        else:
            base = queue.avail_idx
        self.set_vring_base(index, base)
        self.set_vring_addr(index, queue.desc_area.addr, queue.driver_area.addr,
                            queue.device_area.addr)
        self.set_vring_kick(index, queue.kick_event)
        self.set_vring_call(index, queue.call_event)
        if err is not None:
            self.set_vring_err(index, err)
        if enable:
            self.set_vring_enable(index, True)
        self.queues[index] = queue
        queue.ready = True

    # -- suspend / resume ---------------------------------------------------------------------------
    def suspend(self) -> None:
        """VHOST_VDPA_SUSPEND: stop processing; ring state is kept (VHOST_BACKEND_F_SUSPEND)."""
        self._need_backend(lib.VHOST_BACKEND_F_SUSPEND, "suspend")
        self._ioctl(lib.VHOST_VDPA_SUSPEND)

    def resume(self) -> None:
        """VHOST_VDPA_RESUME: continue after :meth:`suspend` (VHOST_BACKEND_F_RESUME)."""
        self._need_backend(lib.VHOST_BACKEND_F_RESUME, "resume")
        self._ioctl(lib.VHOST_VDPA_RESUME)

    def _need_backend(self, bit: int, what: str) -> None:
        if not self.acked_backend_features >> bit & 1:
            raise errors.NotSupportedError(f"this vDPA device cannot {what}", device=self.name,
                                           remedy="its parent driver lacks the operation")

    # -- IOTLB with an ASID ------------------------------------------------------------------------
    def iotlb_update(self, iova: int, size: int, uaddr: int, perm: int = 0, *,
                     asid: int = 0) -> None:
        """Map ``iova``..+``size`` of ASID ``asid`` to process address ``uaddr``."""
        from pyvfio.vhost.backend import IotlbMsg
        for what, value in (("iova", iova), ("size", size), ("uaddr", uaddr), ("perm", perm),
                            ("asid", asid)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise errors.InvalidArgumentError(
                    f"IOTLB update: {what} {value!r} is not a non-negative integer",
                    device=self.name, remedy=f"pass {what} as an int")
        first, last = self.iova_range()
        if size <= 0 or iova < first or iova + size - 1 > last:
            raise errors.IovaError(
                f"IOVA range [{iova:#x}-{iova + size - 1:#x}] is outside the device's IOVA "
                f"range [{first:#x}-{last:#x}]", device=self.name,
                remedy="map inside VHOST_VDPA_GET_IOVA_RANGE (let the allocator pick the IOVA)")
        self.send_iotlb(IotlbMsg(lib.VHOST_IOTLB_UPDATE, iova, size, uaddr,
                                 perm or lib.VHOST_ACCESS_RW, asid))

    def iotlb_invalidate(self, iova: int, size: int, *, asid: int = 0) -> None:
        """Remove the mappings in ``iova``..+``size`` of ASID ``asid``."""
        from pyvfio.vhost.backend import IotlbMsg
        self.send_iotlb(IotlbMsg(lib.VHOST_IOTLB_INVALIDATE, iova, size, 0, 0, asid))
