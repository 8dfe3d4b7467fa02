"""uio_msi + nvme: the project's NVMe driver over UIO, one vector per queue.

The admin queue completes on vector 0 and one I/O queue pair on vector 1
(Create I/O Completion Queue names it); each completion is one MSI-X
message, so the counts on the two eventfds are exact.  QEMU's nvme has 65
MSI-X entries: uio_msi offers 64.  The mock has no NVMe model: these run
in the lab guests only.
"""
from __future__ import annotations

import pytest

from pyvfio import errors, uio
from pyvfio.core.eventfd import EventFd
from pyvfio.drivers.nvme import Nvme
from uio_env import needs_no_iommu, no_leaks, uio_env  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.device,
              pytest.mark.filterwarnings("ignore::pyvfio.uio.UioDmaWarning")]

@pytest.fixture
def nvme_uio(uio_env, lab_target):
    needs_no_iommu(lab_target)
    with uio_env.bound("nvme", "uio_msi") as bdf:
        with uio.open_uio(bdf) as dev:
            yield dev, bdf

def test_admin_on_vector_0_and_io_on_vector_1(nvme_uio, uio_env):
    dev, bdf = nvme_uio
    assert dev.msix.count == 64
    with Nvme(dev, vectors=2) as ctrl:
        assert sorted(dev.msix.eventfds) == [0, 1]
        assert uio_env.irq_lines(bdf) == [f"uio_msi[0]({bdf})", f"uio_msi[1]({bdf})"]
        admin0 = ctrl.interrupts
        info = ctrl.identify_controller()
        assert info.vendor_id == 0x1B36 and info.serial.startswith("pyvfio-nvme")
        q = ctrl.create_io_queue(1, vector=1)
        assert ctrl.interrupts - admin0 == 3           # Identify, Create CQ, Create SQ
        assert q.interrupts == 0
        block = bytes((i * 13 + 1) & 0xFF for i in range(512))
        ctrl.write(0, block)
        assert ctrl.read(0) == block                    # LBA 0 returns what was written
        assert q.interrupts == 2                        # the write and the read
        assert ctrl.interrupts - admin0 == 3            # nothing on vector 0
        assert dev.msix.pending(0) == 0 and dev.msix.pending(1) == 0
        ctrl.delete_io_queue(1)
        assert ctrl.interrupts - admin0 == 5

def test_replacing_an_eventfd_moves_the_interrupts(nvme_uio):
    dev, bdf = nvme_uio
    with Nvme(dev, vectors=2) as ctrl:
        q = ctrl.create_io_queue(1, vector=1)
        old = dev.msix.eventfds[1]
        with EventFd("replacement") as new:
            dev.msix.set(1, new)                        # replaces: the old one goes quiet
            block = b"\xa5" * 512
            ctrl.write(0, block)                        # waits on the new eventfd
            assert ctrl.read(0) == block
            assert q.interrupts == 2
            assert old.closed                           # ours, closed when replaced
            dev.msix.clear(1)
        ctrl.delete_io_queue(1)

def test_fd_minus_1_silences_a_vector(nvme_uio, uio_env):
    dev, bdf = nvme_uio
    with Nvme(dev, vectors=2) as ctrl:
        q = ctrl.create_io_queue(1, vector=1)           # completions raise vector 1
        with EventFd("silenced") as efd:
            dev.msix.set(1, efd)
            ctrl.write(8, b"\x22" * 512)
            assert q.interrupts == 1                    # heard on efd
            dev.msix.clear(1)                           # fd -1
            assert uio_env.irq_lines(bdf) == [f"uio_msi[0]({bdf})"]
            q.vector = None                             # the queue is polled from now on
            ctrl.write(8, b"\x11" * 512)
            assert ctrl.read(8) == b"\x11" * 512
            with pytest.raises(errors.TimedOutError):
                efd.wait(0.2)                           # two completions, no signal
            assert q.interrupts == 1
            with pytest.raises(errors.InvalidArgumentError):
                dev.msix.pending(1)                     # no longer connected
        ctrl.delete_io_queue(1)
