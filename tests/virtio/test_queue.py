"""Driver-side split and packed queues against the device side of a ring, in one process.

No kernel here offers a packed ring to a vhost or vdpa driver (6.12's vhost
and vdpa_sim are split-only), so the packed queue is proven against
:mod:`pyvfio.virtio.device` on the host; the split queue also runs against
the real vhost-net (tests/vhost).
"""
from __future__ import annotations

import asyncio
import random

import pytest

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.uapi import lib
from pyvfio.virtio import DeviceMemory, PackedQueue, SplitQueue, create_queue
from pyvfio.virtio.device import DevicePackedQueue, DeviceSplitQueue

V1 = 1 << lib.VIRTIO_F_VERSION_1
EVENT_IDX = 1 << lib.VIRTIO_RING_F_EVENT_IDX
INDIRECT = 1 << lib.VIRTIO_RING_F_INDIRECT_DESC
PACKED = 1 << lib.VIRTIO_F_RING_PACKED


@pytest.fixture(autouse=True)
def no_leaks():
    fds = set(syscalls.open_fds())
    maps = len(syscalls.live_mappings())
    yield
    assert set(syscalls.open_fds()) == fds
    assert len(syscalls.live_mappings()) == maps


class Device:
    """The device side, translating device addresses through the DeviceMemory."""

    def __init__(self, mem: DeviceMemory, q) -> None:
        def translate(addr: int, size: int, write: bool) -> int:
            buf, off = mem.translate(addr, size)
            return buf.vaddr + off
        ei = q.event_idx
        if isinstance(q, PackedQueue):
            self.dq = DevicePackedQueue(q.size, q.desc_area.vaddr, q.driver_area.vaddr,
                                        q.device_area.vaddr, translate, event_idx=ei)
        else:
            self.dq = DeviceSplitQueue(q.size, q.desc_area.vaddr, q.driver_area.vaddr,
                                       q.device_area.vaddr, translate, event_idx=ei)
        self.q = q
        self.signals = 0

    def run(self, transform=lambda b: b[::-1]) -> int:
        """Consume every available chain: write transform(readable) into the writable parts."""
        n = 0
        while True:
            chain = self.dq.pop()
            if chain is None:
                break
            written = chain.write_all(transform(chain.read_all()))
            if isinstance(self.dq, DevicePackedQueue):
                self.dq.push(chain.id, written, chain.ndesc)
            else:
                self.dq.push(chain.id, written)
            n += 1
        if self.dq.flush():
            self.q.call_event.signal(1)
            self.signals += 1
        return n


CASES = [
    pytest.param(V1, id="split"), pytest.param(V1 | EVENT_IDX, id="split-event_idx"),
    pytest.param(V1 | INDIRECT, id="split-indirect"),
    pytest.param(V1 | EVENT_IDX | INDIRECT, id="split-event_idx-indirect"),
    pytest.param(V1 | PACKED, id="packed"), pytest.param(V1 | PACKED | EVENT_IDX, id="packed-event_idx"),
    pytest.param(V1 | PACKED | INDIRECT | EVENT_IDX, id="packed-event_idx-indirect"),
]


@pytest.mark.parametrize("features", CASES)
def test_scatter_lists_round_trip(features):
    """2,000 requests of 1-3 readable and 1-2 writable parts, batches of 1 to 64 per kick;
    every reply byte-compared, every used length exact, kicks and interrupts counted."""
    rng = random.Random(features)
    with DeviceMemory() as mem:
        q = create_queue(mem, 512, features=features, name="q0")
        with q:
            assert isinstance(q, PackedQueue) == bool(features & PACKED)
            q.ready = True
            dev = Device(mem, q)
            pool = mem.alloc(64 * 4096, 4096)
            done = 0
            batches = 0
            while done < 2000:
                batch = min(rng.choice([1, 7, 64]), 2000 - done)
                expect = {}
                for i in range(batch):
                    slot = pool.sub(i * 4096, 4096)
                    nread = rng.randint(1, 3)
                    parts = [rng.randint(1, 500) for _ in range(nread)]
                    data = rng.randbytes(sum(parts))
                    slot.write(data)
                    readable, off = [], 0
                    for p in parts:
                        readable.append(slot.sub(off, p))
                        off += p
                    wlen = len(data)
                    nwrite = rng.randint(1, 2)
                    cut = wlen // 2 if nwrite == 2 else wlen
                    writable = [slot.sub(2048, cut)] + ([slot.sub(2048 + cut, wlen - cut)]
                                                        if nwrite == 2 else [])
                    q.add(readable, writable, token=(i, data))
                    expect[i] = data
                q.kick()
                dev.run()
                got = q.wait_for(batch, timeout=1)
                assert len(got) == batch
                for u in got:
                    i, data = u.token
                    assert u.length == len(data)
                    assert pool.read(i * 4096 + 2048, len(data)) == data[::-1]
                done += batch
                batches += 1
            assert q.kicks == batches
            assert q.drain_interrupts() == dev.signals
            assert q.num_free == 512 and q.in_flight == 0
            # one interrupt per batch: the device flushes once per batch
            assert dev.signals == batches


@pytest.mark.parametrize("features", [V1 | EVENT_IDX, V1 | PACKED | EVENT_IDX],
                         ids=["split", "packed"])
def test_event_idx_suppresses_interrupts_until_collected(features):
    """With EVENT_IDX the device interrupts once, then not again until the driver
    collects and moves the used event forward."""
    with DeviceMemory() as mem, create_queue(mem, 16, features=features) as q:
        q.ready = True
        dev = Device(mem, q)
        r = mem.alloc(16 * 64)
        for round_ in range(3):
            for i in range(4):
                q.add(writable=[r.sub(i * 64, 64)])
                q.kick()
                dev.run(lambda b: b"x")
            # four completions, one interrupt (the first crossed the used event)
            assert dev.signals == round_ + 1
            assert len(q.used()) == 4


def test_interrupt_disable_without_event_idx():
    with DeviceMemory() as mem, SplitQueue(mem, 8, features=V1) as q:
        q.ready = True
        dev = Device(mem, q)
        r = mem.alloc(64)
        q.disable_cb()
        q.add(writable=[r])
        q.kick()
        dev.run(lambda b: b"y")
        assert dev.signals == 0
        assert q.enable_cb() is True         # already used: the driver must look again
        assert q.get_used().length == 1


def test_kick_suppressed_by_device():
    """A device that set VRING_USED_F_NO_NOTIFY is not notified; EVENT_IDX avail_event likewise."""
    with DeviceMemory() as mem, SplitQueue(mem, 8, features=V1) as q:
        q.ready = True
        dev = Device(mem, q)
        dev.dq.set_no_notify(True)
        r = mem.alloc(64)
        q.add(writable=[r])
        assert q.kick() is False
        assert q.kick_event.pending() == 0
        dev.dq.set_no_notify(False)
        q.add(writable=[r])
        assert q.kick() is True
        assert q.kick_event.pending() == 1


def test_async_wait():
    with DeviceMemory() as mem, SplitQueue(mem, 8, features=V1 | EVENT_IDX) as q:
        q.ready = True
        dev = Device(mem, q)
        r = mem.alloc(64)

        async def main():
            q.add(writable=[r], token="t")
            q.kick()
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, dev.run, lambda b: b"z" * 5)
            return await q.wait_async(timeout=2)

        got = asyncio.run(main())
        assert [(u.token, u.length) for u in got] == [("t", 5)]
        assert q.interrupts == 1


def test_queue_full_and_long_chains():
    with DeviceMemory() as mem:
        q = SplitQueue(mem, 4, features=V1)
        r = mem.alloc(64)
        with q:
            q.add([r] * 3)
            with pytest.raises(errors.QueueFullError) as ei:
                q.add([r] * 2)
            assert ei.value.errno == 28 and q.num_free == 1
            with pytest.raises(errors.InvalidArgumentError):
                q.add()
        qi = SplitQueue(mem, 4, features=V1 | INDIRECT, max_indirect=8)
        with qi:
            qi.add([r] * 8)                 # one ring slot, eight indirect descriptors
            assert qi.num_free == 3
            with pytest.raises(errors.InvalidArgumentError) as ei:
                qi.add([r] * 9)
            assert "indirect table (8)" in str(ei.value)
        with pytest.raises(errors.InvalidArgumentError):
            PackedQueue(mem, 0, features=V1 | PACKED)
        with pytest.raises(errors.InvalidArgumentError) as ei:
            PackedQueue(mem, 40000, features=V1 | PACKED)
        assert "maximum 32768" in str(ei.value)
        p = PackedQueue(mem, 6, features=V1 | PACKED)     # packed sizes need not be powers of two
        p.close()


def test_wait_timeout_names_the_queue():
    with DeviceMemory() as mem, SplitQueue(mem, 8, features=V1, name="slowq") as q:
        q.ready = True
        q.add(writable=[mem.alloc(8)])
        q.kick()
        with pytest.raises(errors.TimedOutError) as ei:
            q.wait(timeout=0.05)
        assert "slowq" in str(ei.value) and "1 in flight" in str(ei.value)
