"""vhost-net: the kernel moves virtio-net frames between the rings and a TAP socket.

``/dev/vhost-net`` has two vrings, 0 = receive queue (the device writes
frames the TAP's stack transmitted) and 1 = transmit queue (the device reads
frames and hands them to the TAP, whose stack receives them).
``VHOST_NET_SET_BACKEND`` attaches the TAP's file to a vring; it checks the
rings, so the memory table and ring addresses must be set first (else
EFAULT).

Each frame in the rings starts with a ``struct virtio_net_hdr_mrg_rxbuf``
(12 bytes with ``VIRTIO_F_VERSION_1``), which the TAP must expect too:
``IFF_VNET_HDR`` and ``TUNSETVNETHDRSZ`` 12 (the TAP's default is 10, and with
10 RX silently drops every frame).  Offloads are between the driver and the
TAP: those the driver accepts (checksum, TSO, UFO/USO) are set with
``TUNSETOFFLOAD``; without any the TAP hands over complete, checksummed frames.
``VHOST_NET_F_VIRTIO_NET_HDR`` (bit 27) is never acknowledged with a vnet-header TAP.
"""
from __future__ import annotations

import errno as _errno
import os
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.eventfd import check_timeout
from pyvfio.core.sysfs import host
from pyvfio.core.uapi import ffi, lib
from pyvfio.vhost.backend import VhostBackend
from pyvfio.virtio.memory import DeviceMemory
from pyvfio.virtio.queue import SplitQueue

__all__ = ["VhostNet", "Tap", "VirtioNet", "RX", "TX", "NET_HDR_LEN", "OFFLOADS"]

RX, TX = 0, 1
#: struct virtio_net_hdr_mrg_rxbuf: what vhost-net and the TAP exchange with VERSION_1.
NET_HDR_LEN = ffi.sizeof("struct virtio_net_hdr_mrg_rxbuf")
_IFNAMSIZ = 16
_IFREQ_SIZE = 40            # struct ifreq: name[16] + the largest union member (24 bytes)

#: Offloads a driver may accept, as TUNSETOFFLOAD flags (the TAP then passes
#: partial checksums and large segments with a virtio-net header saying so).
OFFLOADS: Dict[str, int] = {
    "csum": lib.TUN_F_CSUM, "tso4": lib.TUN_F_TSO4, "tso6": lib.TUN_F_TSO6,
    "tso_ecn": lib.TUN_F_TSO_ECN, "ufo": lib.TUN_F_UFO, "uso4": lib.TUN_F_USO4,
    "uso6": lib.TUN_F_USO6,
}


class Tap:
    """A TAP interface with a virtio-net header, attached to a file of ours.

    With ``create`` the interface is made persistent through pyroute2
    (netlink's ``tuntap`` link kind) and deleted again by :meth:`close`;
    otherwise ``name`` must exist or ``TUNSETIFF`` creates it for the life of
    the file.  ``offloads`` are names from :data:`OFFLOADS`.  ``address``
    (``"10.0.0.1/24"``) gives the kernel's side an IPv4 address; IPv6 is
    disabled before the link goes up so that its router solicitations and
    DAD frames stay out of the receive ring.
    """

    def __init__(self, name: str = "pyvfio-tap0", *, create: bool = True,
                 offloads: Iterable[str] = (), address: Optional[str] = None,
                 up: bool = True, hdr_len: int = NET_HDR_LEN) -> None:
        if not name or len(name.encode()) >= _IFNAMSIZ:
            raise errors.InvalidArgumentError(f"interface name {name!r} must be 1..15 bytes",
                                              device=name)
        self.name = name
        self.fd = -1
        self._created = False
        self.ifindex: Optional[int] = None
        try:
            if create:
                self._netlink_create()
            self.fd = syscalls.open(host().dev_path("net", "tun"), os.O_RDWR, device=name)
            self._set_iff()
            self.set_vnet_hdr_len(hdr_len)
            self.set_offload(offloads)
            if create:
                self._disable_ipv6()
                self._configure(address, up)
        except BaseException:
            self.close()
            raise

    # -- netlink (pyroute2) ------------------------------------------------------------------
    def _ipr(self) -> Any:
        try:
            from pyroute2 import IPRoute
        except ImportError:  # pragma: no cover - a declared dependency
            raise errors.NotSupportedError("pyroute2 is not installed", device=self.name,
                                           remedy="pip install pyroute2") from None
        return IPRoute()

    def _netlink_create(self) -> None:
        with self._ipr() as ipr:
            try:
                ipr.link("add", ifname=self.name, kind="tuntap", mode="tap",
                         ifr={"no_pi": True, "vnet_hdr": True, "one_queue": False,
                              "multi_queue": False})
            except Exception as exc:
                err = getattr(exc, "code", None) or getattr(exc, "errno", None) or _errno.EIO
                if err == _errno.ENOENT:
                    raise errors.ModuleMissingError(
                        "/dev/net/tun is missing", errno=err, device=self.name,
                        remedy="load the tun module: `modprobe tun`") from None
                raise errors.from_errno(err, op="tuntap add", device=self.name,
                                        remedy="needs CAP_NET_ADMIN and a free interface name "
                                               f"(`ip link del {self.name}`)") from None
            self._created = True
            self.ifindex = ipr.link_lookup(ifname=self.name)[0]

    def _configure(self, address: Optional[str], up: bool) -> None:
        with self._ipr() as ipr:
            if address:
                ip, _, plen = address.partition("/")
                ipr.addr("add", index=self.ifindex, address=ip, prefixlen=int(plen or 24))
            if up:
                ipr.link("set", index=self.ifindex, state="up")

    def _disable_ipv6(self) -> None:
        path = host().proc_path("sys", "net", "ipv6", "conf", self.name, "disable_ipv6")
        try:
            fd = syscalls.open(path, os.O_WRONLY, device=self.name)
        except errors.NotFoundError:
            return                   # no IPv6 in this kernel
        try:
            syscalls.write(fd, b"1", device=self.name)
        finally:
            syscalls.close(fd)

    # -- the tun file ---------------------------------------------------------------------------
    def _ifreq(self, flags: int = 0) -> Any:
        req = ffi.new("char[]", _IFREQ_SIZE)
        name = self.name.encode()
        ffi.memmove(req, name, len(name))
        ffi.cast("short *", req + _IFNAMSIZ)[0] = flags
        return req

    def _set_iff(self) -> None:
        flags = lib.IFF_TAP | lib.IFF_NO_PI | lib.IFF_VNET_HDR
        syscalls.ioctl(self.fd, lib.TUNSETIFF, self._ifreq(flags), device=self.name,
                       remedy="needs CAP_NET_ADMIN; an existing interface of that name must "
                              "be a single-queue TAP")

    def set_vnet_hdr_len(self, size: int) -> None:
        """TUNSETVNETHDRSZ, read back with TUNGETVNETHDRSZ."""
        syscalls.ioctl(self.fd, lib.TUNSETVNETHDRSZ, ffi.new("int *", size), device=self.name)
        got = ffi.new("int *")
        syscalls.ioctl(self.fd, lib.TUNGETVNETHDRSZ, got, device=self.name)
        if got[0] != size:
            raise errors.InvalidArgumentError(f"vnet header size is {got[0]}, not {size}",
                                              device=self.name)
        self.hdr_len = size

    def set_offload(self, offloads: Iterable[str]) -> None:
        """TUNSETOFFLOAD with the named offloads (the driver accepts those frames)."""
        flags = 0
        for o in offloads:
            if o not in OFFLOADS:
                raise errors.InvalidArgumentError(
                    f"unknown offload {o!r}", device=self.name,
                    remedy=f"choose from {', '.join(OFFLOADS)}")
            flags |= OFFLOADS[o]
        syscalls.ioctl(self.fd, lib.TUNSETOFFLOAD, flags, device=self.name,
                       remedy="TSO needs csum; this kernel may lack USO")
        self.offloads = flags

    def fileno(self) -> int:
        if self.fd < 0:
            raise errors.ClosedError(f"TAP {self.name}", device=self.name)
        return self.fd

    @property
    def closed(self) -> bool:
        return self.fd < 0 and not self._created

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            syscalls.close(fd)
        if self._created:
            self._created = False
            with self._ipr() as ipr:
                try:
                    ipr.link("del", ifname=self.name)
                except Exception:
                    pass

    def __enter__(self) -> "Tap":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class VhostNet(VhostBackend):
    """``/dev/vhost-net``: vrings 0 (RX) and 1 (TX), and VHOST_NET_SET_BACKEND."""

    node = "vhost-net"
    module = "vhost_net"
    num_queues = 2
    device_type = "net"

    def set_backend(self, index: int, backend: Union[Tap, int, None]) -> None:
        """VHOST_NET_SET_BACKEND: attach a TAP (or any packet socket fd) to vring ``index``;
        None detaches it (the vring stops)."""
        self._check_index(index)
        fd = -1 if backend is None else (backend if isinstance(backend, int) else backend.fileno())
        try:
            self._ioctl(lib.VHOST_NET_SET_BACKEND, ffi.new(
                "struct vhost_vring_file *", {"index": index, "fd": fd}))
        except errors.PyvfioError as exc:
            if exc.errno == _errno.EFAULT:
                raise errors.OutOfBoundsError(
                    f"vhost-net cannot reach vring {index}: VHOST_NET_SET_BACKEND checks the "
                    "rings, and they are not set up (or not covered by the memory table)",
                    op="VHOST_NET_SET_BACKEND", path=self.path, device=self.name,
                    remedy="set the memory table and the vring's num, base and addresses "
                           "(setup_vring) before attaching the backend") from None
            if exc.errno == _errno.ENOTSOCK:
                raise errors.InvalidArgumentError(
                    "the backend fd is not a TAP, TUN or packet socket", errno=exc.errno,
                    op="VHOST_NET_SET_BACKEND", device=self.name,
                    remedy="pass a Tap (or a tun/macvtap file, or an AF_PACKET socket)") from None
            raise


class VirtioNet:
    """A virtio-net driver over vhost-net: RX and TX split queues with frame slots.

    It negotiates ``VIRTIO_F_VERSION_1`` plus EVENT_IDX and INDIRECT_DESC
    when asked (and offered), places the rings and ``2 * size`` frame slots
    of ``slot`` bytes in a :class:`DeviceMemory`, sets the memory table and
    both vrings, then attaches ``tap``.  :meth:`transmit` and
    :meth:`receive` move frames (without the virtio-net header).
    """

    def __init__(self, tap: Union[Tap, int], *, size: int = 256, event_idx: bool = True,
                 indirect: bool = False, slot: int = 2048, path: Optional[str] = None) -> None:
        self.memory = DeviceMemory(name="vhost-net memory")
        self.vhost: Optional[VhostNet] = None
        # both exist once __init__ returns; close() copes with a failed construction
        self.rxq: SplitQueue
        self.txq: SplitQueue
        self.size = size
        self.slot = slot
        try:
            self.vhost = VhostNet(path)
            offered = self.vhost.get_features()
            want = 1 << lib.VIRTIO_F_VERSION_1
            if event_idx:
                want |= 1 << lib.VIRTIO_RING_F_EVENT_IDX
            if indirect:
                want |= 1 << lib.VIRTIO_RING_F_INDIRECT_DESC
            self.vhost.set_features(want)
            self.features = want
            self.rxq = SplitQueue(self.memory, size, index=RX, features=want, name="vhost-net rx")
            self.txq = SplitQueue(self.memory, size, index=TX, features=want, name="vhost-net tx")
            buf = self.memory.new_buffer(2 * size * slot)
            self._rx_slots = [self.memory.region(buf, i * slot, slot) for i in range(size)]
            self._tx_slots = [self.memory.region(buf, (size + i) * slot, slot) for i in range(size)]
            self._tx_free = list(range(size - 1, -1, -1))
            self._rx_free = list(range(size - 1, -1, -1))
            self.vhost.set_mem_table(self.memory)
            self.vhost.setup_vring(RX, self.rxq)
            self.vhost.setup_vring(TX, self.txq)
            self.offered = offered
            self.tap = tap
            self.vhost.set_backend(RX, tap)
            self.vhost.set_backend(TX, tap)
        except BaseException:
            self.close()
            raise

    # -- RX -------------------------------------------------------------------------------------
    def post_rx(self, count: Optional[int] = None) -> int:
        """Offer free RX slots to the device (all that fit by default); returns how many."""
        q = self.rxq
        n = q.num_free if count is None else min(count, q.num_free)
        for _ in range(n):
            slot_i = self._rx_next_free()
            q.add(writable=[self._rx_slots[slot_i]], token=slot_i)
        if n:
            q.kick()
        return n

    def _rx_next_free(self) -> int:
        return self._rx_free.pop()

    def receive(self, count: int = 1, timeout: Optional[float] = 10.0, *,
                repost: bool = True) -> List[bytes]:
        """Wait for ``count`` frames; returns them without the header.

        Slots are offered again after each wait (``repost``), so more frames
        than the ring holds can be received.
        """
        timeout = check_timeout(timeout, device="vhost-net rx")
        deadline = None if timeout is None else time.monotonic() + timeout
        out: List[bytes] = []
        while len(out) < count:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                used = self.rxq.wait(left)
            except errors.TimedOutError:
                raise errors.TimedOutError(f"{len(out)} of {count} frames received within "
                                           f"{timeout} s", device="vhost-net rx") from None
            for u in used:
                slot = self._rx_slots[u.token]
                out.append(slot.read(NET_HDR_LEN, u.length - NET_HDR_LEN))
                self._rx_free.append(u.token)
            if repost:
                self.post_rx()
        return out

    # -- TX -------------------------------------------------------------------------------------
    def transmit(self, frames: Sequence[bytes], *, batch: int = 64, split_header: bool = False,
                 timeout: Optional[float] = 10.0) -> int:
        """Send ``frames`` in groups of ``batch`` (one kick and one wait per group).

        With ``split_header`` each frame is two descriptors (header, frame).
        Returns the number sent.
        """
        if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
            raise errors.InvalidArgumentError(
                f"batch {batch!r} is not a positive integer",
                device=getattr(self.vhost, "name", None),
                remedy="pass batch=1..queue size")
        if not isinstance(frames, (list, tuple)) or not all(
                isinstance(f, (bytes, bytearray, memoryview)) for f in frames):
            raise errors.InvalidArgumentError(
                f"frames must be a sequence of bytes, not {type(frames).__name__}",
                device=getattr(self.vhost, "name", None), remedy="pass a list of bytes objects")
        q = self.txq
        hdr = bytes(NET_HDR_LEN)
        sent = 0
        i = 0
        while i < len(frames):
            group = frames[i:i + batch]
            for f in group:
                if len(f) + NET_HDR_LEN > self.slot:
                    raise errors.InvalidArgumentError(
                        f"frame of {len(f)} bytes does not fit a {self.slot}-byte slot",
                        device="vhost-net")
                s = self._tx_free.pop()
                region = self._tx_slots[s]
                region.write(hdr + f)
                if split_header:
                    q.add([region.sub(0, NET_HDR_LEN), region.sub(NET_HDR_LEN, len(f))], token=s)
                else:
                    q.add([region.sub(0, NET_HDR_LEN + len(f))], token=s)
            q.kick()
            for u in q.wait_for(len(group), timeout):
                self._tx_free.append(u.token)
            sent += len(group)
            i += batch
        return sent

    def close(self) -> None:
        if self.vhost is not None:
            self.vhost.close()
        for q in (getattr(self, "rxq", None), getattr(self, "txq", None)):
            if q is not None:
                q.close()
        self.memory.close()

    def __enter__(self) -> "VirtioNet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
