"""The device side of a virtqueue: take available chains, return used buffers.

What vhost's worker, a vDPA device or a VDUSE daemon does with a ring the
driver set up.  The rings are reached through process addresses (``desc``,
``driver``, ``device``); descriptor addresses go through ``translate(addr,
size, write)``, which returns the process address of that device range (the
vhost memory table, an IOTLB, a VDUSE bounce map) or raises.  The same
barriers as the driver side apply, mirrored: ``rmb`` after reading the avail
index, ``wmb`` before publishing the used index, ``mb`` before reading the
driver's interrupt suppression.
"""
from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Optional, Tuple

from pyvfio import errors
from pyvfio.core import mmio
from pyvfio.core.uapi import ffi, lib

__all__ = ["DescChain", "DeviceSplitQueue", "DevicePackedQueue"]

# The barriers of pyvfio.core.mmio (C functions of the binding, one fence instruction each):
# DMA-memory ordering for the ring stores and loads, the full barrier for store-then-load.
_smp_mb = mmio.mb
_smp_rmb = mmio.dma_rmb
_smp_wmb = mmio.dma_wmb

Translate = Callable[[int, int, bool], int]


class DescChain(NamedTuple):
    """An available buffer: its id and its (process address, length) parts.

    ``written_at`` holds the writable parts' (device address, length), for
    dirty logging.
    """
    id: int
    readable: List[Tuple[int, int]]
    writable: List[Tuple[int, int]]
    ndesc: int = 1
    written_at: Tuple[Tuple[int, int], ...] = ()

    def read_all(self) -> bytes:
        return b"".join(bytes(ffi.buffer(ffi.cast("char *", a), n)) for a, n in self.readable)

    def write_all(self, data: bytes) -> int:
        """Scatter ``data`` over the writable parts; returns the bytes written."""
        off = 0
        for a, n in self.writable:
            if off >= len(data):
                break
            k = min(n, len(data) - off)
            ffi.memmove(ffi.cast("char *", a), data[off:off + k], k)
            off += k
        return off

    @property
    def writable_len(self) -> int:
        return sum(n for _, n in self.writable)


class _DeviceQueue:
    def __init__(self, size: int, translate: Translate, event_idx: bool, name: str) -> None:
        self.size = size
        self.translate = translate
        self.event_idx = event_idx
        self.name = name

    def _parts(self, entries: Any, head_id: int, ndesc: int) -> DescChain:
        readable: List[Tuple[int, int]] = []
        writable: List[Tuple[int, int]] = []
        at = []
        for addr, length, flags in entries:
            write = bool(flags & lib.VRING_DESC_F_WRITE)
            if not write and writable:
                raise errors.InvalidArgumentError("readable descriptor after a writable one",
                                                  device=self.name)
            va = self.translate(addr, length, write)
            (writable if write else readable).append((va, length))
            if write:
                at.append((addr, length))
        return DescChain(head_id, readable, writable, ndesc, tuple(at))


class DeviceSplitQueue(_DeviceQueue):
    """Device side of a split ring at process addresses ``desc``, ``avail``, ``used``."""

    def __init__(self, size: int, desc: int, avail: int, used: int, translate: Translate, *,
                 event_idx: bool = False, last_avail: int = 0, name: str = "vring") -> None:
        super().__init__(size, translate, event_idx, name)
        self.desc = ffi.cast("struct vring_desc *", desc)
        self.avail = ffi.cast("struct vring_avail *", avail)
        self.used = ffi.cast("struct vring_used *", used)
        self.used_event = ffi.cast("uint16_t *", avail + 4 + 2 * size)
        self.avail_event = ffi.cast("uint16_t *", used + 4 + 8 * size)
        self.last_avail = last_avail
        self.used_idx = self.used.idx
        self._signalled_used = self.used_idx

    def pop(self) -> Optional[DescChain]:
        """The next available chain, or None."""
        if self.avail.idx == self.last_avail:
            return None
        _smp_rmb()
        head = self.avail.ring[self.last_avail % self.size]
        if head >= self.size:
            raise errors.InvalidArgumentError(f"avail head {head} out of range", device=self.name)
        chain = self._chain(head)      # a translation fault leaves the chain available
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if self.event_idx:
            self.avail_event[0] = self.last_avail
        return chain

    def _chain(self, head: int) -> DescChain:
        entries = []
        d = self.desc[head]
        if d.flags & lib.VRING_DESC_F_INDIRECT:
            count = d.len // 16
            table = ffi.cast("struct vring_desc *", self.translate(d.addr, d.len, False))
            i = 0
            for _ in range(count):
                t = table[i]
                entries.append((t.addr, t.len, t.flags))
                if not t.flags & lib.VRING_DESC_F_NEXT:
                    break
                i = t.next
            return self._parts(entries, head, 1)
        i = head
        for _ in range(self.size):
            d = self.desc[i]
            entries.append((d.addr, d.len, d.flags))
            if not d.flags & lib.VRING_DESC_F_NEXT:
                break
            i = d.next
        else:
            raise errors.InvalidArgumentError("descriptor loop", device=self.name)
        return self._parts(entries, head, len(entries))

    def push(self, chain_id: int, written: int) -> None:
        """Return a chain as used with ``written`` bytes (visible after :meth:`flush`)."""
        e = self.used.ring[self.used_idx % self.size]
        e.id = chain_id
        e.len = written
        self.used_idx = (self.used_idx + 1) & 0xFFFF

    def flush(self) -> bool:
        """Publish the used entries; return whether the driver wants an interrupt."""
        _smp_wmb()
        new = self.used_idx
        old = self._signalled_used
        self.used.idx = new
        _smp_mb()
        if new == old:
            return False
        self._signalled_used = new
        if self.event_idx:
            event = self.used_event[0]
            return bool(((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF))
        return not (self.avail.flags & lib.VRING_AVAIL_F_NO_INTERRUPT)

    def set_no_notify(self, on: bool) -> None:
        """VRING_USED_F_NO_NOTIFY: ask the driver not to kick (non-EVENT_IDX)."""
        self.used.flags = lib.VRING_USED_F_NO_NOTIFY if on else 0


class DevicePackedQueue(_DeviceQueue):
    """Device side of a packed ring at ``desc``, with the driver and device event areas."""

    def __init__(self, size: int, desc: int, driver: int, device: int, translate: Translate, *,
                 event_idx: bool = False, name: str = "vring") -> None:
        super().__init__(size, translate, event_idx, name)
        self.ring = ffi.cast("struct vring_packed_desc *", desc)
        self.drv = ffi.cast("struct vring_packed_desc_event *", driver)
        self.dev = ffi.cast("struct vring_packed_desc_event *", device)
        self.next_avail = 0
        self.avail_wrap = 1
        self.next_used = 0
        self.used_wrap = 1
        self._pending: List[Tuple[int, int, int]] = []
        self._signal_from = (0, 1)

    def _is_avail(self, flags: int) -> bool:
        a = 1 if flags & (1 << lib.VRING_PACKED_DESC_F_AVAIL) else 0
        u = 1 if flags & (1 << lib.VRING_PACKED_DESC_F_USED) else 0
        return a != u and a == self.avail_wrap

    def pop(self) -> Optional[DescChain]:
        d = self.ring[self.next_avail]
        if not self._is_avail(d.flags):
            return None
        _smp_rmb()
        entries = []
        ndesc = 0
        bid = 0
        while True:
            d = self.ring[self.next_avail]
            flags = d.flags
            bid = d.id
            if flags & lib.VRING_DESC_F_INDIRECT:
                table = ffi.cast("struct vring_packed_desc *", self.translate(d.addr, d.len, False))
                for i in range(d.len // 16):
                    entries.append((table[i].addr, table[i].len, table[i].flags))
            else:
                entries.append((d.addr, d.len, flags))
            ndesc += 1
            self.next_avail += 1
            if self.next_avail == self.size:
                self.next_avail = 0
                self.avail_wrap ^= 1
            if not flags & lib.VRING_DESC_F_NEXT or ndesc >= self.size:
                break
        return self._parts(entries, bid, ndesc)

    def push(self, chain_id: int, written: int, ndesc: int = 1) -> None:
        self._pending.append((chain_id, written, ndesc))

    def flush(self) -> bool:
        if not self._pending:
            return False
        start = (self.next_used, self.used_wrap)
        for bid, written, ndesc in self._pending:
            d = self.ring[self.next_used]
            d.id = bid
            d.len = written
            w = self.used_wrap
            _smp_wmb()
            d.flags = (w << lib.VRING_PACKED_DESC_F_AVAIL) | (w << lib.VRING_PACKED_DESC_F_USED)
            self.next_used += ndesc
            if self.next_used >= self.size:
                self.next_used -= self.size
                self.used_wrap ^= 1
        self._pending = []
        _smp_mb()
        flags = self.drv.flags
        if flags == lib.VRING_PACKED_EVENT_FLAG_DISABLE:
            return False
        if flags != lib.VRING_PACKED_EVENT_FLAG_DESC:
            return True
        off_wrap = self.drv.off_wrap
        event = off_wrap & 0x7FFF
        if (off_wrap >> 15) != self.used_wrap:
            event -= self.size
        new = self.next_used
        old_pos, old_wrap = start
        old = old_pos if old_wrap == self.used_wrap else old_pos - self.size
        return bool(((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF))
