"""vhost-net: ioctl state rules, and 1,000 frames each way through the library's split ring.

On the real kernel TX frames are read from an AF_PACKET socket bound to the
TAP (what vhost transmits, the stack receives) and RX frames are sent
through one (what the stack transmits through the TAP, vhost receives).  On
the mock, vhost-net loops TX back into RX.
"""
from __future__ import annotations

import errno
import random
import socket
import struct

import pytest

from pyvfio import errors
from pyvfio.core.uapi import ffi, lib
from pyvfio.mock.vhost import BACKEND_FEATURES, NET_FEATURES
from pyvfio.vhost import RX, TX, Tap, VhostNet, VirtioNet
from pyvfio.virtio import DeviceMemory, SplitQueue

pytestmark = pytest.mark.device

ETH_P_TEST = 0x88B5                   # IEEE local experimental ethertype
GUEST_MAC = bytes.fromhex("525400123456")
FRAMES = 1000
BATCH = 64


def _tap(env, name="pyvfio-t0", **kw):
    return Tap(name, create=env.real, **kw)


def _frame(rng: random.Random, size: int, dst: bytes = b"\xff" * 6) -> bytes:
    return dst + GUEST_MAC + struct.pack("!H", ETH_P_TEST) + rng.randbytes(size - 14)


class PacketPort:
    """AF_PACKET socket on the TAP: frames the stack received, and frames to transmit."""

    def __init__(self, ifname: str) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_TEST))
        self.sock.bind((ifname, ETH_P_TEST))
        self.sock.settimeout(10)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def recv(self) -> bytes:
        return self.sock.recv(4096)

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def close(self) -> None:
        self.sock.close()


def test_vhost_net_offers_what_the_mock_says(vhost_env):
    """GET_FEATURES and GET_BACKEND_FEATURES: exact values, the same on the mock and real 6.12."""
    with VhostNet(owner=False) as v:
        assert v.get_features() == NET_FEATURES, hex(v.get_features())
        assert v.get_backend_features() == BACKEND_FEATURES
        print(f"vhost-net features {v.get_features():#x} backend {v.get_backend_features():#x}")


def test_vhost_state_rules(vhost_env):
    """The ioctl state rules, each answered with the kernel's errno and a library error."""
    with VhostNet(owner=False) as v:
        # vring ioctls need the owner
        with pytest.raises(errors.PermissionDeniedError) as ei:
            v.set_vring_num(0, 256)
        assert ei.value.errno == errno.EPERM
        v.set_owner()
        with pytest.raises(errors.BusyError) as ei:
            v.set_owner()
        assert ei.value.errno == errno.EBUSY and "owner" in ei.value.remedy
        # index past the queues: refused here, and by the kernel with ENOBUFS
        with pytest.raises(errors.InvalidArgumentError) as ei:
            v.set_vring_num(2, 256)
        assert ei.value.errno == errno.ENOBUFS and "vhost-net" in str(ei.value)
        s = ffi.new("struct vhost_vring_state *", {"index": 2, "num": 256})
        with pytest.raises(errors.InvalidArgumentError) as ei:
            v._ioctl(lib.VHOST_SET_VRING_NUM, s)
        assert ei.value.errno == errno.ENOBUFS
        # ring sizes: not a power of two, zero, too big
        for bad in (3, 0, 0x10000):
            with pytest.raises(errors.InvalidArgumentError) as ei:
                v.set_vring_num(0, bad)
            assert ei.value.errno == errno.EINVAL
        # features not offered: refused before the kernel, and by the kernel
        with pytest.raises(errors.InvalidArgumentError) as ei:
            v.set_features(1 << lib.VIRTIO_F_RING_PACKED)
        assert "VIRTIO_F_RING_PACKED" in str(ei.value)
        with pytest.raises(errors.NotSupportedError) as ei:
            v._set_u64(lib.VHOST_SET_FEATURES, 1 << lib.VIRTIO_F_RING_PACKED)
        assert ei.value.errno == errno.EOPNOTSUPP
        # a kick that is not an eventfd
        with pytest.raises(errors.InvalidArgumentError) as ei:
            v.set_vring_kick(0, v.fd)
        assert ei.value.errno == errno.EINVAL
        # misaligned used ring
        with pytest.raises(errors.InvalidArgumentError):
            v.set_vring_addr(0, 0x1000, 0x2000, 0x3002)
        # vhost-net has one worker: the worker ioctls are vhost-scsi's (tests/vhost/test_scsi.py)
        with pytest.raises(errors.NotSupportedError) as ei:
            v.new_worker()
        assert ei.value.errno == errno.ENOTTY and "vhost-scsi" in ei.value.remedy
        # busyloop timeout round trip
        v.set_vring_busyloop_timeout(1, 50)
        assert v.get_vring_busyloop_timeout(1) == 50


def test_set_backend_before_rings_is_efault(vhost_env):
    with _tap(vhost_env) as tap, VhostNet() as v:
        v.set_features(1 << lib.VIRTIO_F_VERSION_1)
        with pytest.raises(errors.OutOfBoundsError) as ei:
            v.set_backend(TX, tap)
        assert ei.value.errno == errno.EFAULT
        assert "setup_vring" in ei.value.remedy
        # a file that is not a TAP
        with DeviceMemory() as mem, SplitQueue(mem, 64, index=TX,
                                               features=1 << lib.VIRTIO_F_VERSION_1) as q:
            v.set_mem_table(mem)
            v.setup_vring(TX, q)
            with pytest.raises(errors.InvalidArgumentError) as ei:
                v.set_backend(TX, q.call_event.fileno())
            assert ei.value.errno == errno.ENOTSOCK
            v.set_backend(TX, tap)
            v.set_backend(TX, None)


def _rng(seed: int) -> random.Random:
    return random.Random(seed)


@pytest.mark.parametrize("event_idx", [True, False], ids=["event_idx", "no_event_idx"])
@pytest.mark.parametrize("indirect", [False, True], ids=["direct", "indirect"])
def test_thousand_frames_each_way(vhost_env, event_idx, indirect):
    """1,000 random-size frames (60..1514 bytes) TX -> TAP and TAP -> RX, byte-compared;
    call interrupts counted exactly."""
    rng = _rng(9 + event_idx * 2 + indirect)
    frames = [_frame(rng, rng.randint(60, 1514)) for _ in range(FRAMES)]
    with _tap(vhost_env) as tap, VirtioNet(tap, size=256, event_idx=event_idx,
                                           indirect=indirect) as net:
        net.post_rx()
        if not vhost_env.real:
            # the mock's vhost-net loops TX back into RX
            net.transmit(frames, batch=BATCH, split_header=indirect)
            got = net.receive(FRAMES)
            assert got == frames
            tx_irq = net.txq.drain_interrupts()
            rx_irq = net.rxq.drain_interrupts()
            print(f"[mock] TX {FRAMES} frames: {tx_irq} interrupts; RX: {rx_irq} interrupts")
            assert tx_irq == FRAMES // BATCH + 1
            return
        port = PacketPort(tap.name)
        try:
            # TX: each batch is one kick and one wait; the stack receives every frame
            for i in range(0, FRAMES, BATCH):
                group = frames[i:i + BATCH]
                net.transmit(group, batch=BATCH, split_header=indirect)
                for f in group:
                    assert port.recv() == f
            tx_irq = net.txq.drain_interrupts()
            # RX: the stack transmits through the TAP; one burst per 64 frames
            got = []
            for i in range(0, FRAMES, BATCH):
                group = frames[i:i + BATCH]
                for f in group:
                    port.send(f)
                got += [g for g in net.receive(len(group)) if g[12:14] == b"\x88\xb5"]
            assert len(got) == FRAMES
            assert got == frames
            rx_irq = net.rxq.drain_interrupts()
        finally:
            port.close()
        print(f"[{vhost_env.target.label}] event_idx={event_idx} indirect={indirect}: "
              f"TX {FRAMES} frames in {net.txq.kicks} kicks, {tx_irq} interrupts; "
              f"RX {FRAMES} frames, {rx_irq} interrupts")
        # every TX batch completes in one pass of the worker: one interrupt per batch
        assert tx_irq == (FRAMES + BATCH - 1) // BATCH
        assert net.txq.kicks == (FRAMES + BATCH - 1) // BATCH


def test_arp_answered_by_the_stack(vhost_env):
    """An ARP request sent through vhost-net TX is answered by the kernel's stack on RX."""
    if not vhost_env.real:
        pytest.skip("needs the kernel's network stack behind the TAP (lab guest)")
    with _tap(vhost_env, address="10.77.0.1/24") as tap, VirtioNet(tap, size=64) as net:
        net.post_rx()
        my_ip = socket.inet_aton("10.77.0.2")
        their_ip = socket.inet_aton("10.77.0.1")
        arp = (b"\xff" * 6 + GUEST_MAC + b"\x08\x06"
               + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + GUEST_MAC + my_ip + bytes(6) + their_ip)
        net.transmit([arp.ljust(60, b"\0")])
        for _ in range(8):
            f = net.receive(1)[0]
            if f[12:14] == b"\x08\x06" and struct.unpack("!H", f[20:22])[0] == 2:
                break
        else:
            pytest.fail("no ARP reply")
        assert f[0:6] == GUEST_MAC
        assert f[32:38] == GUEST_MAC and f[38:42] == my_ip and f[28:32] == their_ip
        print(f"ARP reply from {f[22:28].hex(':')} for 10.77.0.1")


def test_bad_input_leaves_nothing(vhost_env):
    """Queue and chain errors name the queue; kick before setup; closed objects."""
    features = 1 << lib.VIRTIO_F_VERSION_1
    with DeviceMemory() as mem:
        with pytest.raises(errors.InvalidArgumentError) as ei:
            SplitQueue(mem, 100, features=features, name="rx0")
        assert "power of two" in str(ei.value) and "rx0" in str(ei.value)
        with pytest.raises(errors.InvalidArgumentError) as ei:
            SplitQueue(mem, 65536, features=features, name="rx0")
        assert "maximum" in str(ei.value)
        q = SplitQueue(mem, 8, features=features, name="tx0")
        part = mem.alloc(64)
        with pytest.raises(errors.InvalidArgumentError) as ei:
            q.add([part] * 9)
        assert "longer than the ring (8)" in str(ei.value)
        assert q.num_free == 8
        q.add([part])
        with pytest.raises(errors.NotReadyError) as ei:
            q.kick()
        assert "kick before setup" in str(ei.value)
        q.close()
        with pytest.raises(errors.ClosedError):
            q.add([part])
        with pytest.raises(errors.ClosedError):
            q.kick()
    v = VhostNet()
    v.close()
    with pytest.raises(errors.ClosedError):
        v.get_features()


def _manual(env, tap, features, *, size=64):
    """A vhost-net device set up step by step: memory, features, both rings, backend."""
    mem = DeviceMemory()
    v = VhostNet()
    rxq = SplitQueue(mem, size, index=RX, features=features & ~(1 << lib.VHOST_F_LOG_ALL))
    txq = SplitQueue(mem, size, index=TX, features=features & ~(1 << lib.VHOST_F_LOG_ALL))
    slots = mem.new_buffer(2 * size * 2048)
    return mem, v, rxq, txq, slots


def test_dirty_log_marks_written_pages(vhost_env):
    """VHOST_SET_LOG_BASE/LOG_FD with VHOST_F_LOG_ALL: after RX the bitmap holds exactly the
    pages of the received frames and of the used ring's written entries and index."""
    from pyvfio.vhost import DirtyLog
    rng = _rng(5)
    with _tap(vhost_env) as tap:
        mem, v, rxq, txq, slots = _manual(vhost_env, tap, 1 << lib.VIRTIO_F_VERSION_1)
        try:
            v.set_mem_table(mem)
            v.set_features(1 << lib.VIRTIO_F_VERSION_1)
            v.setup_vring(RX, rxq)
            v.setup_vring(TX, txq)
            v.set_backend(RX, tap)
            v.set_backend(TX, tap)
            with DirtyLog.for_memory(mem) as log:
                v.start_dirty_log(log)
                base = mem.addr(slots)
                for i in range(4):                # RX slots on pages 0, 1, 2, 3 of the buffer
                    rxq.add(writable=[mem.region(slots, i * 4096, 2048)], token=i)
                rxq.kick()
                frames = [_frame(rng, 100 + 300 * i, dst=GUEST_MAC) for i in range(4)]
                port = None
                if vhost_env.real:
                    port = PacketPort(tap.name)
                    for f in frames:
                        port.send(f)
                    port.close()
                else:
                    for f in frames:                  # the mock TAP's stack side
                        vhost_env.mock.file_of(tap.fd).to_guest.append(f)
                got = rxq.wait_for(4, 10)
                assert sorted(u.token for u in got) == [0, 1, 2, 3]
                page = lib.VHOST_PAGE_SIZE
                expect = {(base + i * 4096) // page * page for i in range(4)}
                used = rxq.device_area.addr
                for off in [2] + [4 + 8 * i for i in range(4)]:
                    expect.add((used + off) // page * page)
                assert set(log.dirty()) == expect
                assert log.event.pending() >= 1
                assert log.dirty() == []             # read clears
                v.stop_dirty_log()
        finally:
            v.close()
            for q in (rxq, txq):
                q.close()
            mem.close()


def test_iotlb_miss_update_invalidate(vhost_env):
    """VIRTIO_F_ACCESS_PLATFORM with VHOST_BACKEND_F_IOTLB_MSG_V2: ring addresses are IOVAs;
    a frame in unmapped memory makes the device send an IOTLB MISS (read from the fd), an
    UPDATE lets it through, an INVALIDATE makes it miss again."""
    features = (1 << lib.VIRTIO_F_VERSION_1) | (1 << lib.VIRTIO_F_ACCESS_PLATFORM)
    rng = _rng(6)
    with _tap(vhost_env) as tap:
        mem, v, rxq, txq, slots = _manual(vhost_env, tap, features)
        port = PacketPort(tap.name) if vhost_env.real else None
        try:
            v.set_backend_features(1 << lib.VHOST_BACKEND_F_IOTLB_MSG_V2)
            v.set_mem_table(mem)
            v.set_features(features)
            assert v.iotlb_mode
            rings, rings_addr = mem.buffers[0]
            v.iotlb_update(rings_addr, rings.size, rings.vaddr)   # only the rings
            v.setup_vring(RX, rxq)
            v.setup_vring(TX, txq)
            v.set_backend(TX, tap)
            slot_addr = mem.addr(slots)
            frame = _frame(rng, 200)
            region = mem.region(slots, 0, 12 + len(frame))
            region.write(bytes(12) + frame)
            for round_ in range(2):
                txq.add([region])
                txq.kick()
                msg = v.read_iotlb(timeout=10)
                assert msg is not None and msg.type == lib.VHOST_IOTLB_MISS
                assert msg.iova == slot_addr and msg.perm == lib.VHOST_ACCESS_RO
                v.iotlb_update(slot_addr, slots.size, slots.vaddr, lib.VHOST_ACCESS_RO)
                assert txq.wait_for(1, 10)[0].length == 0
                if port is not None:
                    assert port.recv() == frame
                v.iotlb_invalidate(slot_addr, slots.size)
            assert v.read_iotlb(timeout=0) is None
        finally:
            if port is not None:
                port.close()
            v.close()
            for q in (rxq, txq):
                q.close()
            mem.close()


def test_iotlb_and_offload_need_negotiation(vhost_env):
    with VhostNet() as v:
        with pytest.raises(errors.NotReadyError) as ei:
            v.iotlb_update(0x1000, 0x1000, 0x7000)
        assert "VHOST_BACKEND_F_IOTLB_MSG_V2" in ei.value.remedy
        with pytest.raises(errors.InvalidArgumentError):
            v.set_backend_features(1 << lib.VHOST_BACKEND_F_IOTLB_BATCH)   # not offered by vhost-net
    with _tap(vhost_env) as tap:
        with pytest.raises(errors.InvalidArgumentError) as ei:
            tap.set_offload(["csum", "warp"])
        assert "warp" in str(ei.value)
        tap.set_offload(["csum", "tso4", "tso6"])
        tap.set_offload([])


@pytest.mark.parametrize("event_idx", [True, False], ids=["event_idx", "no_event_idx"])
def test_rx_burst_interrupts_exact(vhost_env, event_idx):
    """64 frames arrive while the driver does not collect: with EVENT_IDX the device
    interrupts exactly once (the first used buffer crosses used_event, the rest do not);
    without it, interrupts disabled (VRING_AVAIL_F_NO_INTERRUPT) give exactly none."""
    import time
    rng = _rng(64 + event_idx)
    frames = [_frame(rng, rng.randint(60, 1514), dst=GUEST_MAC) for _ in range(BATCH)]
    with _tap(vhost_env) as tap, VirtioNet(tap, size=256, event_idx=event_idx) as net:
        net.post_rx()
        q = net.rxq
        if not event_idx:
            q.disable_cb()
        if vhost_env.real:
            port = PacketPort(tap.name)
            for f in frames:
                port.send(f)
            port.close()
        else:
            vhost_env.mock.file_of(tap.fd).to_guest.extend(frames)
        irq = q.call_event.wait(10) if event_idx else 0    # the one interrupt
        deadline = time.monotonic() + 20
        while q.pending_used() < BATCH and time.monotonic() < deadline:
            time.sleep(0.01)
            irq += q.call_event.pending()        # counts any further signal (and runs the mock)
        assert q.pending_used() == BATCH
        got = q.used()
        assert [net._rx_slots[u.token].read(12, u.length - 12) for u in got] == frames
        irq += q.call_event.pending()
        assert irq == (1 if event_idx else 0)
        print(f"[{vhost_env.target.label}] RX burst of {BATCH}, event_idx={event_idx}: "
              f"{irq} interrupt(s)")
