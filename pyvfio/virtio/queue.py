"""Driver-side virtqueues: the split ring and the packed ring of the virtio spec.

A virtqueue is memory shared with a device that runs on another CPU (a vhost
worker thread, a vDPA device, a VDUSE daemon).  The driver offers buffers as
chains of descriptors, each part device-readable or device-writable; the
device hands them back as *used* buffers with the number of bytes it wrote.
The queues here are transport-neutral: they write device addresses taken
from :class:`~pyvfio.virtio.memory.Region` objects, notify the device through
a callable (by default they signal their own ``kick_event`` eventfd) and take
interrupts from their own ``call_event`` eventfd.  vhost, vhost-vdpa and VDUSE differ
only in what a device address means and who reads the eventfds.

Layouts come from the uAPI binding (``struct vring_desc``, ``struct
vring_avail``, ``struct vring_used``, ``struct vring_packed_desc``,
``struct vring_packed_desc_event``).  The packed ring and the device side
use cffi pointers into the shared memory; the split ring's hot paths pack
whole descriptors and used elements with ``struct.Struct`` objects whose
offsets and sizes are checked against the binding at import, and store the
16-bit ring fields as items of a ``memoryview`` cast to ``H``: each is one C
store of the field's width, about twice as fast as cffi field access.

Memory ordering
---------------
The device reads what the driver wrote in a different order than the
driver's program order unless the driver fences; on arm64, POWER or RISC-V
the CPU reorders plain stores and loads.  Python gives no ordering between
two stores into the ring (each is a C store made by the interpreter, and
nothing in CPython is a fence), so the queues call the barrier functions of
:mod:`pyvfio.core.mmio` -- C functions of the binding, each one fence
instruction chosen per architecture, and being opaque calls also compiler
barriers -- exactly where the virtio spec puts a barrier:

* ``dma_wmb`` after writing descriptors and avail ring entries, before the
  store that publishes them (``avail->idx``; a packed head descriptor's
  flags), so the device never sees an index before the entries it covers;
* ``dma_rmb`` after reading ``used->idx`` (or a packed descriptor's used
  flag), before reading the used entries it covers;
* ``mb`` between publishing and reading the device's notification
  suppression (``used->flags``, ``avail_event``, the packed device event),
  and between re-enabling interrupts and the last look at the used index:
  a store followed by a load, the one reordering even x86 does (mfence).

On x86 the two DMA barriers are compiler barriers only (TSO keeps loads and
stores in order); on arm64 they are ``dmb oshld``/``dmb oshst``, which also
cover a device on the other side of PCIe (vDPA hardware), not just another
CPU (vhost, VDUSE).
"""
from __future__ import annotations

import struct
import sys
import time
from typing import Any, Callable, Dict, List, Literal, NamedTuple, Optional, Sequence, Tuple

from pyvfio import errors
from pyvfio.core.eventfd import EventFd, check_timeout
from pyvfio.core.handle import Handle
from pyvfio.core import mmio
from pyvfio.core.uapi import ffi, lib
from pyvfio.virtio.memory import DeviceMemory, Region

__all__ = ["Used", "Virtqueue", "SplitQueue", "PackedQueue", "create_queue", "MAX_QUEUE_SIZE"]

#: The largest queue size the spec allows (a 16-bit ring index, power of two for split rings).
MAX_QUEUE_SIZE = 32768

# The barriers of pyvfio.core.mmio (C functions of the binding, one fence instruction each):
# DMA-memory ordering for the ring stores and loads, the full barrier for store-then-load.
_smp_mb = mmio.mb
_smp_rmb = mmio.dma_rmb
_smp_wmb = mmio.dma_wmb

_F_NEXT = lib.VRING_DESC_F_NEXT
_F_WRITE = lib.VRING_DESC_F_WRITE
_F_INDIRECT = lib.VRING_DESC_F_INDIRECT
_U32_MAX = (1 << 32) - 1


def _struct_of(ctype: str, fields: Sequence[Tuple[str, str]]) -> struct.Struct:
    """A ``struct.Struct`` for ``ctype`` whose offsets and sizes are checked against the
    binding (the C compiler's layout), so the hot paths can pack whole entries at once."""
    fmt = "="
    pos = 0
    for name, code in fields:
        off = ffi.offsetof(ctype, name)
        if off != pos:
            raise ImportError(f"{ctype}.{name} at {off}, expected {pos}")
        size = struct.calcsize("=" + code)
        if ffi.sizeof(dict(ffi.typeof(ctype).fields)[name].type) != size:
            raise ImportError(f"{ctype}.{name} is not {size} bytes")
        fmt += code
        pos += size
    if pos != ffi.sizeof(ctype):
        raise ImportError(f"{ctype} is {ffi.sizeof(ctype)} bytes, expected {pos}")
    return struct.Struct(fmt)


# Whole-entry packers for the split ring's hot paths, laid out as the binding says.
_DESC = _struct_of("struct vring_desc", (("addr", "Q"), ("len", "I"), ("flags", "H"), ("next", "H")))
_USED_ELEM = _struct_of("struct vring_used_elem", (("id", "I"), ("len", "I")))
_pack_desc = _DESC.pack_into
_unpack_used = _USED_ELEM.unpack_from
_tuple_new = tuple.__new__         # builds a Used without the Python-level __new__ frame


class Used(NamedTuple):
    """A buffer the device gave back: the caller's token, bytes written, descriptor id."""
    token: Any
    length: int
    id: int


def _bit(features: int, bit: int) -> bool:
    return bool(features >> bit & 1)


class Virtqueue(Handle):
    """What split and packed queues share: eventfds, interrupt waits, accounting.

    ``memory`` places the rings (and indirect tables); ``size`` is the number
    of descriptors; ``features`` the negotiated feature bits (the queue
    honours ``VIRTIO_RING_F_EVENT_IDX`` and ``VIRTIO_RING_F_INDIRECT_DESC``);
    ``max_size`` the transport's limit; ``notify`` replaces the default
    notification (a signal on :attr:`kick_event`), e.g. by a doorbell write.
    ``max_indirect`` is the length of each indirect table.
    """

    kind = "virtqueue"
    #: The rings' places in :attr:`memory`: descriptor table, driver and device areas.
    desc_area: Region
    driver_area: Region
    device_area: Region

    def __init__(self, memory: DeviceMemory, size: int, *, index: int = 0, features: int = 0,
                 max_size: int = MAX_QUEUE_SIZE, notify: Optional[Callable[[], None]] = None,
                 max_indirect: int = 32, name: Optional[str] = None) -> None:
        self.name = name or f"{self.kind} {index}"
        # both exist once __init__ returns; _release copes with a failed construction
        self.kick_event: EventFd
        self.call_event: EventFd
        self._closed = False
        self._check_size(size, max_size)
        if sys.byteorder != "little" and _bit(features, lib.VIRTIO_F_VERSION_1):
            raise errors.NotSupportedError(
                "virtio 1.0 rings are little-endian; this queue writes native byte order",
                device=self.name, remedy="use a little-endian host")
        if max_indirect < 2 or max_indirect > 0xFFFF // 16:
            raise errors.InvalidArgumentError(f"max_indirect must be 2..4095, not {max_indirect}",
                                              device=self.name)
        self.memory = memory
        self.size = size
        self.index = index
        self.features = features
        self.event_idx = _bit(features, lib.VIRTIO_RING_F_EVENT_IDX)
        self.indirect = _bit(features, lib.VIRTIO_RING_F_INDIRECT_DESC)
        self.max_indirect = max_indirect
        #: Set by the transport once the device knows the rings and eventfds.
        self.ready = False
        #: Notifications sent, interrupts received (call eventfd signals), buffers completed.
        self.kicks = 0
        self.interrupts = 0
        self.completed = 0
        self._notify = notify
        self._cb_enabled = True
        try:
            self.kick_event = EventFd(f"{self.name} kick")
            self.call_event = EventFd(f"{self.name} call")
            self._layout()
        except BaseException:
            self._release()
            self._closed = True
            raise

    def _check_size(self, size: int, max_size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise errors.InvalidArgumentError(f"queue size must be a positive integer, not {size!r}",
                                              device=self.name)
        if size > max_size:
            raise errors.InvalidArgumentError(
                f"queue size {size} exceeds the maximum {max_size}", device=self.name,
                remedy=f"use a size of at most {max_size}")

    def _layout(self) -> None:
        raise NotImplementedError

    @property
    def avail_idx(self) -> int:
        """The driver's next avail index (what ``VHOST_SET_VRING_BASE`` resumes from)."""
        raise NotImplementedError

    def _release(self) -> None:
        for efd in (getattr(self, "kick_event", None), getattr(self, "call_event", None)):
            if efd is not None:
                efd.close()

    # -- driver API ----------------------------------------------------------------------
    def add(self, readable: Sequence[Region] = (), writable: Sequence[Region] = (),
            token: Any = None) -> int:
        """Offer one buffer: ``readable`` parts first, then ``writable`` parts.

        Returns the descriptor id; ``token`` (default: that id) comes back in
        :class:`Used`.  The device sees the buffer after :meth:`kick` (or
        :meth:`publish`).  Raises :class:`~pyvfio.errors.QueueFullError` when
        there is no room, and a chain longer than the ring is refused.
        """
        raise NotImplementedError

    def publish(self) -> None:
        """Make the buffers added so far visible to the device (no notification)."""

    def kick(self) -> bool:
        """Publish the added buffers and notify the device if it asked to be.

        Returns whether a notification was sent (EVENT_IDX and the device's
        flags can suppress it).  Refused before the transport set the queue up.
        """
        self._check_open()
        if not self.ready:
            raise errors.NotReadyError(
                "kick before setup: the device does not know this queue yet", device=self.name,
                remedy="set the queue up on the device first (e.g. VhostBackend.setup_vring)")
        self.publish()
        _smp_mb()
        if self._needs_notify():
            if self._notify is not None:
                self._notify()
            else:
                self.kick_event.signal(1)
            self.kicks += 1
            return True
        return False

    def _needs_notify(self) -> bool:
        raise NotImplementedError

    def get_used(self) -> Optional[Used]:
        """One used buffer, or None if the device has not returned any."""
        got = self.used(1)
        return got[0] if got else None

    def used(self, limit: int = 1 << 30) -> List[Used]:
        """Every used buffer available now (at most ``limit``), in completion order."""
        raise NotImplementedError

    def enable_cb(self) -> bool:
        """Ask for interrupts again; returns True if used buffers are already waiting."""
        raise NotImplementedError

    def disable_cb(self) -> None:
        """Ask the device not to interrupt (a hint the device may ignore)."""
        raise NotImplementedError

    @property
    def num_free(self) -> int:
        """Free descriptors."""
        raise NotImplementedError

    @property
    def in_flight(self) -> int:
        """Buffers added and not yet returned."""
        raise NotImplementedError

    # -- waiting --------------------------------------------------------------------------
    def wait(self, timeout: Optional[float] = None) -> List[Used]:
        """Block until at least one buffer is used; return every one available.

        Sleeps on the call eventfd (so the device's thread can run, even on
        one CPU); each signal read is added to :attr:`interrupts`.
        """
        self._check_open()
        timeout = check_timeout(timeout, device=self.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            got = self.used()
            if got:
                return got
            if self.enable_cb():
                continue
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                self.interrupts += self.call_event.wait(left)
            except errors.TimedOutError:
                raise errors.TimedOutError(
                    f"no used buffer within {timeout} s ({self.in_flight} in flight)",
                    device=self.name) from None

    def wait_for(self, count: int, timeout: Optional[float] = None) -> List[Used]:
        """Block until ``count`` buffers are used; return them (one batch, one wait each time)."""
        timeout = check_timeout(timeout, device=self.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        out: List[Used] = []
        while len(out) < count:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                out += self.wait(left)
            except errors.TimedOutError:
                raise errors.TimedOutError(
                    f"{len(out)} of {count} buffers used within {timeout} s", device=self.name
                ) from None
        return out

    async def wait_async(self, timeout: Optional[float] = None) -> List[Used]:
        """:meth:`wait` for asyncio: the running loop watches the call eventfd."""
        self._check_open()
        timeout = check_timeout(timeout, device=self.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            got = self.used()
            if got:
                return got
            if self.enable_cb():
                continue
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self.interrupts += await self.call_event.wait_async(left)

    def drain_interrupts(self) -> int:
        """Add the call signals not yet read to :attr:`interrupts`; return the total."""
        self._check_open()
        self.interrupts += self.call_event.pending()
        return self.interrupts

    def stats(self) -> Dict[str, int]:
        return {"kicks": self.kicks, "interrupts": self.interrupts, "completed": self.completed}

    # -- helpers --------------------------------------------------------------------------
    def _parts(self, readable: Sequence[Region], writable: Sequence[Region]) -> List[Any]:
        parts = []
        for seq, flag in ((readable, 0), (writable, _F_WRITE)):
            for r in seq:
                size = r.size
                if size < 0 or size > _U32_MAX:
                    raise errors.InvalidArgumentError(
                        f"a descriptor holds at most 4 GiB - 1, not {size} bytes", device=self.name)
                parts.append((r.addr, size, flag))
        if not parts:
            raise errors.InvalidArgumentError("a buffer needs at least one part", device=self.name)
        return parts

    def _too_long(self, n: int, limit: int, what: str) -> errors.PyvfioError:
        return errors.InvalidArgumentError(
            f"descriptor chain of {n} parts is longer than {what} ({limit})", device=self.name,
            remedy="split the buffer, merge parts, or negotiate VIRTIO_RING_F_INDIRECT_DESC")


class SplitQueue(Virtqueue):
    """The split virtqueue: a descriptor table, the driver's avail ring, the device's used ring."""

    kind = "split virtqueue"

    def _check_size(self, size: int, max_size: int) -> None:
        super()._check_size(size, max_size)
        if size & (size - 1):
            raise errors.InvalidArgumentError(
                f"split queue size {size} is not a power of two", device=self.name,
                remedy="use a power of two such as 256")

    def _layout(self) -> None:
        n = self.size
        m = self.memory
        self.desc_area = m.alloc(ffi.sizeof("struct vring_desc") * n, lib.VRING_DESC_ALIGN_SIZE)
        # avail: flags, idx, ring[n], used_event
        self.driver_area = m.alloc(4 + 2 * n + 2, lib.VRING_AVAIL_ALIGN_SIZE)
        # used: flags, idx, ring[n], avail_event
        self.device_area = m.alloc(4 + ffi.sizeof("struct vring_used_elem") * n + 2,
                                   lib.VRING_USED_ALIGN_SIZE)
        for r in (self.desc_area, self.driver_area, self.device_area):
            r.write(bytes(r.size))
        # The rings are reached through memoryviews of the shared mapping: whole
        # descriptors and used elements are packed/unpacked with the binding-checked
        # structs above, 16-bit ring fields are items of a native 'H' view (the ring
        # is little-endian on every host this runs on: see the constructor).
        self._views: List[memoryview] = []
        self._dv = self._view(self.desc_area)
        self._ah = self._view(self.driver_area, "H")     # flags, idx, ring[n], used_event
        self._ub = self._view(self.device_area)          # used elements
        self._uh = self._view(self.device_area, "H")     # flags, idx, ..., avail_event
        self._used_event_i = 2 + n
        self._avail_event_i = 2 + 4 * n
        self._mask = n - 1
        self._free: List[int] = list(range(n - 1, -1, -1))
        # Per head descriptor: the caller's token while in flight, else None (a token is
        # never None: it defaults to the head), and the other descriptors of a direct
        # chain of more than one (a single descriptor, or an indirect table, has None).
        self._tokens: List[Any] = [None] * n
        self._chain_ids: List[Optional[Tuple[int, ...]]] = [None] * n
        self._avail_idx = 0          # shadow of avail->idx
        self._kicked_idx = 0         # avail->idx at the last kick (EVENT_IDX "old")
        self._last_used = 0
        self._in_flight = 0
        self._avail_flags = 0
        self._itable: Optional[Region] = None
        if self.indirect:
            self._itable = m.alloc(n * self.max_indirect * 16, 16)
            self._iv = self._view(self._itable)

    def _view(self, region: Region, fmt: Literal["", "H"] = "") -> memoryview:
        base = region.buffer.view
        sub = base[region.offset:region.offset + region.size]
        self._views += [base, sub]
        if fmt:
            sub = sub.cast(fmt)
            self._views.append(sub)
        return sub

    def _release(self) -> None:
        for v in reversed(getattr(self, "_views", [])):
            v.release()
        self._views = []
        super()._release()

    def add(self, readable: Sequence[Region] = (), writable: Sequence[Region] = (),
            token: Any = None) -> int:
        if self._closed:
            self._check_open()
        # The common case, one part and no lists: every check of the general path
        # (closed, size 0..4 GiB - 1, a free descriptor) before anything changes.
        if writable:
            r = writable[0] if not readable and len(writable) == 1 else None
            flag = _F_WRITE
        else:
            r = readable[0] if len(readable) == 1 else None
            flag = 0
        if r is not None:
            size = r.size
            if not 0 <= size <= _U32_MAX:
                raise errors.InvalidArgumentError(
                    f"a descriptor holds at most 4 GiB - 1, not {size} bytes", device=self.name)
            free = self._free
            if not free:
                raise errors.QueueFullError(f"no free descriptor ({self.size} in flight)",
                                            device=self.name)
            head = free.pop()
            _pack_desc(self._dv, head << 4, r.addr, size, flag, 0)
            self._tokens[head] = head if token is None else token
            idx = self._avail_idx
            self._ah[2 + (idx & self._mask)] = head
            self._avail_idx = (idx + 1) & 0xFFFF
            self._in_flight += 1
            return head
        pack = _pack_desc
        parts = self._parts(readable, writable)
        n = len(parts)
        if self.indirect and n > 1:
            if n > self.max_indirect:
                raise self._too_long(n, self.max_indirect, "an indirect table")
            if not self._free:
                raise errors.QueueFullError(f"no free descriptor ({self.size} in flight)",
                                            device=self.name)
            head = self._free.pop()
            base = head * self.max_indirect
            for i, (addr, size, flag) in enumerate(parts):
                if i < n - 1:
                    pack(self._iv, (base + i) * 16, addr, size, flag | _F_NEXT, i + 1)
                else:
                    pack(self._iv, (base + i) * 16, addr, size, flag, 0)
            assert self._itable is not None      # allocated when INDIRECT_DESC is negotiated
            pack(self._dv, head * 16, self._itable.addr + base * 16, n * 16, _F_INDIRECT, 0)
        else:
            if n > self.size:
                raise self._too_long(n, self.size, "the ring")
            free = self._free
            if n > len(free):
                raise errors.QueueFullError(
                    f"{n} descriptors needed, {len(free)} free", device=self.name)
            ids = tuple(free.pop() for _ in range(n))
            for i, (addr, size, flag) in enumerate(parts):
                if i < n - 1:
                    pack(self._dv, ids[i] * 16, addr, size, flag | _F_NEXT, ids[i + 1])
                else:
                    pack(self._dv, ids[i] * 16, addr, size, flag, 0)
            head = ids[0]
            if n > 1:
                self._chain_ids[head] = ids
        self._tokens[head] = head if token is None else token
        self._ah[2 + (self._avail_idx & self._mask)] = head
        self._avail_idx = (self._avail_idx + 1) & 0xFFFF
        self._in_flight += 1
        return head

    def publish(self) -> None:
        if self._closed:
            self._check_open()
        _smp_wmb()                       # descriptors and ring entries before the index
        self._ah[1] = self._avail_idx

    def _needs_notify(self) -> bool:
        new = self._avail_idx
        old = self._kicked_idx
        self._kicked_idx = new
        if new == old:
            return False
        if self.event_idx:
            event = self._uh[self._avail_event_i]
            return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not (self._uh[0] & lib.VRING_USED_F_NO_NOTIFY)

    def used(self, limit: int = 1 << 30) -> List[Used]:
        if self._closed:
            self._check_open()
        last = self._last_used
        idx = self._uh[1]
        if idx == last:
            return []
        _smp_rmb()                       # the index before the entries it covers
        count = min((idx - last) & 0xFFFF, limit)
        if count > self._in_flight:
            raise errors.PyvfioError(
                f"device returned {count} buffers with {self._in_flight} in flight",
                device=self.name, remedy="the device broke the ring protocol; reset it")
        out: List[Used] = []
        append = out.append
        unpack = _unpack_used
        ub = self._ub
        tokens = self._tokens
        chain_ids = self._chain_ids
        free = self._free
        mask = self._mask
        size = self.size
        for _ in range(count):
            head, length = unpack(ub, 4 + 8 * (last & mask))
            token = tokens[head] if head < size else None
            if token is None:
                raise errors.PyvfioError(f"device returned descriptor {head}, which is not in flight",
                                         device=self.name, remedy="reset the device")
            tokens[head] = None
            ids = chain_ids[head]
            if ids is None:
                free.append(head)
            else:
                chain_ids[head] = None
                free.extend(ids)
            append(_tuple_new(Used, (token, length, head)))
            last = (last + 1) & 0xFFFF
        self._last_used = last
        self._in_flight -= count
        self.completed += count
        if self.event_idx and self._cb_enabled:
            self._ah[self._used_event_i] = last
            _smp_mb()
        return out

    def enable_cb(self) -> bool:
        self._check_open()
        self._cb_enabled = True
        if self.event_idx:
            self._ah[self._used_event_i] = self._last_used
        elif self._avail_flags & lib.VRING_AVAIL_F_NO_INTERRUPT:
            self._avail_flags &= ~lib.VRING_AVAIL_F_NO_INTERRUPT
            self._ah[0] = self._avail_flags
        _smp_mb()                        # the store above before the look at used->idx
        return self._uh[1] != self._last_used

    def disable_cb(self) -> None:
        self._check_open()
        self._cb_enabled = False
        if not self.event_idx:
            self._avail_flags |= lib.VRING_AVAIL_F_NO_INTERRUPT
            self._ah[0] = self._avail_flags

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def pending_used(self) -> int:
        """How many used buffers wait to be collected (a look at ``used->idx``, no interrupt)."""
        self._check_open()
        return (self._uh[1] - self._last_used) & 0xFFFF

    @property
    def avail_idx(self) -> int:
        """The driver's next avail index (what ``VHOST_SET_VRING_BASE`` resumes from)."""
        return self._avail_idx

    @property
    def last_used_idx(self) -> int:
        return self._last_used


class PackedQueue(Virtqueue):
    """The packed virtqueue: one descriptor ring with wrap counters, two event areas."""

    kind = "packed virtqueue"

    def _layout(self) -> None:
        n = self.size
        m = self.memory
        self.desc_area = m.alloc(ffi.sizeof("struct vring_packed_desc") * n, 16)
        self.driver_area = m.alloc(ffi.sizeof("struct vring_packed_desc_event"), 4)
        self.device_area = m.alloc(ffi.sizeof("struct vring_packed_desc_event"), 4)
        for r in (self.desc_area, self.driver_area, self.device_area):
            r.write(bytes(r.size))
        self._ring = ffi.cast("struct vring_packed_desc *", self.desc_area.vaddr)
        self._drv = ffi.cast("struct vring_packed_desc_event *", self.driver_area.vaddr)
        self._dev = ffi.cast("struct vring_packed_desc_event *", self.device_area.vaddr)
        self._next_avail = 0
        self._avail_wrap = 1
        self._last_used = 0
        self._used_wrap = 1
        self._added = 0              # descriptors made available since the last kick
        self._free_desc = n
        self._free_ids: List[int] = list(range(n - 1, -1, -1))
        self._chains: List[Any] = [None] * n
        self._in_flight = 0
        self._itable: Optional[Region] = None
        if self.indirect:
            self._itable = m.alloc(n * self.max_indirect * 16, 16)
            self._ind = ffi.cast("struct vring_packed_desc *", self._itable.vaddr)
        if self.event_idx:              # interrupts enabled from the start, at the first used buffer
            self._drv.off_wrap = 1 << lib.VRING_PACKED_EVENT_F_WRAP_CTR
            self._drv.flags = lib.VRING_PACKED_EVENT_FLAG_DESC

    def _flags(self, wrap: int) -> int:
        return int((wrap << lib.VRING_PACKED_DESC_F_AVAIL) | ((wrap ^ 1) << lib.VRING_PACKED_DESC_F_USED))

    def add(self, readable: Sequence[Region] = (), writable: Sequence[Region] = (),
            token: Any = None) -> int:
        self._check_open()
        parts = self._parts(readable, writable)
        n = len(parts)
        if self.indirect and n > 1:
            if n > self.max_indirect:
                raise self._too_long(n, self.max_indirect, "an indirect table")
            ndesc = 1
        else:
            if n > self.size:
                raise self._too_long(n, self.size, "the ring")
            ndesc = n
        if ndesc > self._free_desc or not self._free_ids:
            raise errors.QueueFullError(f"{ndesc} descriptors needed, {self._free_desc} free",
                                        device=self.name)
        bid = self._free_ids.pop()
        ring = self._ring
        head = self._next_avail
        head_wrap = self._avail_wrap
        if ndesc == 1 and n > 1:
            base = bid * self.max_indirect
            for i, (addr, size, flag) in enumerate(parts):
                d = self._ind[base + i]
                d.addr = addr
                d.len = size
                d.id = 0
                d.flags = flag
            assert self._itable is not None      # allocated when INDIRECT_DESC is negotiated
            entries = [(self._itable.addr + base * 16, n * 16, _F_INDIRECT)]
        else:
            entries = [(a, s, f | (_F_NEXT if i < n - 1 else 0)) for i, (a, s, f) in enumerate(parts)]
        pos, wrap = head, head_wrap
        head_flags = 0
        for i, (addr, size, flag) in enumerate(entries):
            d = ring[pos]
            d.addr = addr
            d.len = size
            d.id = bid
            flags = flag | self._flags(wrap)
            if i == 0:
                head_flags = flags
            else:
                d.flags = flags
            pos += 1
            if pos == self.size:
                pos, wrap = 0, wrap ^ 1
        _smp_wmb()                       # the chain before the head's flags make it available
        ring[head].flags = head_flags
        self._next_avail, self._avail_wrap = pos, wrap
        self._free_desc -= ndesc
        self._added += ndesc
        self._chains[bid] = (bid if token is None else token, ndesc)
        self._in_flight += 1
        return bid

    def publish(self) -> None:
        self._check_open()              # every add already published its head

    def _needs_notify(self) -> bool:
        added, self._added = self._added, 0
        if not added:
            return False
        flags = self._dev.flags
        if flags == lib.VRING_PACKED_EVENT_FLAG_DISABLE:
            return False
        if flags != lib.VRING_PACKED_EVENT_FLAG_DESC:
            return True
        off_wrap = self._dev.off_wrap
        event = off_wrap & 0x7FFF
        if (off_wrap >> lib.VRING_PACKED_EVENT_F_WRAP_CTR) != self._avail_wrap:
            event -= self.size
        new = self._next_avail
        old = new - added
        return bool(((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF))

    def used(self, limit: int = 1 << 30) -> List[Used]:
        self._check_open()
        out: List[Used] = []
        ring = self._ring
        avail_bit = 1 << lib.VRING_PACKED_DESC_F_AVAIL
        used_bit = 1 << lib.VRING_PACKED_DESC_F_USED
        while len(out) < limit:
            d = ring[self._last_used]
            flags = d.flags
            a = 1 if flags & avail_bit else 0
            u = 1 if flags & used_bit else 0
            if a != u or u != self._used_wrap:
                break
            _smp_rmb()                   # the used flag before the id and length
            bid = d.id
            chain = self._chains[bid] if bid < self.size else None
            if chain is None:
                raise errors.PyvfioError(f"device returned buffer id {bid}, which is not in flight",
                                         device=self.name, remedy="reset the device")
            self._chains[bid] = None
            token, ndesc = chain
            out.append(Used(token, d.len, bid))
            self._last_used += ndesc
            if self._last_used >= self.size:
                self._last_used -= self.size
                self._used_wrap ^= 1
            self._free_desc += ndesc
            self._free_ids.append(bid)
            self._in_flight -= 1
        self.completed += len(out)
        if out and self.event_idx and self._cb_enabled:
            self._drv.off_wrap = self._last_used | (self._used_wrap << lib.VRING_PACKED_EVENT_F_WRAP_CTR)
            _smp_mb()
        return out

    def _pending(self) -> bool:
        flags = self._ring[self._last_used].flags
        a = 1 if flags & (1 << lib.VRING_PACKED_DESC_F_AVAIL) else 0
        u = 1 if flags & (1 << lib.VRING_PACKED_DESC_F_USED) else 0
        return a == u == self._used_wrap

    def enable_cb(self) -> bool:
        self._check_open()
        self._cb_enabled = True
        if self.event_idx:
            self._drv.off_wrap = self._last_used | (self._used_wrap << lib.VRING_PACKED_EVENT_F_WRAP_CTR)
            _smp_wmb()
            self._drv.flags = lib.VRING_PACKED_EVENT_FLAG_DESC
        else:
            self._drv.flags = lib.VRING_PACKED_EVENT_FLAG_ENABLE
        _smp_mb()
        return self._pending()

    def disable_cb(self) -> None:
        self._check_open()
        self._cb_enabled = False
        self._drv.flags = lib.VRING_PACKED_EVENT_FLAG_DISABLE

    @property
    def num_free(self) -> int:
        return self._free_desc

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def avail_idx(self) -> int:
        """Next avail position with its wrap counter in bit 15 (``VHOST_SET_VRING_BASE``)."""
        return self._next_avail | (self._avail_wrap << 15)

    @property
    def last_used_idx(self) -> int:
        return self._last_used | (self._used_wrap << 15)


def create_queue(memory: DeviceMemory, size: int, *, features: int = 0, **kw: Any) -> Virtqueue:
    """A packed queue if ``VIRTIO_F_RING_PACKED`` was negotiated, else a split queue."""
    if _bit(features, lib.VIRTIO_F_RING_PACKED):
        return PackedQueue(memory, size, features=features, **kw)
    return SplitQueue(memory, size, features=features, **kw)


