"""Create a vdpa_sim block device over netlink, write and read sectors through vhost-vdpa,
delete the device.

Run it in the lab (the full kernel has vdpa_sim built in; the stock one loads
the out-of-tree build)::

    python3 -m pyvfio lab run --kernel full -- python3 examples/vdpa_blk.py

The device is made with the ``vdpa`` netlink family (like ``vdpa dev add``),
opened as ``/dev/vhost-vdpa-N``, taken through the virtio status protocol
(ACKNOWLEDGE, DRIVER, features, FEATURES_OK, vring, DRIVER_OK), and its one
virtqueue carries virtio-blk requests from memory mapped at IOVAs by IOTLB
messages.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyvfio.core import syscalls  # noqa: E402
from pyvfio.core.uapi import lib  # noqa: E402
from pyvfio.vdpa.device import VhostVdpa, status_names  # noqa: E402
from pyvfio.vdpa.netlink import Vdpa  # noqa: E402
from pyvfio.virtio.blk import SECTOR_SIZE, BlkDriver  # noqa: E402
from pyvfio.virtio.queue import SplitQueue  # noqa: E402


def main() -> int:
    for module in ("vdpa_sim_blk", "vhost_vdpa"):
        try:
            syscalls.modprobe(module)
        except OSError:
            pass                      # built in (the lab's full kernel)
    with Vdpa() as nl:
        dev = nl.dev_add("blk-example", "vdpasim_blk")
        print(f"created {dev.name}: {dev.iproute2()}")
        try:
            with VhostVdpa(dev.name) as vd:
                print(f"{vd.path}: device id {vd.device_id}, {vd.num_queues} queue(s), "
                      f"IOVA range {vd.iova_range()[0]:#x}-{vd.iova_range()[1]:#x}")
                wanted = (1 << lib.VIRTIO_F_VERSION_1) | (1 << lib.VIRTIO_F_ACCESS_PLATFORM)
                features = vd.negotiate(vd.get_features() & wanted)
                memory = vd.iotlb_memory(0)
                memory.new_buffer(1 << 20)
                queue = SplitQueue(memory, 64, features=features)
                vd.setup_vring(0, queue)
                vd.driver_ok()
                print(f"status {status_names(vd.get_status())}")
                blk = BlkDriver(queue, depth=8)
                for sector in (0, 1, 1000):
                    data = bytes([sector & 0xFF]) * SECTOR_SIZE
                    blk.write(sector, data)
                    assert blk.read(sector) == data
                    print(f"sector {sector}: wrote and read back {SECTOR_SIZE} bytes")
                print(f"serial {blk.get_id().rstrip(bytes(1)).decode()!r}")
        finally:
            nl.dev_del(dev.name)
            print(f"deleted {dev.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
