"""A virtio-blk device served by this process through VDUSE, driven through vhost-vdpa by the
library's own driver-side queue: the library talks to itself through the real kernel."""
from __future__ import annotations

import os
import random

import pytest
from vdpa_helpers import require_real

from pyvfio import errors
from pyvfio.core.uapi import lib
from pyvfio.vdpa.device import DRIVER_OK, VhostVdpa
from pyvfio.vdpa.vduse import VduseBlk
from pyvfio.virtio.blk import SECTOR_SIZE, BlkDriver, BlkRequest
from pyvfio.virtio.queue import PackedQueue, create_queue

pytestmark = pytest.mark.device

BASE = (1 << lib.VIRTIO_F_VERSION_1) | (1 << lib.VIRTIO_F_ACCESS_PLATFORM)


def _drive(dev: VhostVdpa, packed: bool = False):
    want = BASE | (1 << lib.VIRTIO_BLK_F_FLUSH) | ((1 << lib.VIRTIO_F_RING_PACKED) if packed else 0)
    features = dev.negotiate(dev.get_features() & want)
    assert bool(features >> lib.VIRTIO_F_RING_PACKED & 1) == packed
    mem = dev.iotlb_memory(0)
    mem.new_buffer(1 << 20)
    q = create_queue(mem, 128, features=features, name="vduse blk vq 0")
    dev.setup_vring(0, q)
    dev.driver_ok()
    return q, BlkDriver(q, depth=32, max_bytes=8 * SECTOR_SIZE)


@pytest.mark.parametrize("backing,layout", [("memory", "split"), ("file", "split"),
                                            ("memory", "packed")])
def test_vduse_blk_256_random_sectors(vdpa_env, tmp_path, backing, layout, lab_target):
    require_real(lab_target, "VDUSE")
    if not os.path.exists("/dev/vduse/control"):
        pytest.skip("this kernel has no VDUSE (CONFIG_VDPA_USER)")
    size = 8 << 20
    kw = {"size": size}
    if backing == "file":
        path = tmp_path / "disk.img"
        path.write_bytes(bytes(size))
        kw = {"path": str(path)}
    name = f"pvduse{os.getpid() % 1000}{backing[0]}{layout[0]}"
    rnd = random.Random(4)
    capacity = size // SECTOR_SIZE
    sectors = rnd.sample(range(capacity), 256)
    data = {s: rnd.randbytes(SECTOR_SIZE) for s in sectors}
    with VduseBlk(name, serial=b"pyvfio-e2e", packed=layout == "packed", **kw) as served:
        d = vdpa_env.dev_add(name, "vduse")
        assert (d.device_id, d.mgmtdev) == (lib.VIRTIO_ID_BLOCK, "vduse")
        try:
            with VhostVdpa(name) as dev:
                assert dev.device_id == lib.VIRTIO_ID_BLOCK and dev.num_queues == 1
                assert int.from_bytes(dev.get_config(0, 8), "little") == capacity
                q, blk = _drive(dev, packed=layout == "packed")
                assert isinstance(q, PackedQueue) == (layout == "packed")
                assert served.status & DRIVER_OK
                for i in range(0, 256, 16):
                    done = blk.run([BlkRequest(lib.VIRTIO_BLK_T_OUT, s, data[s])
                                    for s in sectors[i:i + 16]])
                    assert [st for st, _ in done] == [lib.VIRTIO_BLK_S_OK] * 16
                for i in range(0, 256, 16):
                    done = blk.run([BlkRequest(lib.VIRTIO_BLK_T_IN, s, read_len=SECTOR_SIZE)
                                    for s in sectors[i:i + 16]])
                    assert done == [(lib.VIRTIO_BLK_S_OK, data[s]) for s in sectors[i:i + 16]]
                assert blk.flush() == lib.VIRTIO_BLK_S_OK
                assert blk.get_id().rstrip(b"\0") == b"pyvfio-e2e"
                assert blk.status_of(BlkRequest(lib.VIRTIO_BLK_T_IN, capacity,
                                                read_len=SECTOR_SIZE)) == lib.VIRTIO_BLK_S_IOERR
                assert served.processed == 256 + 256 + 3
                # a config change announced by the device reaches the config call eventfd
                event = dev.set_config_call()
                served.set_config(0, (capacity // 2).to_bytes(8, "little"))
                served.inject_config_irq()
                assert event.wait(10) == 1
                assert int.from_bytes(dev.get_config(0, 8), "little") == capacity // 2
                served.check()
            for s in sectors:                                   # the backing bytes hold them
                assert served.backing_read(s * SECTOR_SIZE, SECTOR_SIZE) == data[s]
            assert served.requests[lib.VDUSE_SET_STATUS] >= 5
            assert served.requests[lib.VDUSE_UPDATE_IOTLB] >= 1
            assert served.status == 0                           # closing vhost-vdpa reset it
        finally:
            vdpa_env.dev_del(name)
    if backing == "file":
        raw = path.read_bytes()
        assert all(raw[s * SECTOR_SIZE:(s + 1) * SECTOR_SIZE] == data[s] for s in sectors)


def test_vduse_destroy_while_attached_is_refused(vdpa_env, lab_target):
    require_real(lab_target, "VDUSE")
    if not os.path.exists("/dev/vduse/control"):
        pytest.skip("this kernel has no VDUSE (CONFIG_VDPA_USER)")
    name = f"pvduse{os.getpid() % 1000}b"
    served = VduseBlk(name, size=1 << 20)
    vdpa_env.dev_add(name, "vduse")
    with pytest.raises(errors.BusyError) as ei:
        served.close()
    assert "dev del" in ei.value.remedy
    assert not served.closed                                # still served
    vdpa_env.dev_del(name)
    served.close()
    assert not os.path.exists(f"/dev/vduse/{name}")
