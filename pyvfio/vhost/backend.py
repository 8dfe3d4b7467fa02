"""One vhost device file descriptor and the ioctls every vhost node shares.

A vhost node (``/dev/vhost-net``, ``/dev/vhost-vsock``, ``/dev/vhost-scsi``)
gives each open file its own in-kernel virtio device back end.  The process
that calls ``VHOST_SET_OWNER`` becomes its owner: the kernel starts a worker
that runs in that process's memory context and reads the rings and buffers
at the addresses the owner gave.  Without an IOTLB the ring addresses
(``VHOST_SET_VRING_ADDR``) are process addresses and descriptor addresses
are guest-physical, translated by the memory table (``VHOST_SET_MEM_TABLE``);
with ``VIRTIO_F_ACCESS_PLATFORM`` both are IOVAs, which the owner maps with
``vhost_msg_v2`` IOTLB messages written to the fd (and the kernel asks for
missing ones by a message read from it).

:class:`VhostBackend` has one method per ioctl, named after it; the node
modules (:mod:`~pyvfio.vhost.net`, :mod:`~pyvfio.vhost.vsock`,
:mod:`~pyvfio.vhost.scsi`) add their own.
"""
from __future__ import annotations

import errno as _errno
import os
import select
import stat as _stat
from typing import Any, Dict, List, NamedTuple, Optional, Union

from pyvfio import errors
from pyvfio.core import argsz, syscalls
from pyvfio.core.eventfd import EventFd
from pyvfio.core.handle import Handle
from pyvfio.core.memory import DmaBuffer
from pyvfio.core.sysfs import host
from pyvfio.core.uapi import ffi, lib
from pyvfio.virtio.features import feature_names
from pyvfio.virtio.memory import DeviceMemory
from pyvfio.virtio.queue import SplitQueue, Virtqueue

__all__ = ["VhostBackend", "IotlbMsg", "DirtyLog", "VhostFeatures"]

EventLike = Union[EventFd, int, None]


class IotlbMsg(NamedTuple):
    """A ``struct vhost_msg_v2`` IOTLB message."""
    type: int           # VHOST_IOTLB_MISS / UPDATE / INVALIDATE / ACCESS_FAIL / BATCH_*
    iova: int
    size: int
    uaddr: int
    perm: int           # VHOST_ACCESS_RO / WO / RW
    asid: int = 0


class VhostFeatures(NamedTuple):
    """What a vhost node offers (``pyvfio vhost info``)."""
    node: str
    features: int
    backend_features: int
    names: List[str]
    extra: Dict[str, Any]


def _fd_of(e: EventLike) -> int:
    if e is None:
        return int(lib.VHOST_FILE_UNBIND)
    if isinstance(e, int):
        return e
    return e.fileno()


class VhostBackend(Handle):
    """An open vhost node: owner, features, memory table, vrings, dirty log, IOTLB.

    ``path`` defaults to ``/dev/<node>`` of the current host.  ``owner``
    calls ``VHOST_SET_OWNER`` right away (every other setup ioctl needs it).
    """

    #: Device node name under /dev, its kernel module, and its number of vrings.
    node = "vhost"
    module = "vhost"
    num_queues = 0
    device_type = ""

    def __init__(self, path: Optional[str] = None, *, owner: bool = True) -> None:
        self.path = path or host().dev_path(self.node)
        self.name = self.node
        self.fd = -1
        self._offered: Optional[int] = None
        self.acked_features: Optional[int] = None
        self.acked_backend_features = 0
        self.memory: Optional[DeviceMemory] = None
        self.queues: Dict[int, Virtqueue] = {}
        self.log: Optional["DirtyLog"] = None
        self.fd = self._open()
        self._is_owner = False
        if owner:
            try:
                self.set_owner()
            except BaseException:
                self.close()
                raise

    def _open(self) -> int:
        try:
            return syscalls.open(self.path, os.O_RDWR, device=self.name)
        except errors.NotFoundError as exc:
            raise errors.ModuleMissingError(
                f"{self.path} does not exist: the {self.module} module is not loaded",
                errno=exc.errno, op="open", path=self.path, device=self.name,
                remedy=f"load it: `modprobe {self.module}` (CONFIG_{self.module.upper()}=m or y)"
            ) from None
        except errors.PermissionDeniedError as exc:
            raise errors.PermissionDeniedError(
                f"{self.path} {self._owner_text()} does not let this process (uid {os.getuid()}) "
                "open it", errno=exc.errno, op="open", path=self.path, device=self.name,
                remedy=f"run as root, or give the node to your user or group: "
                       f"`chown $USER {self.path}` or `chmod 0660 {self.path}` with your group "
                       "(the kvm group on most distributions)") from None

    def _owner_text(self) -> str:
        try:
            st = syscalls.stat(self.path)
        except OSError:
            return ""
        return (f"(owner uid {st.st_uid}, gid {st.st_gid}, mode "
                f"{_stat.filemode(st.st_mode)[1:]})")

    def _release(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            for q in self.queues.values():
                q.ready = False
            syscalls.close(fd)

    def fileno(self) -> int:
        self._check_open()
        return self.fd

    # -- plumbing -------------------------------------------------------------------------
    def _ioctl(self, request: int, arg: Any = None, *, remedy: Optional[str] = None) -> int:
        self._check_open()
        try:
            return syscalls.ioctl(self.fd, request, arg, device=self.name, remedy=remedy)
        except errors.PyvfioError as exc:
            if exc.errno == _errno.ENOBUFS:
                raise errors.InvalidArgumentError(
                    "vring index past the device's queues", errno=exc.errno, op=exc.op,
                    path=self.path, device=self.name,
                    remedy=f"{self.node} has {self.num_queues} vrings (0..{self.num_queues - 1})"
                ) from None
            raise

    def _get_u64(self, request: int) -> int:
        v = ffi.new("uint64_t *")
        self._ioctl(request, v)
        return int(v[0])

    def _set_u64(self, request: int, value: int, **kw: Any) -> None:
        self._ioctl(request, ffi.new("uint64_t *", value), **kw)

    def _check_index(self, index: int) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.num_queues:
            raise errors.InvalidArgumentError(
                f"vring index {index!r} is past the device's {self.num_queues} queues",
                errno=_errno.ENOBUFS, device=self.name,
                remedy=f"use an index from 0 to {self.num_queues - 1}")

    def _vring_state(self, request: int, index: int, num: int = 0, *, out: bool = False,
                     remedy: Optional[str] = None) -> int:
        self._check_index(index)
        s = ffi.new("struct vhost_vring_state *", {"index": index, "num": num})
        self._ioctl(request, s, remedy=remedy)
        return int(s.num) if out else 0

    def _vring_file(self, request: int, index: int, efd: EventLike) -> None:
        self._check_index(index)
        self._ioctl(request, ffi.new("struct vhost_vring_file *", {"index": index, "fd": _fd_of(efd)}))

    # -- owner --------------------------------------------------------------------------
    def set_owner(self) -> None:
        """VHOST_SET_OWNER: this process owns the device; the kernel starts its worker."""
        self._ioctl(lib.VHOST_SET_OWNER, remedy=(
            "this vhost fd already has an owner (one per open file): open the node again "
            "for another device"))
        self._is_owner = True

    def reset_owner(self) -> None:
        """VHOST_RESET_OWNER: drop the owner, rings, memory table and worker."""
        self._ioctl(lib.VHOST_RESET_OWNER)
        self._is_owner = False
        self.acked_features = None
        for q in self.queues.values():
            q.ready = False
        self.queues.clear()

    # -- features --------------------------------------------------------------------------
    def get_features(self) -> int:
        """VHOST_GET_FEATURES: the virtio (and vhost) feature bits the device offers."""
        if self._offered is None:
            self._offered = self._get_u64(lib.VHOST_GET_FEATURES)
        return self._offered

    def set_features(self, features: int) -> None:
        """VHOST_SET_FEATURES: acknowledge ``features``; bits not offered are refused here."""
        offered = self.get_features()
        extra = features & ~offered
        if extra:
            raise errors.InvalidArgumentError(
                f"features not offered by {self.node}: "
                f"{', '.join(feature_names(extra, self.device_type))}",
                errno=_errno.EOPNOTSUPP, op="VHOST_SET_FEATURES", device=self.name,
                remedy=f"acknowledge a subset of get_features() ({offered:#x})")
        self._set_u64(lib.VHOST_SET_FEATURES, features)
        self.acked_features = features

    def get_backend_features(self) -> int:
        """VHOST_GET_BACKEND_FEATURES: VHOST_BACKEND_F_* bits (IOTLB message format, ...)."""
        return self._get_u64(lib.VHOST_GET_BACKEND_FEATURES)

    def set_backend_features(self, features: int) -> None:
        """VHOST_SET_BACKEND_FEATURES."""
        offered = self.get_backend_features()
        if features & ~offered:
            raise errors.InvalidArgumentError(
                f"backend features {features & ~offered:#x} not offered ({offered:#x})",
                errno=_errno.EOPNOTSUPP, op="VHOST_SET_BACKEND_FEATURES", device=self.name,
                remedy="acknowledge a subset of get_backend_features()")
        self._set_u64(lib.VHOST_SET_BACKEND_FEATURES, features)
        self.acked_backend_features = features

    # -- memory -----------------------------------------------------------------------------
    def set_mem_table(self, memory: DeviceMemory) -> None:
        """VHOST_SET_MEM_TABLE: each buffer of ``memory`` at its device (guest-physical) address."""
        regions = list(memory)
        m = argsz.new_var("struct vhost_memory", "regions", len(regions), nregions=len(regions))
        for i, (buf, addr) in enumerate(regions):
            r = m.regions[i]
            r.guest_phys_addr = addr
            r.memory_size = buf.size
            r.userspace_addr = buf.vaddr
            r.flags_padding = 0
        self._ioctl(lib.VHOST_SET_MEM_TABLE, m.ptr, remedy=(
            "regions must not overlap, must fit in the process, and their number must stay "
            "under vhost's max_mem_regions module parameter"))
        self.memory = memory

    # -- vrings ----------------------------------------------------------------------------
    def set_vring_num(self, index: int, num: int) -> None:
        """VHOST_SET_VRING_NUM: descriptors in vring ``index`` (a power of two up to 32768)."""
        self._vring_state(lib.VHOST_SET_VRING_NUM, index, num,
                          remedy="the size must be a power of two from 1 to 32768")

    def set_vring_base(self, index: int, base: int) -> None:
        """VHOST_SET_VRING_BASE: the avail index the device resumes from."""
        self._vring_state(lib.VHOST_SET_VRING_BASE, index, base)

    def get_vring_base(self, index: int) -> int:
        """VHOST_GET_VRING_BASE: stop the vring and return its next avail index."""
        return self._vring_state(lib.VHOST_GET_VRING_BASE, index, out=True)

    def set_vring_addr(self, index: int, desc: int, avail: int, used: int, *,
                       log: int = 0, flags: int = 0) -> None:
        """VHOST_SET_VRING_ADDR: the rings' addresses; ``log`` the used ring's guest address
        for dirty logging (``flags`` = 1 << VHOST_VRING_F_LOG)."""
        self._check_index(index)
        a = ffi.new("struct vhost_vring_addr *", {
            "index": index, "flags": flags, "desc_user_addr": desc, "used_user_addr": used,
            "avail_user_addr": avail, "log_guest_addr": log})
        self._ioctl(lib.VHOST_SET_VRING_ADDR, a, remedy=(
            "ring addresses must be aligned (desc 16, avail 2, used 4) and readable/writable "
            "by this process"))

    def set_vring_kick(self, index: int, efd: EventLike) -> None:
        """VHOST_SET_VRING_KICK: the eventfd the driver signals (None: unbind)."""
        self._vring_file(lib.VHOST_SET_VRING_KICK, index, efd)

    def set_vring_call(self, index: int, efd: EventLike) -> None:
        """VHOST_SET_VRING_CALL: the eventfd the device signals for used buffers."""
        self._vring_file(lib.VHOST_SET_VRING_CALL, index, efd)

    def set_vring_err(self, index: int, efd: EventLike) -> None:
        """VHOST_SET_VRING_ERR: the eventfd the device signals on a ring error."""
        self._vring_file(lib.VHOST_SET_VRING_ERR, index, efd)

    def set_vring_endian(self, index: int, big_endian: bool) -> None:
        """VHOST_SET_VRING_ENDIAN (legacy cross-endian rings; ENOTTY unless
        CONFIG_VHOST_CROSS_ENDIAN_LEGACY)."""
        self._vring_state(lib.VHOST_SET_VRING_ENDIAN, index,
                          lib.VHOST_VRING_BIG_ENDIAN if big_endian else lib.VHOST_VRING_LITTLE_ENDIAN)

    def get_vring_endian(self, index: int) -> bool:
        """VHOST_GET_VRING_ENDIAN: whether vring ``index`` is big-endian."""
        return bool(self._vring_state(lib.VHOST_GET_VRING_ENDIAN, index, out=True) ==
                    lib.VHOST_VRING_BIG_ENDIAN)

    def set_vring_busyloop_timeout(self, index: int, usec: int) -> None:
        """VHOST_SET_VRING_BUSYLOOP_TIMEOUT: how long the worker polls before sleeping."""
        self._vring_state(lib.VHOST_SET_VRING_BUSYLOOP_TIMEOUT, index, usec)

    def get_vring_busyloop_timeout(self, index: int) -> int:
        """VHOST_GET_VRING_BUSYLOOP_TIMEOUT."""
        return self._vring_state(lib.VHOST_GET_VRING_BUSYLOOP_TIMEOUT, index, out=True)

    # -- workers --------------------------------------------------------------------------
    _WORKER_REMEDY = ("this vhost node runs all its vrings on one worker; in 6.12 only "
                      "vhost-scsi takes VHOST_NEW_WORKER and the other worker ioctls")

    def new_worker(self) -> int:
        """VHOST_NEW_WORKER: another worker thread; returns its id."""
        w = ffi.new("struct vhost_worker_state *")
        self._ioctl(lib.VHOST_NEW_WORKER, w, remedy=self._WORKER_REMEDY)
        return int(w.worker_id)

    def free_worker(self, worker_id: int) -> None:
        """VHOST_FREE_WORKER: free a worker no vring uses."""
        self._ioctl(lib.VHOST_FREE_WORKER, ffi.new("struct vhost_worker_state *",
                                                   {"worker_id": worker_id}),
                    remedy="attach its vrings to another worker first")

    def attach_vring_worker(self, index: int, worker_id: int) -> None:
        """VHOST_ATTACH_VRING_WORKER: vring ``index`` runs on worker ``worker_id``."""
        self._check_index(index)
        self._ioctl(lib.VHOST_ATTACH_VRING_WORKER, ffi.new(
            "struct vhost_vring_worker *", {"index": index, "worker_id": worker_id}),
            remedy=self._WORKER_REMEDY)

    def get_vring_worker(self, index: int) -> int:
        """VHOST_GET_VRING_WORKER: the worker vring ``index`` runs on."""
        self._check_index(index)
        w = ffi.new("struct vhost_vring_worker *", {"index": index})
        self._ioctl(lib.VHOST_GET_VRING_WORKER, w, remedy=self._WORKER_REMEDY)
        return int(w.worker_id)

    # -- dirty log ----------------------------------------------------------------------------
    def set_log_base(self, addr: int) -> None:
        """VHOST_SET_LOG_BASE: process address of the dirty bitmap (bit per 4 KiB guest page)."""
        self._ioctl(lib.VHOST_SET_LOG_BASE, ffi.new("uint64_t *", addr))

    def set_log_fd(self, efd: EventLike) -> None:
        """VHOST_SET_LOG_FD: eventfd signalled when the device writes the log."""
        self._ioctl(lib.VHOST_SET_LOG_FD, ffi.new("int *", _fd_of(efd)))

    def start_dirty_log(self, log: "DirtyLog") -> None:
        """Log every write of the device into ``log``: the bitmap (VHOST_SET_LOG_BASE) and its
        eventfd (VHOST_SET_LOG_FD), ``VHOST_F_LOG_ALL`` acknowledged, and the used ring of
        every set-up vring logged at its guest address (``VHOST_VRING_F_LOG``).

        The kernel checks the log against the memory table: set that first.
        """
        if self.acked_features is None or self.memory is None:
            raise errors.NotReadyError(
                "dirty logging needs the features and the memory table set", device=self.name,
                remedy="set_features() and set_mem_table() first")
        if not self.get_features() >> lib.VHOST_F_LOG_ALL & 1:
            raise errors.NotSupportedError(f"{self.node} does not offer VHOST_F_LOG_ALL",
                                           device=self.name)
        self.set_log_base(log.buffer.vaddr)
        self.set_log_fd(log.event)
        self.set_features(self.acked_features | 1 << lib.VHOST_F_LOG_ALL)
        for i, q in self.queues.items():
            self._set_addr_of(i, q, log=True)
        self.log = log

    def stop_dirty_log(self) -> None:
        """Stop logging: VHOST_F_LOG_ALL cleared, used rings no longer logged, no log fd."""
        self.set_features((self.acked_features or 0) & ~(1 << lib.VHOST_F_LOG_ALL))
        for i, q in self.queues.items():
            self._set_addr_of(i, q, log=False)
        self.set_log_fd(None)
        self.log = None

    # -- IOTLB ------------------------------------------------------------------------------
    def _iotlb_v2(self) -> None:
        if not self.acked_backend_features & (1 << lib.VHOST_BACKEND_F_IOTLB_MSG_V2):
            raise errors.NotReadyError(
                "IOTLB messages need VHOST_BACKEND_F_IOTLB_MSG_V2 negotiated", device=self.name,
                remedy="set_backend_features(1 << VHOST_BACKEND_F_IOTLB_MSG_V2) first")

    def send_iotlb(self, msg: IotlbMsg) -> None:
        """Write one ``vhost_msg_v2`` to the device."""
        self._iotlb_v2()
        m = ffi.new("struct vhost_msg_v2 *")
        m.type = lib.VHOST_IOTLB_MSG_V2
        m.asid = msg.asid
        m.iotlb.iova = msg.iova
        m.iotlb.size = msg.size
        m.iotlb.uaddr = msg.uaddr
        m.iotlb.perm = msg.perm
        m.iotlb.type = msg.type
        self._check_open()
        syscalls.write(self.fd, bytes(ffi.buffer(m)), device=self.name)

    def iotlb_update(self, iova: int, size: int, uaddr: int, perm: int = 0) -> None:
        """Map ``iova``..+``size`` to process address ``uaddr`` (perm: VHOST_ACCESS_*)."""
        self.send_iotlb(IotlbMsg(lib.VHOST_IOTLB_UPDATE, iova, size, uaddr,
                                 perm or lib.VHOST_ACCESS_RW))

    def iotlb_invalidate(self, iova: int, size: int) -> None:
        """Remove the mappings in ``iova``..+``size``."""
        self.send_iotlb(IotlbMsg(lib.VHOST_IOTLB_INVALIDATE, iova, size, 0, 0))

    def iotlb_map_memory(self, memory: DeviceMemory) -> None:
        """An IOTLB update for every buffer of ``memory`` at its device address."""
        for buf, addr in memory:
            self.iotlb_update(addr, buf.size, buf.vaddr)
        self.memory = memory

    def read_iotlb(self, timeout: Optional[float] = 0.0) -> Optional[IotlbMsg]:
        """The next message the device sent (a MISS or ACCESS_FAIL), None if none in time."""
        self._iotlb_v2()
        self._check_open()
        if not syscalls.poll([(self.fd, select.POLLIN)], timeout):
            return None
        size = ffi.sizeof("struct vhost_msg_v2")
        try:
            data = syscalls.read(self.fd, size, device=self.name)
        except errors.PyvfioError as exc:
            if exc.errno == _errno.EAGAIN:
                return None
            raise
        m = ffi.new("struct vhost_msg_v2 *")
        ffi.memmove(m, data, min(len(data), size))
        t = m.iotlb
        return IotlbMsg(int(t.type), int(t.iova), int(t.size), int(t.uaddr), int(t.perm),
                        int(m.asid))

    # -- putting a queue on a vring ------------------------------------------------------------
    @property
    def iotlb_mode(self) -> bool:
        """Whether ring and buffer addresses are IOVAs (VIRTIO_F_ACCESS_PLATFORM acked)."""
        return bool((self.acked_features or 0) >> lib.VIRTIO_F_ACCESS_PLATFORM & 1)

    def _set_addr_of(self, index: int, q: Virtqueue, *, log: bool = False) -> None:
        areas = (q.desc_area, q.driver_area, q.device_area)
        if self.iotlb_mode:
            desc, avail, used = (a.addr for a in areas)
        else:
            desc, avail, used = (a.vaddr for a in areas)
        self.set_vring_addr(index, desc, avail, used,
                            log=q.device_area.addr if log else 0,
                            flags=(1 << lib.VHOST_VRING_F_LOG) if log else 0)

    def setup_vring(self, index: int, queue: Virtqueue, *, err: EventLike = None) -> None:
        """Give vring ``index`` the queue: num, base, addresses, kick and call eventfds.

        The memory table (or IOTLB) must cover the queue's memory, and the
        features must be set first (they decide the ring format).
        """
        self._check_index(index)
        queue._check_open()
        if self.acked_features is None:
            raise errors.NotReadyError(
                "vring set up before the features", device=self.name,
                remedy="call set_features() first: EVENT_IDX and the ring layout depend on it")
        if self.memory is None:
            raise errors.NotReadyError(
                "vring set up before the memory table", device=self.name,
                remedy="call set_mem_table(memory) (or iotlb_map_memory) first")
        ring_bits = ((1 << lib.VIRTIO_RING_F_EVENT_IDX) | (1 << lib.VIRTIO_RING_F_INDIRECT_DESC)
                     | (1 << lib.VIRTIO_F_RING_PACKED) | (1 << lib.VIRTIO_F_VERSION_1))
        if (queue.features ^ self.acked_features) & ring_bits:
            raise errors.InvalidArgumentError(
                f"queue made for features {queue.features:#x}, device acknowledged "
                f"{self.acked_features:#x}", device=self.name,
                remedy="create the queue with features=backend.acked_features")
        if not isinstance(queue, SplitQueue):
            raise errors.NotSupportedError(f"{self.node} drives split rings only", device=self.name)
        self.set_vring_num(index, queue.size)
        self.set_vring_base(index, queue.avail_idx)
        self._set_addr_of(index, queue)
        self.set_vring_kick(index, queue.kick_event)
        self.set_vring_call(index, queue.call_event)
        if err is not None:
            self.set_vring_err(index, err)
        self.queues[index] = queue
        queue.ready = True

    # -- description ------------------------------------------------------------------------
    def describe(self) -> VhostFeatures:
        """The node's offered features (no owner needed)."""
        f = self.get_features()
        try:
            bf = self.get_backend_features()
        except errors.NotSupportedError:
            bf = 0
        return VhostFeatures(self.node, f, bf, feature_names(f, self.device_type), self._extra_info())

    def _extra_info(self) -> Dict[str, Any]:
        return {}


class DirtyLog:
    """vhost's dirty page bitmap for memory up to ``span`` bytes of guest addresses.

    Bit N is guest page N (``VHOST_PAGE_SIZE``); the device sets bits with
    atomic ORs and signals ``event``.  :meth:`dirty` returns the dirty
    guest-physical page addresses and (by default) clears them.
    """

    def __init__(self, span: int) -> None:
        pages = (span + lib.VHOST_PAGE_SIZE - 1) // lib.VHOST_PAGE_SIZE
        self.span = span
        self.buffer = DmaBuffer(max(8, (pages + 7) // 8), "memfd", name="vhost-log")
        self.event = EventFd("vhost dirty log")

    @classmethod
    def for_memory(cls, memory: DeviceMemory) -> "DirtyLog":
        end = max((addr + buf.size for buf, addr in memory), default=0)
        return cls(end)

    def dirty(self, clear: bool = True) -> List[int]:
        data = self.buffer.read(0, self.buffer.size)
        out = []
        for byte_i, b in enumerate(data):
            if b:
                for bit in range(8):
                    if b >> bit & 1:
                        out.append((byte_i * 8 + bit) * lib.VHOST_PAGE_SIZE)
        if clear and out:
            self.buffer.fill(0)
        return out

    def close(self) -> None:
        self.buffer.close()
        self.event.close()

    def __enter__(self) -> "DirtyLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
