"""vhost-vdpa on the kernel's vDPA simulators, driven by the library's own virtqueues."""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import time

import pytest
from vdpa_helpers import require_real

from pyvfio import errors
from pyvfio.cli.vdpa import dev_records, mgmtdev_records
from pyvfio.core.uapi import ffi, lib
from pyvfio.vdpa.device import (ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, VhostVdpa)
from pyvfio.virtio.blk import SECTOR_SIZE, BlkDriver, BlkRequest
from pyvfio.virtio.queue import SplitQueue, create_queue

pytestmark = pytest.mark.device

MAC = "52:54:11:22:33:44"       # no zero byte: vdpa_sim_net compares MACs with strncmp
NET_HDR = ffi.sizeof("struct virtio_net_hdr_mrg_rxbuf")
BASE = (1 << lib.VIRTIO_F_VERSION_1) | (1 << lib.VIRTIO_F_ACCESS_PLATFORM)
BLK_CAPACITY = 0x40000           # vdpa_sim_blk: 128 MiB


def _vdpa_json(*args):
    tool = shutil.which("vdpa")
    if tool is None:
        pytest.skip("iproute2's vdpa tool is not installed")
    out = subprocess.run([tool, "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


# -- netlink ------------------------------------------------------------------------------------

def test_mgmtdev_and_dev_json_match_iproute2(make_dev, vdpa_env, lab_target):
    require_real(lab_target, "iproute2's vdpa tool")
    make_dev("vdpasim_net", mac=MAC, mtu=1400)
    make_dev("vdpasim_blk")
    assert {"mgmtdev": mgmtdev_records(vdpa_env)} == _vdpa_json("mgmtdev", "show")
    assert {"dev": dev_records(vdpa_env)} == _vdpa_json("dev", "show")
    ours = {m.handle: m for m in vdpa_env.mgmtdevs()}
    assert ours["vdpasim_net"].supported_classes == 1 << lib.VIRTIO_ID_NET
    assert ours["vdpasim_blk"].supported_classes == 1 << lib.VIRTIO_ID_BLOCK


def test_dev_config_and_errors(make_dev, vdpa_env):
    d = make_dev("vdpasim_net", mac=MAC, mtu=1400)
    assert (d.device_id, d.mgmtdev, d.max_vqs, d.max_vq_size) == (1, "vdpasim_net", 3, 256)
    cfg = vdpa_env.dev_config(d.name)
    assert (cfg.mac, cfg.mtu, cfg.status) == (MAC, 1400, lib.VIRTIO_NET_S_LINK_UP)
    if shutil.which("vdpa") and os.environ.get("PYVFIO_LAB"):
        theirs = _vdpa_json("dev", "config", "show", d.name)["config"][d.name]
        theirs = {k.strip(): v for k, v in theirs.items()}   # iproute2 6.1 writes "link "
        ours = cfg.iproute2()
        assert {k: ours[k] for k in theirs} == theirs
    with pytest.raises(errors.NotSupportedError) as ei:       # vdpasim_net takes no max_vqp
        vdpa_env.dev_add("pvbad0", "vdpasim_net", max_vqp=2)
    assert ei.value.errno == errno.EOPNOTSUPP and "0x1000" in ei.value.extack
    with pytest.raises(errors.NotFoundError) as ei:
        vdpa_env.dev_add("pvbad1", "no_such_mgmtdev")
    assert "modprobe vdpa_sim_net" in ei.value.remedy
    with pytest.raises(errors.ExistsError) as ei:
        vdpa_env.dev_add(d.name, "vdpasim_net")
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(errors.NotFoundError):
        vdpa_env.dev_del("pvnosuch")
    with pytest.raises(errors.PyvfioError) as ei:
        vdpa_env.dev_vstats(d.name, 0)
    assert ei.value.errno == errno.EAGAIN and "FEATURES_OK" in ei.value.remedy


def test_deleting_an_open_device_is_refused(make_dev, vdpa_env):
    d = make_dev("vdpasim_blk")
    with VhostVdpa(d.name):
        with pytest.raises(errors.BusyError) as ei:
            vdpa_env.dev_del(d.name)
        assert "still open" in str(ei.value) and d.name in str(ei.value)
    assert d.name in [x.name for x in vdpa_env.devs()]


# -- block --------------------------------------------------------------------------------------

def _blk(dev: VhostVdpa, size: int = 128, depth: int = 32):
    features = dev.negotiate(dev.get_features() & (BASE | (1 << lib.VIRTIO_BLK_F_FLUSH)))
    mem = dev.iotlb_memory(0)
    mem.new_buffer(1 << 20)
    q = SplitQueue(mem, size, features=features, name="blk vq 0")
    dev.setup_vring(0, q)
    dev.driver_ok()
    return q, BlkDriver(q, depth=depth, max_bytes=8 * SECTOR_SIZE)


def test_blk_identity(make_dev):
    d = make_dev("vdpasim_blk")
    with VhostVdpa(d.name) as dev:
        assert dev.device_id == lib.VIRTIO_ID_BLOCK
        assert dev.num_queues == 1
        assert dev.get_config_size() == ffi.sizeof("struct virtio_blk_config")
        assert dev.get_vring_num() == 256
        assert (dev.get_group_num(), dev.get_as_num()) == (1, 1)
        assert dev.iova_range() == (0, (1 << 64) - 1)
        assert dev.get_status() == 0
        cap = int.from_bytes(dev.get_config(0, 8), "little")
        assert cap == BLK_CAPACITY


def test_blk_256_random_sectors(make_dev, lab_target):
    require_real(lab_target)
    d = make_dev("vdpasim_blk")
    rnd = random.Random(10)
    sectors = rnd.sample(range(BLK_CAPACITY), 256)
    data = {s: rnd.randbytes(SECTOR_SIZE) for s in sectors}
    with VhostVdpa(d.name) as dev:
        q, blk = _blk(dev)
        for i in range(0, 256, 16):
            done = blk.run([BlkRequest(lib.VIRTIO_BLK_T_OUT, s, data[s]) for s in sectors[i:i + 16]])
            assert [st for st, _ in done] == [lib.VIRTIO_BLK_S_OK] * 16
        for i in range(0, 256, 16):
            done = blk.run([BlkRequest(lib.VIRTIO_BLK_T_IN, s, read_len=SECTOR_SIZE)
                            for s in sectors[i:i + 16]])
            assert [x for x in done] == [(lib.VIRTIO_BLK_S_OK, data[s]) for s in sectors[i:i + 16]]
        assert blk.flush() == lib.VIRTIO_BLK_S_OK
        assert blk.get_id().rstrip(b"\0") == b"vdpa_blk_sim"
        bad = blk.status_of(BlkRequest(lib.VIRTIO_BLK_T_IN, BLK_CAPACITY, read_len=SECTOR_SIZE))
        assert bad == lib.VIRTIO_BLK_S_IOERR
        assert q.completed == 256 + 256 + 3
        assert q.in_flight == 0


def test_blk_suspend_keeps_ring_state(make_dev, lab_target):
    require_real(lab_target)
    d = make_dev("vdpasim_blk")
    with VhostVdpa(d.name) as dev:
        q, blk = _blk(dev)
        blk.write(7, b"\xab" * SECTOR_SIZE)
        dev.suspend()
        slot = blk.submit(BlkRequest(lib.VIRTIO_BLK_T_IN, 7, read_len=SECTOR_SIZE))
        q.kick()
        time.sleep(0.3)
        assert q.used() == [] and q.in_flight == 1           # suspended: nothing processed
        dev.resume()
        (u,) = q.wait_for(1, 10)
        assert blk.complete(u) == (lib.VIRTIO_BLK_S_OK, b"\xab" * SECTOR_SIZE)
        assert u.token[0] == slot
        blk.write(8, b"\xcd" * SECTOR_SIZE)                    # and the ring goes on
        assert blk.read(8) == b"\xcd" * SECTOR_SIZE


# -- the seed rules, as the kernel answers them --------------------------------------------------

def test_status_rules_real_answers(make_dev):
    d = make_dev("vdpasim_blk")
    with VhostVdpa(d.name) as dev:
        dev.add_status(ACKNOWLEDGE)
        dev.add_status(DRIVER)
        dev.set_features(dev.get_features() & BASE)
        dev.add_status(FEATURES_OK)
        ok = ACKNOWLEDGE | DRIVER | FEATURES_OK
        # clearing a bit without a reset: the library refuses, and so does the kernel (EINVAL)
        with pytest.raises(errors.VdpaStatusError) as ei:
            dev.set_status(ACKNOWLEDGE | DRIVER)
        assert ei.value.errno == errno.EINVAL and "only cleared by a reset" in str(ei.value)
        with pytest.raises(errors.VdpaStatusError) as ei:
            dev.set_status(ACKNOWLEDGE | DRIVER, check=False)
        assert ei.value.errno == errno.EINVAL and "only cleared by a reset" in str(ei.value)
        assert dev.get_status() == ok
        # features after FEATURES_OK: refused here, EBUSY from the kernel
        with pytest.raises(errors.VdpaStatusError) as ei:
            dev.set_features(BASE)
        assert ei.value.errno == errno.EBUSY and "fixed once FEATURES_OK" in str(ei.value)
        with pytest.raises(errors.VdpaStatusError) as ei:
            dev.set_features(BASE, check=False)
        assert ei.value.errno == errno.EBUSY and "fixed once FEATURES_OK" in str(ei.value)
        # a vring index past the queues: refused here, ENOBUFS from the kernel
        with pytest.raises(errors.InvalidArgumentError) as ei:
            dev.set_vring_num(1, 64)
        assert ei.value.errno == errno.ENOBUFS and "past the device's 1 queues" in str(ei.value)
        s = ffi.new("struct vhost_vring_state *", {"index": 1, "num": 64})
        with pytest.raises(errors.InvalidArgumentError) as ei:
            dev._ioctl(lib.VHOST_SET_VRING_NUM, s)
        assert ei.value.errno == errno.ENOBUFS and "vring index past" in str(ei.value)
        # status order
        dev.reset()
        assert dev.get_status() == 0
        with pytest.raises(errors.VdpaStatusError) as ei:
            dev.set_status(ACKNOWLEDGE | FEATURES_OK)
        assert "in order" in str(ei.value)
        with SplitQueue(dev.iotlb_memory(0), 64, features=BASE) as q:
            with pytest.raises(errors.VdpaStatusError) as ei:  # vrings only after FEATURES_OK
                dev.setup_vring(0, q)
        assert "after FEATURES_OK and before DRIVER_OK" in str(ei.value)
        assert dev.get_status() == 0


def test_iova_range_honoured(make_dev):
    d = make_dev("vdpasim_blk")
    with VhostVdpa(d.name) as dev:
        first, last = dev.iova_range()
        mem = dev.iotlb_memory(0)
        buf = mem.new_buffer(4096)
        (m,) = dev.space(0).mappings
        assert first <= m.iova and m.iova + m.size - 1 <= last and m.buffer is buf
        sent = []
        real_send = dev.send_iotlb
        dev.send_iotlb = lambda msg: (sent.append(msg), real_send(msg))
        from pyvfio.core.memory import DmaBuffer
        with DmaBuffer(8192, "memfd") as other:
            with pytest.raises(errors.IovaError) as ei:
                dev.space(0).map(other, iova=last - 4095)
            assert "IOVA" in str(ei.value) and f"{last - 4095:#x}" in str(ei.value)
            with pytest.raises(errors.IovaError):
                dev.iotlb_update(last - 4095, 8192, other.vaddr)
        assert sent == []                                     # the kernel never saw them
        del dev.send_iotlb


# -- net ------------------------------------------------------------------------------------------

def _frame(i: int) -> bytes:
    payload = i.to_bytes(4, "little") * 16
    return bytes.fromhex(MAC.replace(":", "")) + bytes.fromhex("525400aabbcc") + b"\x88\xb5" + payload


class _Net:
    def __init__(self, dev: VhostVdpa, features: int, *, cvq_asid: int = 0, size: int = 256):
        self.dev = dev
        self.mem = dev.iotlb_memory(0)
        self.mem.new_buffer(2 << 20)
        self.rx = create_queue(self.mem, size, features=features, index=0, name="rx")
        self.tx = create_queue(self.mem, size, features=features, index=1, name="tx")
        dev.setup_vring(0, self.rx)
        dev.setup_vring(1, self.tx)
        self.cvq = None
        if features >> lib.VIRTIO_NET_F_CTRL_VQ & 1:
            cmem = dev.iotlb_memory(cvq_asid) if cvq_asid else self.mem
            self.cvq = create_queue(cmem, 16, features=features, index=2, name="cvq")
            dev.setup_vring(2, self.cvq)
        self.rxbufs = [self.mem.alloc(2048, 64) for _ in range(size)]
        self.txbufs = [self.mem.alloc(2048, 64) for _ in range(size)]

    def post_rx(self, n: int) -> None:
        for i in range(n):
            self.rx.add((), (self.rxbufs[i],), token=i)
        self.rx.kick()

    def loop(self, frames, batch: int = 32):
        got = []
        for start in range(0, len(frames), batch):
            chunk = frames[start:start + batch]
            for i, f in enumerate(chunk):
                r = self.txbufs[i].sub(0, NET_HDR + len(f))
                r.write(bytes(NET_HDR) + f)
                self.tx.add((r,), (), token=i)
            self.tx.kick()
            self.tx.wait_for(len(chunk), 10)
            for u in self.rx.wait_for(len(chunk), 10):
                data = self.rxbufs[u.token].read(0, u.length)
                got.append(data[NET_HDR:])
                self.rx.add((), (self.rxbufs[u.token],), token=u.token)
            self.rx.kick()
        return got


def _net_features(dev: VhostVdpa, extra: int = 0) -> int:
    want = BASE | (1 << lib.VIRTIO_NET_F_MAC) | extra
    return dev.get_features() & want


def test_net_identity(make_dev):
    d = make_dev("vdpasim_net", mac=MAC)
    with VhostVdpa(d.name) as dev:
        assert dev.device_id == lib.VIRTIO_ID_NET
        assert dev.num_queues == 3
        assert dev.get_config_size() == ffi.sizeof("struct virtio_net_config")
        assert bytes(dev.get_config(0, 6)) == bytes.fromhex(MAC.replace(":", ""))
        assert (dev.get_group_num(), dev.get_as_num()) == (2, 2)
        assert [dev.get_vring_group(i) for i in range(3)] == [0, 0, 1]
        assert not dev.get_features() >> lib.VIRTIO_F_RING_PACKED & 1


@pytest.mark.parametrize("layout", ["split", "packed"])
def test_net_loopback_1000_frames(make_dev, layout, lab_target, vdpa_env):
    require_real(lab_target)
    d = make_dev("vdpasim_net", mac=MAC)
    with VhostVdpa(d.name) as dev:
        extra = 1 << lib.VIRTIO_F_RING_PACKED if layout == "packed" else 0
        if extra and not dev.get_features() & extra:
            pytest.skip("vdpasim_net does not offer VIRTIO_F_RING_PACKED in this kernel")
        features = dev.negotiate(_net_features(dev, extra))
        net = _Net(dev, features)
        dev.driver_ok()
        net.post_rx(128)
        frames = [_frame(i) for i in range(1000)]
        got = net.loop(frames)
        assert len(got) == 1000 and got == frames
        st = dev.get_status()
        assert st == ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
        cfg = vdpa_env.dev_config(d.name)                  # read while the node is open
        assert cfg.negotiated_features == features
        theirs = _vdpa_json("dev", "config", "show", d.name)["config"][d.name]
        assert theirs["negotiated_features"] == cfg.iproute2()["negotiated_features"]
        tx = vdpa_env.dev_vstats(d.name, 1)
        rx = vdpa_env.dev_vstats(d.name, 0)
        size = 1000 * (NET_HDR + len(frames[0]))            # the simulator counts the header
        assert (tx.queue_index, tx.negotiated_features) == (1, features)
        assert tx.stats == {"tx packets": 1000, "tx bytes": size, "tx errors": 0, "tx drops": 0}
        assert rx.stats == {"rx packets": 1000, "rx bytes": size, "rx errors": 0,
                            "rx overruns": 0, "rx drops": 0}


def test_net_cvq_in_asid_1(make_dev, vdpa_env, lab_target):
    require_real(lab_target)
    d = make_dev("vdpasim_net", mac=MAC)
    with VhostVdpa(d.name) as dev:
        features = dev.negotiate(_net_features(
            dev, (1 << lib.VIRTIO_NET_F_CTRL_VQ) | (1 << lib.VIRTIO_NET_F_CTRL_MAC_ADDR)))
        assert features >> lib.VIRTIO_NET_F_CTRL_VQ & 1
        dev.set_group_asid(1, 1)                                # CVQ group -> ASID 1
        net = _Net(dev, features, cvq_asid=1)
        assert net.cvq.memory.space.asid == 1
        dev.driver_ok()
        new_mac = bytes.fromhex("5254a1a2a3a4")
        cmd = net.cvq.memory.alloc(2 + 6, 2)
        ack = net.cvq.memory.alloc(1, 1)
        cmd.write(bytes([lib.VIRTIO_NET_CTRL_MAC, lib.VIRTIO_NET_CTRL_MAC_ADDR_SET]) + new_mac)
        ack.write(b"\xff")
        net.cvq.add((cmd,), (ack,))
        net.cvq.kick()
        (u,) = net.cvq.wait_for(1, 10)
        assert (u.length, ack.read(0, 1)) == (1, bytes([lib.VIRTIO_NET_OK]))
        assert bytes(dev.get_config(0, 6)) == new_mac
        # data queues still in ASID 0: frames to the new MAC loop back
        net.post_rx(64)
        frames = [new_mac + f[6:] for f in (_frame(i) for i in range(64))]
        assert net.loop(frames) == frames
        assert {m.asid for m in (dev.space(0), dev.space(1))} == {0, 1}
        assert len(dev.space(1).mappings) == 1 and len(dev.space(0).mappings) >= 1
