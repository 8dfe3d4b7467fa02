"""uio_pci_generic with QEMU's edu: the map, INTx counted exactly, DMA to physical addresses.

edu registers (BAR 0): 0x00 identification 0x010000ed, 0x60 raise interrupt,
0x64 acknowledge, 0x24 interrupt status, 0x80/0x88/0x90/0x98 DMA source,
destination, count, command (bit 0 run, bit 1 to RAM, bit 2 interrupt when
done); the device buffer is at 0x40000.
"""
from __future__ import annotations

import asyncio
import os
import warnings

import pytest

from pyvfio import errors, uio
from pyvfio.core.memory import DmaBuffer
from uio_env import needs_no_iommu, no_leaks, uio_env  # noqa: F401 (fixtures)

pytestmark = pytest.mark.device

EDU_ID = 0x010000ED
RAISE, ACK, STATUS = 0x60, 0x64, 0x24
DMA_SRC, DMA_DST, DMA_CNT, DMA_CMD = 0x80, 0x88, 0x90, 0x98
DMA_RUN, DMA_TO_RAM, DMA_IRQ = 1, 2, 4
EDU_BUF = 0x40000
DMA_DONE_IRQ = 0x100


def test_discovery_names_the_driver_and_parent(uio_env):
    with uio_env.bound("edu", "uio_pci_generic") as bdf:
        node = uio.find(bdf)
        assert node.name == "uio_pci_generic"
        assert node.pci == bdf
        assert node.node == f"uio{node.minor}"
        assert [m.index for m in node.maps] == [0]
        m = node.maps[0]
        assert (m.name, m.size, m.offset) == (bdf, 1 << 20, 0)   # BAR 0, 1 MiB, page aligned
        assert node.ports == ()
        assert node in uio.nodes()


def test_identification_register_through_the_map(uio_env):
    with uio_env.bound("edu", "uio_pci_generic") as bdf:
        with uio.open_uio(bdf) as dev:
            bar = dev.map(0)
            assert bar.bar == 0
            assert dev.bar(0) is bar
            assert bar.read32(0x00) == EDU_ID
            assert bar.read(0x00, 4) == EDU_ID.to_bytes(4, "little")


def test_ten_intx_interrupts_counted_exactly(uio_env):
    with uio_env.bound("edu", "uio_pci_generic") as bdf:
        with uio.open_uio(bdf) as dev:
            bar, irq = dev.map(0), dev.interrupt
            start = irq.count
            assert dev.config.intx_disable is False
            for i in range(10):
                bar.write32(RAISE, 1)
                assert irq.wait(timeout=5) == 1
                assert dev.config.intx_disable is True     # the kernel masked the line
                bar.write32(ACK, 1)                        # lower the level first...
                irq.enable()                               # ...then clear INTX_DISABLE
            assert irq.count - start == 10
            assert (irq.seen, irq.missed) == (10, 0)
            assert irq.pending() == 0
            assert bar.read32(STATUS) == 0


def test_interrupt_wait_from_asyncio_and_its_timeout(uio_env):
    with uio_env.bound("edu", "uio_pci_generic") as bdf:
        with uio.open_uio(bdf) as dev:
            bar, irq = dev.map(0), dev.interrupt

            async def main():
                with pytest.raises(errors.TimedOutError):
                    await irq.wait_async(timeout=0.05)
                bar.write32(RAISE, 1)
                return await irq.wait_async(timeout=5)

            assert asyncio.run(main()) == 1
            bar.write32(ACK, 1)
            irq.enable()


def test_missed_interrupts_are_counted(uio_env):
    with uio_env.bound("edu", "uio_pci_generic") as bdf:
        with uio.open_uio(bdf) as dev:
            bar, irq = dev.map(0), dev.interrupt
            for _ in range(3):                     # three interrupts, nobody reads
                bar.write32(RAISE, 1)
                deadline = 50
                while not dev.config.intx_disable and deadline:   # the kernel took it
                    deadline -= 1
                    irq.count
                bar.write32(ACK, 1)
                irq.enable()
            assert irq.wait(timeout=5) == 3
            assert (irq.seen, irq.missed) == (3, 2)


def _dma(dev, bar, src: int, dst: int, count: int, to_ram: bool) -> None:
    bar.write64(DMA_SRC, src)
    bar.write64(DMA_DST, dst)
    bar.write64(DMA_CNT, count)
    bar.write64(DMA_CMD, DMA_RUN | DMA_IRQ | (DMA_TO_RAM if to_ram else 0))
    assert dev.interrupt.wait(timeout=10) == 1
    assert bar.read32(STATUS) == DMA_DONE_IRQ
    bar.write32(ACK, DMA_DONE_IRQ)
    dev.interrupt.enable()


def test_dma_with_physical_addresses_both_directions(uio_env, lab_target):
    needs_no_iommu(lab_target)
    with uio_env.bound("edu", "uio_pci_generic") as bdf:
        with uio.open_uio(bdf) as dev, DmaBuffer(4096) as out, DmaBuffer(4096) as back:
            dev.config.bus_master = True
            bar = dev.map(0)
            pattern = bytes((i * 7 + 3) & 0xFF for i in range(4096))
            out.write(0, pattern)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", uio.UioDmaWarning)
                src, dst = dev.bus_address(out), dev.bus_address(back)
            assert src != dst and src % 4096 == 0 and dst % 4096 == 0
            _dma(dev, bar, src, EDU_BUF, 4096, to_ram=False)      # RAM -> device
            _dma(dev, bar, EDU_BUF, dst, 4096, to_ram=True)       # device -> RAM
            assert back.read(0, 4096) == pattern
            dev.config.bus_master = False


def test_no_isolation_warning_once_per_process(uio_env, lab_target, monkeypatch):
    from pyvfio.uio import dma as uio_dma
    monkeypatch.setattr(uio_dma, "_warned", False)
    with uio_env.bound("edu", "uio_pci_generic") as bdf:
        with uio.open_uio(bdf) as dev, DmaBuffer(4096) as buf:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                dev.bus_address(buf)
                dev.bus_address(buf, 8)
            msgs = [w for w in seen if issubclass(w.category, uio.UioDmaWarning)]
            assert len(msgs) == 1
            assert "not isolated" in str(msgs[0].message)
            assert bdf in str(msgs[0].message)


# -- bad input ---------------------------------------------------------------------------

def test_access_past_the_map_is_refused(uio_env):
    with uio_env.bound("edu", "uio_pci_generic") as bdf:
        with uio.open_uio(bdf) as dev:
            bar = dev.map(0)
            for call in (lambda: bar.read32(1 << 20), lambda: bar.write32((1 << 20) - 2, 0),
                         lambda: bar.read(0xFFFF0, 0x11), lambda: bar.read64(-8)):
                with pytest.raises(errors.OutOfBoundsError) as exc:
                    call()
                assert exc.value.device == dev.name
                assert "outside map 0" in str(exc.value) and exc.value.remedy
            with pytest.raises(errors.InvalidArgumentError):
                bar.read32(2)                                 # misaligned
            with pytest.raises(errors.InvalidArgumentError):
                bar.write32(0x04, 1 << 32)                    # does not fit
            assert bar.read32(0) == EDU_ID                    # nothing changed


def test_wrong_map_index(uio_env):
    with uio_env.bound("edu", "uio_pci_generic") as bdf:
        with uio.open_uio(bdf) as dev:
            for index in (1, 5, -1):
                with pytest.raises(errors.OutOfBoundsError) as exc:
                    dev.map(index)
                assert "maps: 0" in str(exc.value) and exc.value.device == dev.name
            with pytest.raises(errors.OutOfBoundsError):
                dev.port(0)
            with pytest.raises(errors.NotFoundError) as exc:
                dev.bar(2)
            assert "uio_pci_generic maps only" in exc.value.remedy


def test_device_not_bound_to_uio(uio_env):
    other = uio_env.other_device()
    with pytest.raises(errors.NotBoundError) as exc:
        uio.open_uio(other)
    assert exc.value.device == other
    assert f"pyvfio bind {other} --driver uio_pci_generic" in exc.value.remedy
    with pytest.raises(errors.NotFoundError):
        uio.open_uio("uio99")


def test_uio_pci_generic_has_no_vectors(uio_env):
    with uio_env.bound("edu", "uio_pci_generic") as bdf:
        with uio.open_uio(bdf) as dev:
            with pytest.raises(errors.NotSupportedError) as exc:
                dev.msix
            assert "--driver uio_msi" in exc.value.remedy


def test_closed_objects(uio_env):
    with uio_env.bound("edu", "uio_pci_generic") as bdf:
        dev = uio.open_uio(bdf)
        bar, irq = dev.map(0), dev.interrupt
        dev.close()
        dev.close()                                           # twice is fine
        for call in (lambda: dev.map(0), lambda: bar.read32(0), lambda: irq.wait(0.01),
                     lambda: irq.pending(), lambda: dev.config, lambda: irq.enable()):
            with pytest.raises(errors.ClosedError) as exc:
                call()
            assert exc.value.device == dev.name
        with pytest.raises(errors.ClosedError):
            with dev:
                pass


def test_pagemap_without_privilege_real(lab_target):
    """As an unprivileged user the real pagemap shows frame 0: refused, clearly."""
    if lab_target.kind != "real":
        pytest.skip("the mock's case is tests/uio/test_uio_host.py (cap_sys_admin=False)")
    from pyvfio.uio.dma import bus_address
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:                                     # the child drops root, then asks
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            with DmaBuffer(4096) as buf:
                try:
                    bus_address(buf, device="probe")
                    os.write(wfd, b"allowed")
                except errors.PermissionDeniedError as exc:
                    os.write(wfd, f"refused {exc.errno} {'CAP_SYS_ADMIN' in exc.remedy}"
                             .encode())
            code = 0
        except BaseException as exc:             # noqa: BLE001 - report, never return
            os.write(wfd, f"error {exc!r}".encode())
        finally:
            os._exit(code)
    os.close(wfd)
    try:
        answer = os.read(rfd, 4096).decode()
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    assert answer == "refused 1 True"


def test_cli_binds_to_uio_and_ls_shows_the_node(lab_target, capsys):
    """``pyvfio bind --driver uio_pci_generic|uio_msi`` through driver_override, then ``ls``."""
    if lab_target.kind != "real":
        pytest.skip("binding needs the kernel's driver core (tests/uio/test_uio_host.py "
                    "checks ls on the mock)")
    from pyvfio import pci
    from pyvfio.cli import main
    dev = pci.find(vendor=0x1234, device=0x11E8)[0]
    before = dev.driver
    try:
        for driver in ("uio_pci_generic", "uio_msi"):
            assert main(["bind", dev.name, "--driver", driver]) == 0
            out, err = capsys.readouterr()
            node = uio.find(dev.name).node
            assert f"/dev/{node}" in out and "not isolated" in err
            assert dev.driver == driver and dev.driver_override == driver
            assert main(["ls", "--vendor", "1234"]) == 0
            row = next(line for line in capsys.readouterr().out.splitlines()
                       if line.startswith(dev.name))
            assert f"{driver} ({node})" in row
    finally:
        dev.unbind()
        assert dev.reprobe() == before


def test_dma_across_a_page_boundary_with_hugetlb_memory(uio_env, lab_target):
    """A transfer that crosses a 4 KiB boundary needs physically contiguous memory: a huge page."""
    needs_no_iommu(lab_target)
    if lab_target.kind == "real":
        path = "/proc/sys/vm/nr_hugepages"
        with open(path) as f:
            if int(f.read()) < 2:
                with open(path, "w") as w:
                    w.write("2")
    try:
        buf = DmaBuffer(2 << 20, "hugetlb")
    except errors.PyvfioError as exc:
        pytest.skip(f"no 2 MiB huge page here: {exc}")
    with buf, DmaBuffer(4096) as back, uio_env.bound("edu", "uio_pci_generic") as bdf:
        with uio.open_uio(bdf) as dev:
            dev.config.bus_master = True
            bar = dev.map(0)
            start = 4096 - 1024                                # 1 KiB before a 4 KiB boundary
            pattern = bytes((i * 5 + 11) & 0xFF for i in range(4096))
            buf.write(start, pattern)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", uio.UioDmaWarning)
                src = dev.bus_address(buf, start)
                assert dev.bus_address(buf, start + 4096 - 1) == src + 4095   # contiguous
                dst = dev.bus_address(back)
            _dma(dev, bar, src, EDU_BUF, 4096, to_ram=False)
            _dma(dev, bar, EDU_BUF, dst, 4096, to_ram=True)
            assert back.read(0, 4096) == pattern
            dev.config.bus_master = False
