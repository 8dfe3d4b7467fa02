"""vhost nodes in the mock kernel: /dev/vhost-net (with a loopback data path),
/dev/vhost-vsock, /dev/vhost-scsi, and /dev/net/tun.

The ioctl state rules follow ``drivers/vhost/vhost.c`` and ``net.c`` of Linux
6.12 and were checked against the real answers in the lab guests
(tests/vhost): ``VHOST_SET_OWNER`` twice is EBUSY; every other ioctl of
``vhost_dev_ioctl``/``vhost_vring_ioctl`` needs the owner (EPERM); a vring
index past the device's queues is ENOBUFS; a ring size that is zero, above
0xffff or not a power of two is EINVAL; ring addresses misaligned are EINVAL
and a running ring's size or base is EBUSY; a kick/call fd that is not an
eventfd is EINVAL; feature bits not offered are EOPNOTSUPP;
``VHOST_NET_SET_BACKEND`` with rings the worker cannot reach is EFAULT, with
a file that is not a TAP is ENOTSOCK.

The mock's vhost-net worker runs when the process makes a system call (as
the rest of the mock does): it takes kicks, moves every available TX frame
to the attached TAP and, as a loopback, straight back into RX buffers
(frames wait in the TAP's queue while no RX buffer is posted), and signals
the call eventfd when the driver's EVENT_IDX or flags ask for it.  Frames
written to the mock TAP's fd enter RX the same way.
"""
from __future__ import annotations

import dataclasses
import errno
import os
from collections import deque
from typing import Any, Deque, List, Optional, Set, Tuple, cast

from pyvfio.core.uapi import ffi, lib
from pyvfio.mock.core.family import Family, MockFile, register
from pyvfio.mock.core.uaccess import (EventFd, copy_from_user, copy_to_user, fail, read_user,
                                      user_range_ok)
from pyvfio.virtio.device import DeviceSplitQueue

__all__ = ["MockVhost", "VhostFile", "VhostNetFile", "VhostVsockFile", "VhostScsiFile",
           "TunFile", "NET_FEATURES", "VSOCK_FEATURES", "SCSI_FEATURES", "BACKEND_FEATURES"]

_U64 = "uint64_t"
_COMMON_FEATURES = ((1 << lib.VIRTIO_F_NOTIFY_ON_EMPTY) | (1 << lib.VIRTIO_RING_F_INDIRECT_DESC)
                    | (1 << lib.VIRTIO_RING_F_EVENT_IDX) | (1 << lib.VHOST_F_LOG_ALL)
                    | (1 << lib.VIRTIO_F_ANY_LAYOUT) | (1 << lib.VIRTIO_F_VERSION_1))
#: What 6.12's vhost-net offers (VHOST_NET_FEATURES).
NET_FEATURES = (_COMMON_FEATURES | (1 << lib.VHOST_NET_F_VIRTIO_NET_HDR)
                | (1 << lib.VIRTIO_NET_F_MRG_RXBUF) | (1 << lib.VIRTIO_F_ACCESS_PLATFORM)
                | (1 << lib.VIRTIO_F_RING_RESET))
VSOCK_FEATURES = (_COMMON_FEATURES | (1 << lib.VIRTIO_F_ACCESS_PLATFORM)
                  | (1 << lib.VIRTIO_VSOCK_F_SEQPACKET))
SCSI_FEATURES = (_COMMON_FEATURES | (1 << lib.VIRTIO_SCSI_F_HOTPLUG)
                 | (1 << lib.VIRTIO_SCSI_F_T10_PI))
BACKEND_FEATURES = (1 << lib.VHOST_BACKEND_F_IOTLB_MSG_V2)
MAX_MEM_REGIONS = 64


class Vring:
    """struct vhost_virtqueue, the parts the mock needs."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.num = 0
        self.last_avail = 0
        self.desc = self.avail = self.used = self.log = 0
        self.flags = 0
        self.kick: Optional[EventFd] = None
        self.call: Optional[EventFd] = None
        self.err: Optional[EventFd] = None
        self.backend: Any = None
        self.busyloop = 0
        self.worker = 0
        self.device: Optional[DeviceSplitQueue] = None

    def drop(self) -> None:
        for e in (self.kick, self.call, self.err):
            if e is not None:
                e.put()
        self.kick = self.call = self.err = None


class VhostFile(MockFile):
    """An open vhost node: the generic vhost_dev state and ioctls."""

    kind = "vhost"
    nvqs = 2
    features_offered = _COMMON_FEATURES
    #: Whether the node handles the worker ioctls (vhost_worker_ioctl: vhost-scsi only in 6.12).
    worker_ioctls = False

    def __init__(self, kernel: Any, path: str, family: "MockVhost") -> None:
        super().__init__(kernel, path)
        self.family = family
        self.owner = False
        self.features = 0
        self.backend_features = 0
        self.mem: Optional[List[Tuple[int, int, int]]] = None   # (gpa, size, uaddr); None: no umem
        self.vqs = [Vring(i) for i in range(self.nvqs)]
        self.workers = {0}
        self.next_worker = 1
        self.log_base = 0
        self.log_ctx: Optional[EventFd] = None
        self.iotlb: Optional[List[Tuple[int, int, int, int]]] = None
        self.misses: List[Tuple[int, int]] = []       # IOTLB MISS messages not yet read
        self.stalled: Set[int] = set()                # vrings waiting for an IOTLB update

    def release(self) -> None:
        self.family.files.discard(self)
        for vq in self.vqs:
            vq.backend = None
            vq.drop()
        if self.log_ctx is not None:
            self.log_ctx.put()
            self.log_ctx = None

    def rw(self, offset: Optional[int], size: int, data: Optional[bytes]) -> Any:
        """IOTLB messages: write = vhost_chr_write_iter, read = a pending MISS (none here)."""
        if data is None:
            if not self.misses:
                raise fail(errno.EAGAIN)
            iova, perm = self.misses.pop(0)
            m = ffi.new("struct vhost_msg_v2 *")
            m.type = lib.VHOST_IOTLB_MSG_V2
            m.iotlb.iova = iova
            m.iotlb.perm = perm
            m.iotlb.type = lib.VHOST_IOTLB_MISS
            return bytes(ffi.buffer(m))[:size]
        if self.iotlb is None:
            raise fail(errno.EFAULT)
        m = ffi.new("struct vhost_msg_v2 *")
        if len(data) < ffi.sizeof(m[0]):
            raise fail(errno.EINVAL)
        ffi.memmove(m, data, ffi.sizeof(m[0]))
        if m.type != lib.VHOST_IOTLB_MSG_V2:
            raise fail(errno.EINVAL)
        t = m.iotlb
        if t.type == lib.VHOST_IOTLB_UPDATE:
            if not t.size or t.iova + t.size - 1 < t.iova:
                raise fail(errno.EINVAL)
            self.iotlb.append((int(t.iova), int(t.size), int(t.uaddr), int(t.perm)))
            self.stalled.clear()                 # vhost_iotlb_notify_vq: the vrings run again
        elif t.type == lib.VHOST_IOTLB_INVALIDATE:
            lo, hi = t.iova, t.iova + t.size
            self.iotlb = [e for e in self.iotlb if e[0] + e[1] <= lo or e[0] >= hi]
        else:
            raise fail(errno.EINVAL)
        return len(data)

    # -- address translation (the worker's view) --------------------------------------------
    def translate(self, addr: int, size: int, write: bool) -> int:
        table = ([(i, s, u) for i, s, u, _ in self.iotlb] if self.iotlb is not None
                 else self.mem or [])
        for base, length, uaddr in table:
            if base <= addr and addr + size <= base + length:
                return uaddr + addr - base
        if self.iotlb is not None:              # vhost_iotlb_miss: ask the owner
            miss = (addr, lib.VHOST_ACCESS_WO if write else lib.VHOST_ACCESS_RO)
            if miss not in self.misses:
                self.misses.append(miss)
        raise fail(errno.EFAULT)

    # -- dirty log ------------------------------------------------------------------------
    @property
    def logging(self) -> bool:
        return bool(self.features >> lib.VHOST_F_LOG_ALL & 1) and bool(self.log_base)

    def log_write(self, gpa: int, length: int) -> None:
        """log_write: set the bits of the guest pages [gpa, gpa+length) in the bitmap."""
        if length <= 0:
            return
        page = lib.VHOST_PAGE_SIZE
        for pfn in range(gpa // page, (gpa + length - 1) // page + 1):
            p = ffi.cast("uint8_t *", self.log_base + pfn // 8)
            p[0] |= 1 << (pfn % 8)

    def log_used(self, vq: Vring, offset: int, length: int) -> None:
        if self.logging and vq.flags & (1 << lib.VHOST_VRING_F_LOG):
            self.log_write(vq.log + offset, length)
            if self.log_ctx is not None:
                self.log_ctx.signal(1)

    def ring_addr(self, addr: int, size: int) -> int:
        return self.translate(addr, size, True) if self.iotlb is not None else addr

    # -- ioctls -----------------------------------------------------------------------------
    def ioctl(self, cmd: int, addr: int) -> int:
        if cmd == lib.VHOST_GET_FEATURES:
            copy_to_user(addr, ffi.new(_U64 + " *", self.features_offered), 8)
            return 0
        if cmd == lib.VHOST_SET_FEATURES:
            f = copy_from_user(addr, _U64)[0]
            if f & ~self.features_offered:
                raise fail(errno.EOPNOTSUPP)
            if f >> lib.VHOST_F_LOG_ALL & 1 and self.mem is None:
                raise fail(errno.EFAULT)         # vhost_log_access_ok: no memory table
            if f >> lib.VIRTIO_F_ACCESS_PLATFORM & 1:
                if self.iotlb is None:
                    self.iotlb = []
            else:
                self.iotlb = None
            self.features = f
            return 0
        if cmd == lib.VHOST_GET_BACKEND_FEATURES:
            copy_to_user(addr, ffi.new(_U64 + " *", BACKEND_FEATURES), 8)
            return 0
        if cmd == lib.VHOST_SET_BACKEND_FEATURES:
            f = copy_from_user(addr, _U64)[0]
            if f & ~BACKEND_FEATURES:
                raise fail(errno.EOPNOTSUPP)
            self.backend_features = f
            return 0
        ret = self.device_ioctl(cmd, addr)
        if ret is not None:
            return ret
        if cmd == lib.VHOST_SET_OWNER:
            if self.owner:
                raise fail(errno.EBUSY)
            self.owner = True
            return 0
        if not self.owner:
            raise fail(errno.EPERM)
        if cmd == lib.VHOST_RESET_OWNER:
            self.owner = False
            self.mem = None
            for vq in self.vqs:
                vq.drop()
            self.vqs = [Vring(i) for i in range(self.nvqs)]
            return 0
        if cmd == lib.VHOST_SET_MEM_TABLE:
            return self._set_mem_table(addr)
        if cmd == lib.VHOST_SET_LOG_BASE:
            self.log_base = copy_from_user(addr, _U64)[0]
            return 0
        if cmd == lib.VHOST_SET_LOG_FD:
            fd = copy_from_user(addr, "int")[0]
            ctx = None if fd == -1 else EventFd.get(fd)
            if self.log_ctx is not None:
                self.log_ctx.put()
            self.log_ctx = ctx
            return 0
        if cmd in (lib.VHOST_NEW_WORKER, lib.VHOST_FREE_WORKER, lib.VHOST_ATTACH_VRING_WORKER,
                   lib.VHOST_GET_VRING_WORKER) and not self.worker_ioctls:
            raise fail(errno.ENOTTY)
        if cmd == lib.VHOST_NEW_WORKER:
            w = ffi.new("struct vhost_worker_state *", {"worker_id": self.next_worker})
            self.workers.add(self.next_worker)
            self.next_worker += 1
            copy_to_user(addr, w, ffi.sizeof(w[0]))
            return 0
        if cmd == lib.VHOST_FREE_WORKER:
            wid = copy_from_user(addr, "struct vhost_worker_state").worker_id
            if wid not in self.workers:
                raise fail(errno.ENODEV)
            if any(vq.worker == wid for vq in self.vqs):
                raise fail(errno.EBUSY)
            self.workers.discard(wid)
            return 0
        return self._vring_ioctl(cmd, addr)

    def device_ioctl(self, cmd: int, addr: int) -> Optional[int]:
        """The node's own ioctls (None: not one of them)."""
        return None

    def _set_mem_table(self, addr: int) -> int:
        hdr = copy_from_user(addr, "struct vhost_memory")
        if hdr.padding:
            raise fail(errno.EOPNOTSUPP)
        if hdr.nregions > MAX_MEM_REGIONS:
            raise fail(errno.E2BIG)
        size = ffi.sizeof("struct vhost_memory_region")
        regions: List[Tuple[int, int, int]] = []
        for i in range(hdr.nregions):
            r = copy_from_user(addr + ffi.sizeof("struct vhost_memory") + i * size,
                               "struct vhost_memory_region")
            if r.memory_size == 0 or r.guest_phys_addr + r.memory_size - 1 < r.guest_phys_addr:
                raise fail(errno.EFAULT)
            if not user_range_ok(r.userspace_addr, r.memory_size, write=True):
                raise fail(errno.EFAULT)
            for g, s, _ in regions:
                if r.guest_phys_addr < g + s and g < r.guest_phys_addr + r.memory_size:
                    raise fail(errno.EINVAL)
            regions.append((int(r.guest_phys_addr), int(r.memory_size), int(r.userspace_addr)))
        self.mem = regions
        return 0

    def _index(self, addr: int) -> Vring:
        idx = ffi.cast("unsigned int *", addr)[0] if addr else None
        if idx is None:
            raise fail(errno.EFAULT)
        if idx >= self.nvqs:
            raise fail(errno.ENOBUFS)
        return cast("Vring", self.vqs[idx])

    def _vring_ioctl(self, cmd: int, addr: int) -> int:
        if cmd not in (lib.VHOST_SET_VRING_NUM, lib.VHOST_SET_VRING_BASE, lib.VHOST_GET_VRING_BASE,
                       lib.VHOST_SET_VRING_ADDR, lib.VHOST_SET_VRING_KICK, lib.VHOST_SET_VRING_CALL,
                       lib.VHOST_SET_VRING_ERR, lib.VHOST_SET_VRING_ENDIAN,
                       lib.VHOST_GET_VRING_ENDIAN, lib.VHOST_SET_VRING_BUSYLOOP_TIMEOUT,
                       lib.VHOST_GET_VRING_BUSYLOOP_TIMEOUT, lib.VHOST_ATTACH_VRING_WORKER,
                       lib.VHOST_GET_VRING_WORKER):
            raise fail(errno.ENOTTY)
        vq = self._index(addr)
        if cmd in (lib.VHOST_SET_VRING_NUM, lib.VHOST_SET_VRING_BASE, lib.VHOST_GET_VRING_BASE,
                   lib.VHOST_SET_VRING_ENDIAN, lib.VHOST_GET_VRING_ENDIAN,
                   lib.VHOST_SET_VRING_BUSYLOOP_TIMEOUT, lib.VHOST_GET_VRING_BUSYLOOP_TIMEOUT):
            s = copy_from_user(addr, "struct vhost_vring_state")
            if cmd == lib.VHOST_SET_VRING_NUM:
                if vq.backend is not None:
                    raise fail(errno.EBUSY)
                if not s.num or s.num > 0xFFFF or s.num & (s.num - 1):
                    raise fail(errno.EINVAL)
                vq.num = s.num
            elif cmd == lib.VHOST_SET_VRING_BASE:
                if vq.backend is not None:
                    raise fail(errno.EBUSY)
                if s.num > 0xFFFF:
                    raise fail(errno.EINVAL)
                vq.last_avail = s.num
            elif cmd == lib.VHOST_GET_VRING_BASE:
                s.num = vq.device.last_avail if vq.device is not None else vq.last_avail
                copy_to_user(addr, s, ffi.sizeof(s[0]))
            elif cmd in (lib.VHOST_SET_VRING_ENDIAN, lib.VHOST_GET_VRING_ENDIAN):
                raise fail(errno.ENOTTY)     # CONFIG_VHOST_CROSS_ENDIAN_LEGACY is off (as in the lab)
            elif cmd == lib.VHOST_SET_VRING_BUSYLOOP_TIMEOUT:
                vq.busyloop = s.num
            else:
                s.num = vq.busyloop
                copy_to_user(addr, s, ffi.sizeof(s[0]))
            return 0
        if cmd == lib.VHOST_SET_VRING_ADDR:
            a = copy_from_user(addr, "struct vhost_vring_addr")
            if a.flags & ~(1 << lib.VHOST_VRING_F_LOG):
                raise fail(errno.EOPNOTSUPP)
            if (a.avail_user_addr & (lib.VRING_AVAIL_ALIGN_SIZE - 1)
                    or a.used_user_addr & (lib.VRING_USED_ALIGN_SIZE - 1)
                    or a.log_guest_addr & (lib.VRING_USED_ALIGN_SIZE - 1)):
                raise fail(errno.EINVAL)
            if vq.backend is not None and not self._rings_ok(vq, a.desc_user_addr,
                                                             a.avail_user_addr, a.used_user_addr):
                raise fail(errno.EINVAL)
            vq.desc, vq.avail, vq.used = int(a.desc_user_addr), int(a.avail_user_addr), int(a.used_user_addr)
            vq.log, vq.flags = int(a.log_guest_addr), int(a.flags)
            return 0
        if cmd in (lib.VHOST_SET_VRING_KICK, lib.VHOST_SET_VRING_CALL, lib.VHOST_SET_VRING_ERR):
            f = copy_from_user(addr, "struct vhost_vring_file")
            ctx = None if f.fd == lib.VHOST_FILE_UNBIND else EventFd.get(f.fd)
            attr = {lib.VHOST_SET_VRING_KICK: "kick", lib.VHOST_SET_VRING_CALL: "call",
                    lib.VHOST_SET_VRING_ERR: "err"}[cmd]
            old = getattr(vq, attr)
            if old is not None:
                old.put()
            setattr(vq, attr, ctx)
            return 0
        w = copy_from_user(addr, "struct vhost_vring_worker")
        if cmd == lib.VHOST_ATTACH_VRING_WORKER:
            if w.worker_id not in self.workers:
                raise fail(errno.ENODEV)
            vq.worker = w.worker_id
            return 0
        w.worker_id = vq.worker
        copy_to_user(addr, w, ffi.sizeof(w[0]))
        return 0

    def _rings_ok(self, vq: Vring, desc: int, avail: int, used: int) -> bool:
        n = vq.num
        if not n or not desc or not avail or not used:
            return False
        try:
            d = self.ring_addr(desc, 16 * n)
            a = self.ring_addr(avail, 6 + 2 * n)
            u = self.ring_addr(used, 6 + 8 * n)
        except OSError:
            return False
        return (user_range_ok(d, 16 * n) and user_range_ok(a, 6 + 2 * n)
                and user_range_ok(u, 6 + 8 * n, write=True))

    def vq_access_ok(self, vq: Vring) -> bool:
        """vhost_vq_access_ok: false without a memory table (vq_memory_access_ok sees no umem);
        the ring addresses themselves are only range-checked (access_ok)."""
        return self.mem is not None or self.iotlb is not None

    def start_vring(self, vq: Vring) -> None:
        """vhost_vq_init_access: EFAULT when the worker cannot reach the rings."""
        if not self._rings_ok(vq, vq.desc, vq.avail, vq.used):
            raise fail(errno.EFAULT)
        n = vq.num
        vq.device = DeviceSplitQueue(
            n, self.ring_addr(vq.desc, 16 * n), self.ring_addr(vq.avail, 6 + 2 * n),
            self.ring_addr(vq.used, 6 + 8 * n), self.translate,
            event_idx=bool(self.features >> lib.VIRTIO_RING_F_EVENT_IDX & 1),
            last_avail=vq.last_avail, name=f"{self.kind} vring {vq.index}")

    def service(self) -> None:
        """The worker: run when the process enters the kernel."""


class TunFile(MockFile):
    """/dev/net/tun opened: after TUNSETIFF, a TAP whose stack side is a frame queue."""

    kind = "tun"

    def __init__(self, kernel: Any, path: str) -> None:
        super().__init__(kernel, path)
        self.name = ""
        self.flags = 0
        self.vnet_hdr_sz = 10
        self.offload = 0
        #: frames the stack would transmit through the TAP (vhost RX takes them)
        self.to_guest: Deque[bytes] = deque()
        #: frames the stack received from the TAP (what vhost TX sent)
        self.from_guest: Deque[bytes] = deque()
        self.loopback = True

    def ioctl(self, cmd: int, addr: int) -> int:
        if cmd == lib.TUNSETIFF:
            if self.name:
                raise fail(errno.EINVAL)
            raw = read_user(addr, 18)
            self.name = raw[:16].split(b"\0")[0].decode()
            self.flags = int.from_bytes(raw[16:18], "little")
            if not self.flags & lib.IFF_TAP:
                raise fail(errno.EINVAL)
            return 0
        if not self.name:
            raise fail(errno.EBADFD)
        if cmd == lib.TUNSETVNETHDRSZ:
            size = ffi.cast("int *", addr)[0]
            if size < 10:
                raise fail(errno.EINVAL)
            self.vnet_hdr_sz = size
            return 0
        if cmd == lib.TUNGETVNETHDRSZ:
            ffi.cast("int *", addr)[0] = self.vnet_hdr_sz
            return 0
        if cmd == lib.TUNSETOFFLOAD:
            known = (lib.TUN_F_CSUM | lib.TUN_F_TSO4 | lib.TUN_F_TSO6 | lib.TUN_F_TSO_ECN
                     | lib.TUN_F_UFO | lib.TUN_F_USO4 | lib.TUN_F_USO6)
            if addr & ~known:
                raise fail(errno.EINVAL)
            self.offload = addr
            return 0
        raise fail(errno.EINVAL)

    def rw(self, offset: Optional[int], size: int, data: Optional[bytes]) -> Any:
        if data is None:               # read: a frame the stack transmitted (none here)
            if not self.from_guest:
                raise fail(errno.EAGAIN)
            return self.from_guest.popleft()[:size]
        self.to_guest.append(bytes(data))   # write: into the stack; the loopback hands it to RX
        return len(data)


class VhostNetFile(VhostFile):
    """/dev/vhost-net: RX (0) and TX (1), VHOST_NET_SET_BACKEND, a loopback worker."""

    kind = "vhost-net"
    nvqs = 2
    features_offered = NET_FEATURES

    def device_ioctl(self, cmd: int, addr: int) -> Optional[int]:
        if cmd != lib.VHOST_NET_SET_BACKEND:
            return None
        f = copy_from_user(addr, "struct vhost_vring_file")
        if f.index >= self.nvqs:
            raise fail(errno.ENOBUFS)
        if not self.owner:
            raise fail(errno.EPERM)
        vq = self.vqs[f.index]
        if not self.vq_access_ok(vq):
            raise fail(errno.EFAULT)
        if f.fd == -1:
            vq.backend = None
            return 0
        tun = self.kernel.file_of(f.fd)
        if not isinstance(tun, TunFile):
            raise fail(errno.ENOTSOCK)
        self.start_vring(vq)
        vq.backend = tun
        return 0

    def service(self) -> None:
        rx, tx = self.vqs
        hlen = self._hdr_len()
        for vq in (rx, tx):
            if vq.kick is not None:
                vq.kick.consume()
        if tx.backend is not None and tx.device is not None:
            moved = 0
            while True:
                chain = self._pop(tx)
                if chain is None:
                    break
                frame = chain.read_all()[hlen:]
                tx.device.push(chain.id, 0)
                moved += 1
                tun: TunFile = tx.backend
                (tun.to_guest if tun.loopback else tun.from_guest).append(frame)
            if moved and tx.device.flush() and tx.call is not None:
                tx.call.signal(1)
        if rx.backend is not None and rx.device is not None:
            tun = rx.backend
            filled = 0
            while tun.to_guest:
                chain = self._pop(rx)
                if chain is None:
                    break
                frame = tun.to_guest.popleft()
                data = bytes(hlen) + frame
                if len(data) > chain.writable_len:
                    data = data[:chain.writable_len]
                n = chain.write_all(data)
                if self.logging:
                    left = n
                    for a, length in chain.written_at:
                        self.log_write(a, min(length, left))
                        left -= min(length, left)
                idx = rx.device.used_idx % rx.num
                rx.device.push(chain.id, n)
                self.log_used(rx, 4 + 8 * idx, 8)
                filled += 1
            if filled:
                self.log_used(rx, 2, 2)
            if filled and rx.device.flush() and rx.call is not None:
                rx.call.signal(1)

    def _pop(self, vq: Vring) -> Any:
        if vq.index in self.stalled:
            return None
        assert vq.device is not None         # popped only once the ring is set up
        try:
            return vq.device.pop()
        except OSError:
            if self.iotlb is not None:
                self.stalled.add(vq.index)   # one MISS sent; retried after the next UPDATE
            return None

    def _hdr_len(self) -> int:
        if self.features & ((1 << lib.VIRTIO_NET_F_MRG_RXBUF) | (1 << lib.VIRTIO_F_VERSION_1)):
            return 12
        return 10


class VhostVsockFile(VhostFile):
    """/dev/vhost-vsock: guest CID and running state (no data path in the mock)."""

    kind = "vhost-vsock"
    nvqs = 2
    features_offered = VSOCK_FEATURES

    def __init__(self, kernel: Any, path: str, family: "MockVhost") -> None:
        super().__init__(kernel, path, family)
        self.cid = 0
        self.running = False

    def device_ioctl(self, cmd: int, addr: int) -> Optional[int]:
        if cmd == lib.VHOST_VSOCK_SET_GUEST_CID:
            cid = copy_from_user(addr, _U64)[0]
            if cid <= 2 or cid >= 0xFFFFFFFF:      # reserved CIDs and U32_MAX
                raise fail(errno.EINVAL)
            if any(isinstance(f, VhostVsockFile) and f is not self and f.cid == cid
                   for f in self.family.files):
                raise fail(errno.EADDRINUSE)
            self.cid = cid
            return 0
        if cmd == lib.VHOST_VSOCK_SET_RUNNING:
            if not self.owner:
                raise fail(errno.EPERM)
            on = ffi.cast("int *", addr)[0]
            if on:
                for vq in self.vqs:
                    if not self.vq_access_ok(vq):
                        raise fail(errno.EFAULT)
                for vq in self.vqs:
                    self.start_vring(vq)
            self.running = bool(on)
            return 0
        return None


class VhostScsiFile(VhostFile):
    """/dev/vhost-scsi: ABI version, endpoint (no LIO in the mock: SET_ENDPOINT finds no target)."""

    kind = "vhost-scsi"
    nvqs = 130
    features_offered = SCSI_FEATURES
    worker_ioctls = True

    def device_ioctl(self, cmd: int, addr: int) -> Optional[int]:
        if cmd == lib.VHOST_SCSI_GET_ABI_VERSION:
            ffi.cast("int *", addr)[0] = lib.VHOST_SCSI_ABI_VERSION
            return 0
        if cmd == lib.VHOST_SCSI_GET_EVENTS_MISSED:
            ffi.cast("unsigned int *", addr)[0] = 0
            return 0
        if cmd in (lib.VHOST_SCSI_SET_ENDPOINT, lib.VHOST_SCSI_CLEAR_ENDPOINT):
            t = copy_from_user(addr, "struct vhost_scsi_target")
            if t.reserved:
                raise fail(errno.EOPNOTSUPP)
            if not all(self.vq_access_ok(vq) for vq in self.vqs):
                raise fail(errno.EFAULT)
            if cmd == lib.VHOST_SCSI_SET_ENDPOINT:
                raise fail(errno.ENODEV)     # the mock has no LIO: no TPG matches
            return 0
        return None


@register
class MockVhost(Family):
    """Family ``vhost``: /dev/vhost-net, /dev/vhost-vsock, /dev/vhost-scsi and /dev/net/tun.

    Configuration ``vhost_nodes``: which vhost nodes exist (the modules "loaded").
    """

    name = "vhost"
    NODES = {"net": VhostNetFile, "vsock": VhostVsockFile, "scsi": VhostScsiFile}
    MODULES = {"vhost_net": "net", "vhost_vsock": "vsock", "vhost_scsi": "scsi", "tun": None}

    @dataclasses.dataclass
    class Config:
        #: The vhost nodes present: any of "net", "vsock", "scsi".
        vhost_nodes: Tuple[str, ...] = ("net", "vsock", "scsi")

    def __init__(self, kernel: Any, config: "MockVhost.Config") -> None:
        super().__init__(kernel, config)
        self.files: Set[VhostFile] = set()
        self.present: Set[str] = set()

    def setup(self) -> None:
        for node in self.config.vhost_nodes:
            self.enable(node)
        self._add(("net", "tun"), lambda p: TunFile(self.kernel, p))

    def _add(self, parts: Tuple[str, ...], factory: Any) -> None:
        path = self.kernel.host.dev_path(*parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "a").close()
        self.kernel.add_node(path, factory)

    def enable(self, node: str) -> None:
        """Add ``/dev/vhost-<node>`` (as loading its module does)."""
        cls = self.NODES[node]

        def make(path: str) -> VhostFile:
            f = cls(self.kernel, path, self)
            self.files.add(f)
            return f
        self._add((f"vhost-{node}",), make)
        self.present.add(node)

    def modprobe(self, module: str) -> Optional[Tuple[int, str]]:
        if module not in self.MODULES:
            return None
        node = self.MODULES[module]
        if node is not None and node not in self.present:
            self.enable(node)
        return 0, ""

    def service(self) -> None:
        for f in list(self.files):
            f.service()
