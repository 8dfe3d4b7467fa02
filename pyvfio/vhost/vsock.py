"""vhost-vsock: the host end of virtio-vsock, with the library as the guest's driver.

``/dev/vhost-vsock`` has two vrings: 0 carries packets to the guest (the
device writes them into RX buffers), 1 packets from the guest (TX).  The
guest's address is its CID (``VHOST_VSOCK_SET_GUEST_CID``); the device moves
packets once ``VHOST_VSOCK_SET_RUNNING`` is 1.  Sockets of the same kernel
(``AF_VSOCK``) reach the guest at that CID, and the guest reaches them at
CID 2 (``VMADDR_CID_HOST``).

:class:`VsockDriver` is a minimal virtio-vsock stream driver: every packet
is a ``struct virtio_vsock_hdr`` followed by its payload; connections are
REQUEST/RESPONSE, data is RW, flow control is credit based (each side says
how much it can buffer, ``buf_alloc``, and how much it has consumed,
``fwd_cnt``), and a close is SHUTDOWN answered by RST.
"""
from __future__ import annotations

import errno as _errno
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Set, Tuple, Union

from pyvfio import errors
from pyvfio.core.eventfd import check_timeout
from pyvfio.core.uapi import ffi, lib
from pyvfio.vhost.backend import VhostBackend
from pyvfio.virtio.memory import DeviceMemory
from pyvfio.virtio.queue import SplitQueue

__all__ = ["VhostVsock", "VsockDriver", "VsockConnection", "HOST_CID", "HDR_LEN"]

HOST_CID = 2
HDR_LEN = ffi.sizeof("struct virtio_vsock_hdr")
_RX, _TX = 0, 1
_STREAM = lib.VIRTIO_VSOCK_TYPE_STREAM
_SHUTDOWN_BOTH = lib.VIRTIO_VSOCK_SHUTDOWN_RCV | lib.VIRTIO_VSOCK_SHUTDOWN_SEND


class VhostVsock(VhostBackend):
    """``/dev/vhost-vsock``: vrings 0 (to the guest) and 1 (from the guest)."""

    node = "vhost-vsock"
    module = "vhost_vsock"
    num_queues = 2
    device_type = "vsock"

    def set_guest_cid(self, cid: int) -> None:
        """VHOST_VSOCK_SET_GUEST_CID: the guest's address (3 .. 2**32-2, unique on the host)."""
        try:
            self._ioctl(lib.VHOST_VSOCK_SET_GUEST_CID, ffi.new("uint64_t *", cid),
                        remedy="CIDs 0-2 and 2**32-1 are reserved")
        except errors.PyvfioError as exc:
            if exc.errno == _errno.EADDRINUSE:
                raise errors.BusyError(f"guest CID {cid} is taken by another vhost-vsock device",
                                       errno=exc.errno, op=exc.op, device=self.name,
                                       remedy="choose another CID") from None
            raise
        self.cid = cid

    def set_running(self, running: bool = True) -> None:
        """VHOST_VSOCK_SET_RUNNING: start (1) or stop (0) the device; starting checks the rings."""
        self._ioctl(lib.VHOST_VSOCK_SET_RUNNING, ffi.new("int *", 1 if running else 0),
                    remedy="set the memory table and both vrings (setup_vring) first")

    def _extra_info(self) -> Dict[str, object]:
        return {}


class VsockConnection:
    """One stream connection of the driver (guest side)."""

    def __init__(self, driver: "VsockDriver", local_port: int, peer_cid: int, peer_port: int) -> None:
        self.driver = driver
        self.local_port = local_port
        self.peer_cid = peer_cid
        self.peer_port = peer_port
        self.state = "connecting"
        self.rx: Deque[bytes] = deque()
        self.rx_bytes = 0
        self.fwd_cnt = 0            # bytes we consumed
        self._fwd_told = 0
        self.tx_cnt = 0             # bytes we sent
        self.peer_buf_alloc = 0
        self.peer_fwd_cnt = 0
        self.peer_shutdown = 0
        self.reset = False          # an RST arrived

    @property
    def key(self) -> Tuple[int, int, int]:
        return (self.local_port, self.peer_cid, self.peer_port)

    @property
    def peer_credit(self) -> int:
        return self.peer_buf_alloc - (self.tx_cnt - self.peer_fwd_cnt)

    def _check(self) -> None:
        if self.reset:
            raise errors.PyvfioError("connection reset by peer", errno=_errno.ECONNRESET,
                                     device=self.driver.name,
                                     remedy="the peer closed or refused; connect again")
        if self.state == "closed":
            raise errors.ClosedError(f"vsock connection {self.local_port}->"
                                     f"{self.peer_cid}:{self.peer_port}", device=self.driver.name)

    def send(self, data: bytes, timeout: Optional[float] = 10.0) -> int:
        """Send all of ``data`` (RW packets within the peer's credit)."""
        timeout = check_timeout(timeout, device=self.driver.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        mv = memoryview(data)
        off = 0
        d = self.driver
        while off < len(data):
            self._check()
            if self.peer_shutdown & lib.VIRTIO_VSOCK_SHUTDOWN_RCV:
                raise errors.PyvfioError("peer shut down its receive side", errno=_errno.EPIPE,
                                         device=d.name)
            credit = self.peer_credit
            if credit <= 0:
                if self.tx_cnt - self.peer_fwd_cnt > 0:
                    d._send(self, lib.VIRTIO_VSOCK_OP_CREDIT_REQUEST)
                d._poll(d._left(deadline, "credit from the peer"))
                continue
            n = min(credit, d.pkt - HDR_LEN, len(data) - off)
            d._send(self, lib.VIRTIO_VSOCK_OP_RW, mv[off:off + n])
            self.tx_cnt += n
            off += n
            d._reclaim()
        d._flush_tx()
        return len(data)

    def recv(self, size: int = 65536, timeout: Optional[float] = 10.0) -> bytes:
        """Up to ``size`` bytes; b"" once the peer shut down its sending side."""
        timeout = check_timeout(timeout, device=self.driver.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        d = self.driver
        while not self.rx:
            if self.peer_shutdown & lib.VIRTIO_VSOCK_SHUTDOWN_SEND or self.state == "closed":
                return b""
            self._check()
            d._poll(d._left(deadline, "data"))
        out = bytearray()
        while self.rx and len(out) < size:
            chunk = self.rx.popleft()
            take = chunk[:size - len(out)]
            out += take
            if len(take) < len(chunk):
                self.rx.appendleft(chunk[len(take):])
        self.rx_bytes -= len(out)
        self.fwd_cnt += len(out)
        if self.fwd_cnt - self._fwd_told >= d.buf_alloc // 4:
            d._send(self, lib.VIRTIO_VSOCK_OP_CREDIT_UPDATE)
            d._flush_tx()
        return bytes(out)

    def recv_exact(self, size: int, timeout: Optional[float] = 10.0) -> bytes:
        out = bytearray()
        while len(out) < size:
            chunk = self.recv(size - len(out), timeout)
            if not chunk:
                raise errors.PyvfioError(f"peer closed after {len(out)} of {size} bytes",
                                         errno=_errno.EPIPE, device=self.driver.name)
            out += chunk
        return bytes(out)

    def send_reset(self) -> None:
        """Abort the connection with an RST."""
        self.driver._send(self, lib.VIRTIO_VSOCK_OP_RST)
        self.driver._flush_tx()
        self.state = "closed"
        self.driver.conns.pop(self.key, None)

    def close(self, timeout: Optional[float] = 10.0) -> None:
        """SHUTDOWN both directions and wait for the peer's RST."""
        if self.state == "closed" or self.reset:
            self.state = "closed"
            self.driver.conns.pop(self.key, None)
            return
        d = self.driver
        d._send(self, lib.VIRTIO_VSOCK_OP_SHUTDOWN, flags=_SHUTDOWN_BOTH)
        d._flush_tx()
        timeout = check_timeout(timeout, device=d.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.reset:
            d._poll(d._left(deadline, "the peer's RST after SHUTDOWN"))
        self.state = "closed"
        d.conns.pop(self.key, None)


class VsockDriver:
    """The guest's virtio-vsock driver over vhost-vsock, at guest CID ``cid``.

    ``buf_alloc`` is the receive buffer each connection announces; ``pkt``
    the size of each RX/TX buffer (header included).
    """

    def __init__(self, cid: int, *, size: int = 128, pkt: int = 4096 + HDR_LEN,
                 buf_alloc: int = 256 * 1024, event_idx: bool = True,
                 path: Optional[str] = None) -> None:
        self.name = "vhost-vsock"
        self.cid = cid
        self.pkt = pkt
        self.buf_alloc = buf_alloc
        self.memory = DeviceMemory(name="vhost-vsock memory")
        self.vhost: Optional[VhostVsock] = None
        # both exist once __init__ returns; close() copes with a failed construction
        self.rxq: SplitQueue
        self.txq: SplitQueue
        self.conns: Dict[Tuple[int, int, int], VsockConnection] = {}
        self.listening: Set[int] = set()
        self.accepted: Deque[VsockConnection] = deque()
        #: (op, src_cid, src_port, dst_port) of RSTs we sent for unknown ports
        self.refused: List[Tuple[int, int, int]] = []
        self._next_port = 49152
        try:
            self.vhost = VhostVsock(path)
            want = 1 << lib.VIRTIO_F_VERSION_1
            if event_idx:
                want |= 1 << lib.VIRTIO_RING_F_EVENT_IDX
            self.vhost.set_features(want)
            self.rxq = SplitQueue(self.memory, size, index=_RX, features=want, name="vsock rx")
            self.txq = SplitQueue(self.memory, size, index=_TX, features=want, name="vsock tx")
            buf = self.memory.new_buffer(2 * size * pkt)
            self._rx_slots = [self.memory.region(buf, i * pkt, pkt) for i in range(size)]
            self._tx_slots = [self.memory.region(buf, (size + i) * pkt, pkt) for i in range(size)]
            self._tx_free = list(range(size - 1, -1, -1))
            self.vhost.set_mem_table(self.memory)
            self.vhost.setup_vring(_RX, self.rxq)
            self.vhost.setup_vring(_TX, self.txq)
            for i in range(size):
                self.rxq.add(writable=[self._rx_slots[i]], token=i)
            self.rxq.kick()
            self.vhost.set_guest_cid(cid)
            self.vhost.set_running(True)
        except BaseException:
            self.close()
            raise

    # -- packets ------------------------------------------------------------------------------
    def _left(self, deadline: Optional[float], what: str) -> Optional[float]:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            raise errors.TimedOutError(f"no {what} in time", device=self.name)
        return left

    def _send(self, conn: VsockConnection, op: int, payload: Union[bytes, memoryview] = b"",
              flags: int = 0) -> None:
        self._send_raw(conn.local_port, conn.peer_cid, conn.peer_port, op, payload, flags,
                       conn.fwd_cnt)
        conn._fwd_told = conn.fwd_cnt

    def _send_raw(self, src_port: int, dst_cid: int, dst_port: int, op: int,
                  payload: Union[bytes, memoryview] = b"", flags: int = 0, fwd_cnt: int = 0) -> None:
        while not self._tx_free:
            self._reclaim()
            if not self._tx_free:
                self.txq.kick()
                for u in self.txq.wait(10.0):
                    self._tx_free.append(u.token)
        s = self._tx_free.pop()
        slot = self._tx_slots[s]
        h = ffi.new("struct virtio_vsock_hdr *", {
            "src_cid": self.cid, "dst_cid": dst_cid, "src_port": src_port, "dst_port": dst_port,
            "len": len(payload), "type": _STREAM, "op": op, "flags": flags,
            "buf_alloc": self.buf_alloc, "fwd_cnt": fwd_cnt})
        slot.write(bytes(ffi.buffer(h)) + bytes(payload))
        self.txq.add([slot.sub(0, HDR_LEN + len(payload))], token=s)
        self._tx_pending = True

    def _flush_tx(self) -> None:
        if getattr(self, "_tx_pending", False):
            self._tx_pending = False
            self.txq.kick()

    def _reclaim(self) -> None:
        for u in self.txq.used():
            self._tx_free.append(u.token)
        if len(self._tx_free) < 8:
            self._flush_tx()

    def _poll(self, timeout: Optional[float]) -> None:
        """Wait for packets to the guest and handle them."""
        self._flush_tx()
        used = self.rxq.wait(timeout)
        for u in used:
            slot = self._rx_slots[u.token]
            raw = slot.read(0, u.length)
            self._handle(raw)
            self.rxq.add(writable=[slot], token=u.token)
        self.rxq.kick()
        self._reclaim()
        self._flush_tx()

    def _handle(self, raw: bytes) -> None:
        h = ffi.new("struct virtio_vsock_hdr *")
        ffi.memmove(h, raw, HDR_LEN)
        payload = raw[HDR_LEN:HDR_LEN + h.len]
        key = (int(h.dst_port), int(h.src_cid), int(h.src_port))
        conn = self.conns.get(key)
        op = h.op
        if conn is not None:
            conn.peer_buf_alloc = h.buf_alloc
            conn.peer_fwd_cnt = h.fwd_cnt
        if op == lib.VIRTIO_VSOCK_OP_REQUEST:
            if conn is None and h.dst_port in self.listening:
                conn = VsockConnection(self, int(h.dst_port), int(h.src_cid), int(h.src_port))
                conn.peer_buf_alloc, conn.peer_fwd_cnt = h.buf_alloc, h.fwd_cnt
                conn.state = "established"
                self.conns[key] = conn
                self._send(conn, lib.VIRTIO_VSOCK_OP_RESPONSE)
                self.accepted.append(conn)
            else:
                self.refused.append((int(h.src_cid), int(h.src_port), int(h.dst_port)))
                self._send_raw(key[0], key[1], key[2], lib.VIRTIO_VSOCK_OP_RST)
            return
        if conn is None:
            if op != lib.VIRTIO_VSOCK_OP_RST:
                self._send_raw(key[0], key[1], key[2], lib.VIRTIO_VSOCK_OP_RST)
            return
        if op == lib.VIRTIO_VSOCK_OP_RESPONSE:
            conn.state = "established"
        elif op == lib.VIRTIO_VSOCK_OP_RST:
            conn.reset = True
            conn.state = "closed"
            self.conns.pop(key, None)
        elif op == lib.VIRTIO_VSOCK_OP_RW:
            conn.rx.append(payload)
            conn.rx_bytes += len(payload)
        elif op == lib.VIRTIO_VSOCK_OP_CREDIT_REQUEST:
            self._send(conn, lib.VIRTIO_VSOCK_OP_CREDIT_UPDATE)
        elif op == lib.VIRTIO_VSOCK_OP_SHUTDOWN:
            conn.peer_shutdown |= h.flags
            if conn.peer_shutdown == _SHUTDOWN_BOTH and not conn.rx:
                self._send(conn, lib.VIRTIO_VSOCK_OP_RST)
                conn.state = "closed"
                self.conns.pop(key, None)

    # -- sockets ------------------------------------------------------------------------------
    def listen(self, port: int) -> None:
        """Accept connections to ``port`` from now on."""
        self.listening.add(port)

    def accept(self, port: int, timeout: Optional[float] = 10.0) -> VsockConnection:
        """The next connection made to ``port`` (which must be listened on)."""
        if port not in self.listening:
            raise errors.NotReadyError(f"port {port} is not listened on", device=self.name,
                                       remedy="call listen(port) first")
        timeout = check_timeout(timeout, device=self.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for c in list(self.accepted):
                if c.local_port == port:
                    self.accepted.remove(c)
                    return c
            self._poll(self._left(deadline, f"connection to port {port}"))

    def connect(self, port: int, cid: int = HOST_CID, *, timeout: Optional[float] = 10.0
                ) -> VsockConnection:
        """Connect to ``cid``:``port``; ConnectionRefused-like error on an RST."""
        local = self._next_port
        self._next_port += 1
        conn = VsockConnection(self, local, cid, port)
        self.conns[conn.key] = conn
        self._send(conn, lib.VIRTIO_VSOCK_OP_REQUEST)
        timeout = check_timeout(timeout, device=self.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        while conn.state == "connecting":
            self._poll(self._left(deadline, f"answer from {cid}:{port}"))
        if conn.reset:
            raise errors.PyvfioError(f"connection to {cid}:{port} refused",
                                     errno=_errno.ECONNREFUSED, device=self.name,
                                     remedy="nothing listens on that port")
        return conn

    def close(self) -> None:
        if self.vhost is not None and not self.vhost.closed:
            try:
                self.vhost.set_running(False)
            except errors.PyvfioError:
                pass
            self.vhost.close()
        for q in (getattr(self, "rxq", None), getattr(self, "txq", None)):
            if q is not None:
                q.close()
        self.memory.close()

    def __enter__(self) -> "VsockDriver":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
