"""vhost-scsi with a LIO ramdisk target made through configfs (lab guests; the mock
has the ioctl rules but no LIO)."""
from __future__ import annotations

import errno
import random

import pytest

from pyvfio import errors
from pyvfio.core.uapi import lib
from pyvfio.vhost.scsi import (CHECK_CONDITION, GOOD, ILLEGAL_REQUEST, LioTarget, VhostScsi,
                               VirtioScsi)

pytestmark = pytest.mark.device


def test_scsi_rules_and_workers(vhost_env):
    with VhostScsi() as v:
        assert v.get_abi_version() == lib.VHOST_SCSI_ABI_VERSION
        assert v.get_features() >> lib.VIRTIO_F_VERSION_1 & 1
        # without a memory table no vring is reachable (vhost_vq_access_ok): EFAULT
        with pytest.raises(errors.PyvfioError) as ei:
            v.set_endpoint("naa.500140500000dead", 1)
        assert ei.value.errno == errno.EFAULT
        from pyvfio.virtio import DeviceMemory
        with DeviceMemory() as mem:
            mem.new_buffer(4096)
            v.set_mem_table(mem)
            with pytest.raises(errors.NotFoundError) as ei:
                v.set_endpoint("naa.500140500000dead", 1)
            assert ei.value.errno == errno.ENODEV and "LioTarget" in ei.value.remedy
            v.clear_endpoint("naa.500140500000dead", 1)        # nothing served: 0
        assert v.get_events_missed() == 0
        # worker ioctls: vhost-scsi takes them
        w = v.new_worker()
        v.attach_vring_worker(2, w)
        assert v.get_vring_worker(2) == w
        with pytest.raises(errors.BusyError):
            v.free_worker(w)
        w2 = v.new_worker()
        v.attach_vring_worker(2, w2)
        v.free_worker(w)
        with pytest.raises(errors.InvalidArgumentError) as ei:
            v.set_vring_num(130, 64)
        assert ei.value.errno == errno.ENOBUFS


def test_scsi_inquiry_io_and_bad_lba(vhost_env):
    """INQUIRY shows the backstore's vendor and model; 64 random-LBA writes read back;
    a read past the end is CHECK CONDITION / ILLEGAL REQUEST."""
    if not vhost_env.real:
        pytest.skip("needs LIO (target_core) behind vhost-scsi (lab guest)")
    rng = random.Random(64)
    with LioTarget(backstore="ramdisk", size=4 << 20, vendor="PYVFIO", model="VHOST-TEST") as t, \
            VirtioScsi(t) as scsi:
        inq = scsi.inquiry()
        assert (inq.response, inq.status) == (lib.VIRTIO_SCSI_S_OK, GOOD)
        assert inq.data[8:16].decode().strip() == "PYVFIO"
        assert inq.data[16:32].decode().strip() == "VHOST-TEST"
        blocks, block = scsi.read_capacity16()
        assert (blocks, block) == ((4 << 20) // 512, 512)
        written = {}
        for lba in rng.sample(range(blocks - 8), 64):
            data = rng.randbytes(4 * 512)
            r = scsi.write10(lba, data)
            assert (r.response, r.status) == (lib.VIRTIO_SCSI_S_OK, GOOD)
            for i in range(4):
                written[lba + i] = data[i * 512:(i + 1) * 512]
        for lba, data in written.items():
            r = scsi.read10(lba, 1)
            assert r.status == GOOD and r.data == data
        bad = scsi.read10(blocks + 10, 1)
        assert bad.response == lib.VIRTIO_SCSI_S_OK
        assert bad.status == CHECK_CONDITION
        assert bad.sense_key == ILLEGAL_REQUEST
        assert bad.asc == 0x21                    # LOGICAL BLOCK ADDRESS OUT OF RANGE
        assert scsi.vhost.get_events_missed() == 0
        print(f"vhost-scsi: {inq.data[8:32]!r}, {blocks} blocks, 64 writes read back, "
              f"request interrupts {scsi.queues[2].drain_interrupts()}")
