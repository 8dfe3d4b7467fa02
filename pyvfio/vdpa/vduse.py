"""VDUSE: a vDPA device whose device side is this process.

``/dev/vduse/control`` creates a VDUSE device (``VDUSE_CREATE_DEV``: virtio
device id, features, config space, number of virtqueues); the kernel then
gives it a node ``/dev/vduse/<name>`` and the ``vduse`` management device
can attach it to the vDPA bus (``pyvfio vdpa dev add NAME vduse``), where
vhost-vdpa (or virtio-vdpa) drives it.

The kernel asks the device side for things through requests read from
``/dev/vduse/<name>`` and answered by a write with the same request id:

* ``VDUSE_SET_STATUS``: the driver wrote the status (0 is a reset; with
  DRIVER_OK the virtqueues are live: ``VDUSE_VQ_GET_INFO`` tells where);
* ``VDUSE_GET_VQ_STATE``: the available index the device has reached;
* ``VDUSE_UPDATE_IOTLB``: the IOVA mappings in a range changed; the device
  drops what it mapped there and asks again with ``VDUSE_IOTLB_GET_FD``,
  which hands out the file behind an IOVA range for ``mmap``.

The kernel waits for each answer (and marks the device broken when none
comes), and vhost-vdpa's open resets the device, so a VDUSE device nobody
serves makes the open time out.  :class:`VduseDevice` answers from a thread
started when the device is created, before anyone can open it, so that a
vhost-vdpa open in the same process is always answered.  The same thread
processes the virtqueues (kick eventfds, ``VDUSE_VQ_INJECT_IRQ``).

:class:`VduseBlk` is a virtio-blk device backed by a file or by memory.
"""
from __future__ import annotations

import errno as _errno
import mmap as _mmap
import os
import select
import struct
import threading
import time
from typing import Any, Dict, List, Optional

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.eventfd import EventFd
from pyvfio.core.handle import Handle
from pyvfio.core.sysfs import host
from pyvfio.core.uapi import ffi, lib
from pyvfio.virtio.device import DescChain, DevicePackedQueue, DeviceSplitQueue

__all__ = ["VduseDevice", "VduseBlk", "VDUSE_MSG_TIMEOUT"]

#: How long the kernel waits for an answer (vduse's msg_timeout default, seconds).
VDUSE_MSG_TIMEOUT = 30
_REQ_SIZE = ffi.sizeof("struct vduse_dev_request")
_BLK_HDR = struct.Struct("<IIQ")
_SECTOR = 512


class _Map:
    """One IOTLB region mapped into this process."""
    __slots__ = ("start", "last", "mapping", "base", "perm")

    def __init__(self, start: int, last: int, mapping: Any, base: int, perm: int) -> None:
        self.start, self.last, self.mapping, self.base, self.perm = start, last, mapping, base, perm


class VduseDevice(Handle):
    """A VDUSE device served by a thread of this process.

    ``config`` is the initial config space; ``vq_max`` the largest size of
    each of ``vq_num`` virtqueues.  Subclasses implement :meth:`process` (one
    available chain -> bytes written).  The responder starts at once.
    """

    def __init__(self, name: str, *, device_id: int, features: int, config: bytes,
                 vq_num: int = 1, vq_max: int = 256, vq_align: int = 4096,
                 vendor_id: int = 0) -> None:
        if not name or "/" in name or len(name.encode()) >= lib.VDUSE_NAME_MAX:
            raise errors.InvalidArgumentError(f"VDUSE device name {name!r} is not a device name")
        self.name = f"vduse {name}"
        self.dev_name = name
        self.device_id = device_id
        self.features = features
        self.vq_num = vq_num
        self.vq_max = vq_max
        self.status = 0
        self.requests: Dict[int, int] = {lib.VDUSE_GET_VQ_STATE: 0, lib.VDUSE_SET_STATUS: 0,
                                         lib.VDUSE_UPDATE_IOTLB: 0}
        self.status_log: List[int] = []
        self.error: Optional[BaseException] = None
        self.ctl = -1
        self.fd = -1
        self._created = False
        self._maps: List[_Map] = []
        self._retired: List[_Map] = []
        self._vqs: List[Any] = [None] * vq_num
        self._kicks: List[Optional[EventFd]] = [None] * vq_num
        self._thread: Optional[threading.Thread] = None
        self._stop: Optional[EventFd] = None
        self.irqs = [0] * vq_num
        self.processed = 0
        try:
            self.ctl = syscalls.open(host().dev_path("vduse", "control"), os.O_RDWR,
                                     device=self.name)
        except errors.NotFoundError:
            raise errors.ModuleMissingError(
                f"{host().dev_path('vduse', 'control')} does not exist", device=self.name,
                remedy="load VDUSE: `modprobe vduse` (CONFIG_VDPA_USER)") from None
        try:
            self._create(config, vq_align, vendor_id)
            self._stop = EventFd(f"{self.name} responder stop")
            self._thread = threading.Thread(target=self._serve, name=f"vduse-{name}", daemon=True)
            self._thread.start()
        except BaseException:
            self.close()
            raise

    # -- creation ------------------------------------------------------------------------------
    def _create(self, config: bytes, vq_align: int, vendor_id: int) -> None:
        ver = ffi.new("uint64_t *", lib.VDUSE_API_VERSION)
        syscalls.ioctl(self.ctl, lib.VDUSE_SET_API_VERSION, ver, device=self.name)
        size = ffi.sizeof("struct vduse_dev_config") + len(config)
        buf = ffi.new("char[]", size)
        c = ffi.cast("struct vduse_dev_config *", buf)
        name = self.dev_name.encode()
        ffi.memmove(c.name, name, len(name))
        c.vendor_id = vendor_id
        c.device_id = self.device_id
        c.features = self.features
        c.vq_num = self.vq_num
        c.vq_align = vq_align
        c.config_size = len(config)
        ffi.memmove(c.config, config, len(config))
        try:
            syscalls.ioctl(self.ctl, lib.VDUSE_CREATE_DEV, c, device=self.name)
        except errors.PyvfioError as exc:
            if exc.errno == _errno.EEXIST:
                raise errors.ExistsError(
                    f"a VDUSE device {self.dev_name} exists", errno=exc.errno,
                    op="VDUSE_CREATE_DEV", device=self.name,
                    remedy="pick another name, or destroy the old one "
                           "(its owner's close(), or VDUSE_DESTROY_DEV)") from None
            if exc.errno == _errno.EINVAL:
                raise errors.InvalidArgumentError(
                    "VDUSE refused the device configuration", errno=exc.errno,
                    op="VDUSE_CREATE_DEV", device=self.name,
                    remedy="the device id must be block (or net on 6.7+), the features must "
                           "include VIRTIO_F_ACCESS_PLATFORM and VIRTIO_F_VERSION_1, and the "
                           "config space must be read-only") from None
            raise
        self._created = True
        path = host().dev_path("vduse", self.dev_name)
        deadline = time.monotonic() + 5
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.fd = syscalls.open(path, os.O_RDWR, device=self.name)
        for i in range(self.vq_num):
            vq = ffi.new("struct vduse_vq_config *", {"index": i, "max_size": self.vq_max})
            syscalls.ioctl(self.fd, lib.VDUSE_VQ_SETUP, vq, device=self.name)

    # -- the responder -------------------------------------------------------------------------
    def _serve(self) -> None:
        stop = self._stop
        assert stop is not None              # made before the thread starts
        try:
            while True:
                fds = [(self.fd, select.POLLIN), (stop.fd, select.POLLIN)]
                fds += [(k.fd, select.POLLIN) for k in self._kicks if k is not None]
                ready = syscalls.poll(fds, None)
                fired = {fd for fd, _ in ready}
                if stop.fd in fired:
                    return
                if self.fd in fired:
                    self._answer_requests()
                for i, k in enumerate(self._kicks):
                    if k is not None and k.fd in fired:
                        k.pending()
                        self._run_queue(i)
        except BaseException as exc:       # noqa: BLE001 - kept for the owner to see
            self.error = exc

    def _answer_requests(self) -> None:
        while True:
            try:
                data = syscalls.read(self.fd, _REQ_SIZE, device=self.name)
            except errors.PyvfioError as exc:
                if exc.errno == _errno.EAGAIN:
                    return
                raise
            req = ffi.new("struct vduse_dev_request *")
            ffi.memmove(req, data, min(len(data), _REQ_SIZE))
            resp = ffi.new("struct vduse_dev_response *")
            resp.request_id = req.request_id
            resp.result = lib.VDUSE_REQ_RESULT_OK
            self.requests[req.type] = self.requests.get(req.type, 0) + 1
            if req.type == lib.VDUSE_GET_VQ_STATE:
                i = req.vq_state.index
                resp.vq_state.index = i
                vq = self._vqs[i] if i < self.vq_num else None
                if isinstance(vq, DevicePackedQueue):
                    p = resp.vq_state.packed
                    p.last_avail_idx, p.last_avail_counter = vq.next_avail, vq.avail_wrap
                    p.last_used_idx, p.last_used_counter = vq.next_used, vq.used_wrap
                else:
                    resp.vq_state.split.avail_index = vq.last_avail if vq is not None else 0
            elif req.type == lib.VDUSE_SET_STATUS:
                self._set_status(req.s.status)
            elif req.type == lib.VDUSE_UPDATE_IOTLB:
                self._drop_maps(req.iova.start, req.iova.last)
            else:
                resp.result = lib.VDUSE_REQ_RESULT_FAILED
            syscalls.write(self.fd, bytes(ffi.buffer(resp)), device=self.name)
            if not syscalls.poll([(self.fd, select.POLLIN)], 0):
                return

    def _set_status(self, status: int) -> None:
        old = self.status
        self.status = status
        self.status_log.append(status)
        if status == 0:
            self._stop_queues()
            self._drop_maps(0, (1 << 64) - 1, unmap=True)
        elif status & lib.VIRTIO_CONFIG_S_DRIVER_OK and not old & lib.VIRTIO_CONFIG_S_DRIVER_OK:
            self._start_queues()

    def _start_queues(self) -> None:
        features = ffi.new("uint64_t *")
        syscalls.ioctl(self.fd, lib.VDUSE_DEV_GET_FEATURES, features, device=self.name)
        event_idx = bool(features[0] >> lib.VIRTIO_RING_F_EVENT_IDX & 1)
        packed = bool(features[0] >> lib.VIRTIO_F_RING_PACKED & 1)
        for i in range(self.vq_num):
            info = ffi.new("struct vduse_vq_info *", {"index": i})
            syscalls.ioctl(self.fd, lib.VDUSE_VQ_GET_INFO, info, device=self.name)
            if not info.ready:
                continue
            n = info.num
            name = f"{self.name} vq {i}"
            if packed:
                q = DevicePackedQueue(
                    n, self.translate(info.desc_addr, 16 * n, True),
                    self.translate(info.driver_addr, 4, False),
                    self.translate(info.device_addr, 4, True), self.translate,
                    event_idx=event_idx, name=name)
                st = info.packed                    # where the driver said to resume
                q.next_avail, q.avail_wrap = st.last_avail_idx, st.last_avail_counter
                q.next_used, q.used_wrap = st.last_used_idx, st.last_used_counter
                self._vqs[i] = q
                self._setup_kick(i)
                continue
            desc = self.translate(info.desc_addr, 16 * n, False)
            avail = self.translate(info.driver_addr, 6 + 2 * n, False)
            used = self.translate(info.device_addr, 6 + 8 * n, True)
            self._vqs[i] = DeviceSplitQueue(n, desc, avail, used, self.translate,
                                            event_idx=event_idx,
                                            last_avail=info.split.avail_index,
                                            name=name)
            self._setup_kick(i)

    def _setup_kick(self, i: int) -> None:
        """Give the kernel an eventfd to signal for vq ``i``'s kicks; serve what is there."""
        kick = EventFd(f"{self.name} vq {i} kick")
        self._kicks[i] = kick
        e = ffi.new("struct vduse_vq_eventfd *", {"index": i, "fd": kick.fd})
        syscalls.ioctl(self.fd, lib.VDUSE_VQ_SETUP_KICKFD, e, device=self.name)
        self._run_queue(i)

    def _stop_queues(self) -> None:
        for i, k in enumerate(self._kicks):
            if k is not None:
                e = ffi.new("struct vduse_vq_eventfd *", {"index": i,
                                                          "fd": lib.VDUSE_EVENTFD_DEASSIGN})
                try:
                    syscalls.ioctl(self.fd, lib.VDUSE_VQ_SETUP_KICKFD, e, device=self.name)
                except errors.PyvfioError:
                    pass
                k.close()
        self._kicks = [None] * self.vq_num
        self._vqs = [None] * self.vq_num

    # -- IOTLB -------------------------------------------------------------------------------------
    def translate(self, iova: int, size: int, write: bool) -> int:
        """The process address of IOVA range ``iova``..+``size`` (mapped on first use)."""
        last = iova + max(size, 1) - 1
        for m in self._maps:
            if m.start <= iova and last <= m.last:
                return m.base + (iova - m.start)
        entry = ffi.new("struct vduse_iotlb_entry *", {"start": iova, "last": last})
        try:
            fd = syscalls.ioctl(self.fd, lib.VDUSE_IOTLB_GET_FD, entry, device=self.name)
        except errors.PyvfioError as exc:
            raise errors.IovaError(f"IOVA {iova:#x}+{size:#x} is not mapped by the driver",
                                   errno=exc.errno, op="VDUSE_IOTLB_GET_FD",
                                   device=self.name) from None
        syscalls.adopt(fd, f"{self.name} IOTLB file")
        try:
            if not (entry.start <= iova and last <= entry.last):
                raise errors.IovaError(
                    f"IOVA {iova:#x}+{size:#x} crosses the IOTLB region "
                    f"[{entry.start:#x}-{entry.last:#x}]", device=self.name)
            perm = entry.perm
            prot = (_mmap.PROT_READ if perm & lib.VDUSE_ACCESS_RO else 0) | \
                   (_mmap.PROT_WRITE if perm & lib.VDUSE_ACCESS_WO else 0)
            length = entry.last - entry.start + 1
            mapping = syscalls.mmap(fd, length, entry.offset, prot=prot or _mmap.PROT_READ,
                                    device=self.name, what=f"{self.name} IOTLB region")
        finally:
            syscalls.close(fd)
        ptr = ffi.from_buffer("char[]", mapping)
        m = _Map(entry.start, entry.last, (mapping, ptr), int(ffi.cast("uintptr_t", ptr)), perm)
        self._maps.append(m)
        return m.base + (iova - m.start)

    def _drop_maps(self, start: int, last: int, *, unmap: bool = False) -> None:
        """Forget the regions overlapping ``start..last``: later translations ask again.

        Without ``unmap`` the old mappings stay until the next reset (a live
        ring keeps pointing into them; the memory behind them is the same
        shared file); with it they are unmapped now.
        """
        keep = []
        for m in self._maps:
            if m.last < start or m.start > last:
                keep.append(m)
            else:
                self._retired.append(m)
        self._maps = keep
        if unmap:
            for m in self._retired:
                mapping, ptr = m.mapping
                ffi.release(ptr)
                syscalls.munmap(mapping)
            self._retired = []

    # -- virtqueues -------------------------------------------------------------------------------
    def _run_queue(self, index: int) -> None:
        vq = self._vqs[index]
        if vq is None:
            return
        while True:
            did = 0
            while True:
                chain = vq.pop()
                if chain is None:
                    break
                written = self.process(index, chain)
                if isinstance(vq, DevicePackedQueue):
                    vq.push(chain.id, written, chain.ndesc)
                else:
                    vq.push(chain.id, written)
                did += 1
            if not did:
                return
            self.processed += did
            if vq.flush():
                syscalls.ioctl(self.fd, lib.VDUSE_VQ_INJECT_IRQ, ffi.new("uint32_t *", index),
                               device=self.name)
                self.irqs[index] += 1

    def process(self, index: int, chain: DescChain) -> int:
        """Serve one available chain of virtqueue ``index``; return the bytes written."""
        raise NotImplementedError

    # -- config space ---------------------------------------------------------------------------
    def set_config(self, offset: int, data: bytes) -> None:
        """VDUSE_DEV_SET_CONFIG: change ``data`` bytes of the config space at ``offset``."""
        self._check_open()
        buf = ffi.new("char[]", ffi.sizeof("struct vduse_config_data") + len(data))
        c = ffi.cast("struct vduse_config_data *", buf)
        c.offset = offset
        c.length = len(data)
        ffi.memmove(c.buffer, data, len(data))
        syscalls.ioctl(self.fd, lib.VDUSE_DEV_SET_CONFIG, c, device=self.name,
                       remedy="offset and length must lie inside the config space")

    def inject_config_irq(self) -> None:
        """VDUSE_DEV_INJECT_CONFIG_IRQ: tell the driver the config space changed."""
        self._check_open()
        syscalls.ioctl(self.fd, lib.VDUSE_DEV_INJECT_CONFIG_IRQ, None, device=self.name,
                       remedy="the driver must have set DRIVER_OK")

    # -- lifetime -----------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise what stopped the responder thread, if anything did."""
        if self.error is not None:
            raise errors.PyvfioError(f"the responder stopped: {self.error!r}",
                                     device=self.name) from self.error

    def close(self) -> None:
        """Stop the responder, unmap the IOTLB regions and destroy the device.

        Refused (and the device keeps being served) while it is attached to
        the vDPA bus: the kernel would refuse VDUSE_DESTROY_DEV with EBUSY.
        """
        if not self._closed and self._created and os.path.exists(
                host().sys_path("bus", "vdpa", "devices", self.dev_name)):
            raise errors.BusyError(
                f"VDUSE device {self.dev_name} is still attached to the vDPA bus",
                errno=_errno.EBUSY, op="VDUSE_DESTROY_DEV", device=self.name,
                remedy=f"delete the vDPA device first: `pyvfio vdpa dev del {self.dev_name}` "
                       "(Vdpa().dev_del)")
        super().close()

    def _release(self) -> None:
        if self._thread is not None and self._stop is not None:    # a thread implies _stop
            self._stop.signal(1)
            self._thread.join()
            self._thread = None
        self._stop_queues()
        self._drop_maps(0, (1 << 64) - 1, unmap=True)
        if self._stop is not None:
            self._stop.close()
        if self.fd >= 0:
            syscalls.close(self.fd)
            self.fd = -1
        if self._created:
            name = ffi.new("char[]", lib.VDUSE_NAME_MAX)
            ffi.memmove(name, self.dev_name.encode(), len(self.dev_name.encode()))
            try:
                syscalls.ioctl(self.ctl, lib.VDUSE_DESTROY_DEV, name, device=self.name)
            except errors.PyvfioError as exc:
                if exc.errno == _errno.EBUSY:
                    raise errors.BusyError(
                        f"VDUSE device {self.dev_name} is still attached to the vDPA bus",
                        errno=exc.errno, op="VDUSE_DESTROY_DEV", device=self.name,
                        remedy=f"delete the vDPA device first: `pyvfio vdpa dev del "
                               f"{self.dev_name}` (Vdpa().dev_del)") from None
                raise
            finally:
                syscalls.close(self.ctl)
                self.ctl = -1
            self._created = False
        if self.ctl >= 0:
            syscalls.close(self.ctl)
            self.ctl = -1


class VduseBlk(VduseDevice):
    """A virtio-blk VDUSE device backed by a file (``path``) or by ``size`` bytes of memory.

    ``memory`` (for memory backing) is the bytes the device stores into.
    """

    def __init__(self, name: str, *, path: Optional[str] = None, size: Optional[int] = None,
                 serial: bytes = b"pyvfio-vduse", queue_size: int = 256,
                 packed: bool = False) -> None:
        self.backing_fd = -1
        self.memory: Optional[Any] = None
        if (path is None) == (size is None):
            raise errors.InvalidArgumentError("VduseBlk needs a backing path or a memory size")
        if path is not None:
            self.backing_fd = syscalls.open(path, os.O_RDWR, device=f"vduse {name}")
            self.capacity = os.fstat(self.backing_fd).st_size // _SECTOR
        else:
            assert size is not None          # exactly one of path and size (checked above)
            if size <= 0 or size % _SECTOR:
                raise errors.InvalidArgumentError(f"size {size} is not a positive number of sectors")
            self.memory = syscalls.mmap(-1, size, flags=_mmap.MAP_SHARED | _mmap.MAP_ANONYMOUS,
                                        what=f"vduse {name} backing")
            self.capacity = size // _SECTOR
        self.serial = serial[:lib.VIRTIO_BLK_ID_BYTES]
        cfg = ffi.new("struct virtio_blk_config *")
        cfg.capacity = self.capacity
        cfg.seg_max = 128
        cfg.blk_size = _SECTOR
        cfg.num_queues = 1
        features = ((1 << lib.VIRTIO_F_VERSION_1) | (1 << lib.VIRTIO_F_ACCESS_PLATFORM) |
                    (1 << lib.VIRTIO_BLK_F_FLUSH) | (1 << lib.VIRTIO_BLK_F_SEG_MAX) |
                    (1 << lib.VIRTIO_BLK_F_BLK_SIZE) |
                    ((1 << lib.VIRTIO_F_RING_PACKED) if packed else 0))
        try:
            super().__init__(name, device_id=lib.VIRTIO_ID_BLOCK, features=features,
                             config=bytes(ffi.buffer(cfg)), vq_num=1, vq_max=queue_size)
        except BaseException:
            self._close_backing()
            raise

    def backing_read(self, offset: int, size: int) -> bytes:
        """Bytes of the backing store (what the device wrote)."""
        if self.memory is not None:
            return bytes(self.memory[offset:offset + size])
        return syscalls.pread(self.backing_fd, size, offset, device=self.name)

    def process(self, index: int, chain: DescChain) -> int:
        head = chain.read_all()
        if len(head) < _BLK_HDR.size or not chain.writable:
            return 0
        rtype, _, sector = _BLK_HDR.unpack_from(head)
        status_addr, status_len = chain.writable[-1]
        status_ptr = ffi.cast("uint8_t *", status_addr + status_len - 1)
        in_len = chain.writable_len - 1
        offset = sector * _SECTOR
        status = lib.VIRTIO_BLK_S_OK
        written = 1
        if rtype == lib.VIRTIO_BLK_T_IN:
            if offset + in_len > self.capacity * _SECTOR:
                status = lib.VIRTIO_BLK_S_IOERR
            else:
                self._scatter(chain, self.backing_read(offset, in_len))
                written += in_len
        elif rtype == lib.VIRTIO_BLK_T_OUT:
            data = head[_BLK_HDR.size:]
            if offset + len(data) > self.capacity * _SECTOR:
                status = lib.VIRTIO_BLK_S_IOERR
            elif self.memory is not None:
                self.memory[offset:offset + len(data)] = data
            else:
                syscalls.pwrite(self.backing_fd, data, offset, device=self.name)
        elif rtype == lib.VIRTIO_BLK_T_FLUSH:
            if self.backing_fd >= 0:
                os.fsync(self.backing_fd)
        elif rtype == lib.VIRTIO_BLK_T_GET_ID:
            ident = self.serial.ljust(lib.VIRTIO_BLK_ID_BYTES, b"\0")[:in_len]
            self._scatter(chain, ident)
            written += len(ident)
        else:
            status = lib.VIRTIO_BLK_S_UNSUPP
        status_ptr[0] = status
        return written

    @staticmethod
    def _scatter(chain: DescChain, data: bytes) -> None:
        off = 0
        for addr, n in chain.writable:
            if off >= len(data):
                break
            k = min(n, len(data) - off)
            ffi.memmove(ffi.cast("char *", addr), data[off:off + k], k)
            off += k

    def _close_backing(self) -> None:
        if self.memory is not None:
            syscalls.munmap(self.memory)
            self.memory = None
        if self.backing_fd >= 0:
            syscalls.close(self.backing_fd)
            self.backing_fd = -1

    def _release(self) -> None:
        try:
            super()._release()
        finally:
            self._close_backing()
