"""uio_msi, the project's driver: vectors connected to eventfds with UIO_MSI_IRQ_SET.

The same tests run against the mock (an MSI-X test function and an edu) and,
in the lab guests, against the real module with e1000e (a 5-entry MSI-X
table), nvme (65 entries: 64 vectors) and edu (MSI only: the INTx fallback).
How a vector is made to fire differs; what the driver does must not.
"""
from __future__ import annotations

import errno
import os

import pytest

from pyvfio import errors, uio
from pyvfio.core import syscalls
from pyvfio.core.eventfd import EventFd
from pyvfio.core.uapi import ffi, lib
from uio_env import no_leaks, uio_env  # noqa: F401 (fixtures)

pytestmark = pytest.mark.device


def _table_size(dev) -> int:
    return dev.config.msix().table_size


def test_vector_count_is_the_table_size_at_most_64(uio_env):
    for what in ("msix", "nvme"):
        try:
            ctx = uio_env.bound(what, "uio_msi")
            bdf = ctx.__enter__()
        except pytest.skip.Exception:
            continue
        try:
            with uio.open_uio(bdf) as dev:
                size = _table_size(dev)
                assert dev.node.name == "uio_msi"
                assert dev.msix.count == min(size, 64)
                assert dev.msix.name == "MSI-X"
        finally:
            ctx.__exit__(None, None, None)


def test_erange_past_the_last_vector_and_for_64(uio_env):
    with uio_env.bound("msix", "uio_msi") as bdf:
        with uio.open_uio(bdf) as dev, EventFd("test") as efd:
            n = dev.msix.count
            for vec in sorted({n, 64, 0xFFFFFFFF}):
                with pytest.raises(errors.OutOfBoundsError) as exc:
                    dev.msix.set(vec, efd)
                assert exc.value.errno == errno.ERANGE
                assert exc.value.device == dev.name and f"below {n}" in exc.value.remedy
            assert uio_env.irq_lines(bdf) == []               # refused: nothing requested
            dev.msix.set(n - 1, efd)                          # the last one exists
            assert uio_env.irq_lines(bdf) == [f"uio_msi[{n - 1}]({bdf})"]
            dev.msix.clear(n - 1)
            assert uio_env.irq_lines(bdf) == []


def test_any_other_ioctl_is_eopnotsupp(uio_env):
    with uio_env.bound("msix", "uio_msi") as bdf:
        with uio.open_uio(bdf) as dev:
            arg = ffi.new("struct uio_msi_irq_set *")
            other = lib.UIO_MSI_IRQ_SET + 1                    # same type and size, next number
            with pytest.raises(errors.NotSupportedError) as exc:
                syscalls.ioctl(dev.fd, other, arg, device=dev.name)
            assert exc.value.errno == errno.EOPNOTSUPP


def test_bad_eventfd_is_refused(uio_env):
    with uio_env.bound("msix", "uio_msi") as bdf:
        with uio.open_uio(bdf) as dev:
            with pytest.raises(errors.PyvfioError) as exc:
                dev.msix.set(0, dev.fd)                        # not an eventfd
            assert exc.value.errno == errno.EINVAL
            with pytest.raises(errors.PyvfioError) as exc:
                dev.msix.set(0, 1 << 20)                       # no such descriptor
            assert exc.value.errno == errno.EBADF
            with pytest.raises(errors.PyvfioError) as exc:
                dev.msix.set(0, -2)
            assert exc.value.errno == errno.EINVAL
            assert uio_env.irq_lines(bdf) == []


def test_last_close_frees_every_vector(uio_env):
    """Raw file descriptors: the kernel, not the library, must free the vectors."""
    with uio_env.bound("msix", "uio_msi") as bdf:
        node = uio.find(bdf)
        a = syscalls.open(node.dev_path, os.O_RDWR)
        b = syscalls.open(node.dev_path, os.O_RDWR)
        efds = [EventFd(f"v{i}") for i in range(3)]
        try:
            arg = ffi.new("struct uio_msi_irq_set *")
            for vec, efd in enumerate(efds):
                arg.vec, arg.fd = vec, efd.fileno()
                syscalls.ioctl(a, lib.UIO_MSI_IRQ_SET, arg)
            want = [f"uio_msi[{v}]({bdf})" for v in range(3)]
            assert uio_env.irq_lines(bdf) == want
            arg.vec, arg.fd = 1, -1                            # fd -1 disconnects one
            syscalls.ioctl(b, lib.UIO_MSI_IRQ_SET, arg)
            assert uio_env.irq_lines(bdf) == [want[0], want[2]]
            syscalls.close(a)                                  # not the last: still there
            assert uio_env.irq_lines(bdf) == [want[0], want[2]]
        finally:
            for efd in efds:
                efd.close()
            if a in syscalls.open_fds():
                syscalls.close(a)
            syscalls.close(b)                                  # the last close
        assert uio_env.irq_lines(bdf) == []


def test_intx_fallback_delivers_edu_interrupt_to_vector_0(uio_env):
    with uio_env.bound("edu", "uio_msi") as bdf:
        with uio.open_uio(bdf) as dev:
            assert dev.config.msix() is None and dev.config.msi() is not None   # MSI only
            msix = dev.msix
            assert (msix.count, msix.name) == (1, "INTx (uio_msi fallback)")
            with EventFd("edu vector 0") as efd:
                with pytest.raises(errors.OutOfBoundsError):
                    msix.set(1, efd)
                msix.set(0, efd)
                bar = dev.map(0)
                assert bar.read32(0) == 0x010000ED
                start = dev.interrupt.count
                for _ in range(3):
                    bar.write32(0x60, 1)
                    assert msix.wait(0, timeout=5) == 1
                    assert dev.config.intx_disable is True      # masked by the handler
                    bar.write32(0x64, 1)
                    dev.interrupt.enable()                      # a write of 1: unmask
                    assert dev.config.intx_disable is False
                assert dev.interrupt.count - start == 3         # the UIO count too
                assert efd.pending() == 0
                msix.clear(0)
                bar.write32(0x60, 1)                            # disconnected: goes nowhere
                with pytest.raises(errors.TimedOutError):
                    efd.wait(0.2)
                bar.write32(0x64, 1)
                dev.interrupt.enable()


def test_port_region_reaches_the_same_register_as_the_map(uio_env, lab_target):
    """e1000e's I/O BAR: IOADDR (0) selects a register, IODATA (4) reads it (32-bit in/out)."""
    if lab_target.kind != "real":
        pytest.skip("no mock function has an I/O BAR")
    with uio_env.bound("msix", "uio_msi") as bdf:
        with uio.open_uio(bdf) as dev:
            (port,) = dev.node.ports
            assert (port.name, port.size, port.porttype) == ("BAR2", 32, "port_x86")
            region = dev.port(0)
            status = dev.bar(0).read32(0x08)                  # STATUS through the map
            try:
                region.write(0, 4, 0x08)                      # IOADDR = STATUS
            except errors.NotSupportedError:
                pytest.skip(f"kernel {lab_target.kernel} has no ioperm "
                            "(CONFIG_X86_IOPL_IOPERM)")
            assert region.read(4, 4) == status                # IODATA
            with pytest.raises(errors.OutOfBoundsError):
                region.read(32, 4)
            with pytest.raises(errors.InvalidArgumentError):
                region.read(2, 4)                             # misaligned


def test_first_open_taints_the_kernel(uio_env, lab_target):
    """uio_msi marks the kernel (TAINT_USER, 'U') when user space first takes a device."""
    from pyvfio.uio.dma import TAINT_USER
    with uio_env.bound("msix", "uio_msi") as bdf:
        with uio.open_uio(bdf):
            if lab_target.kind == "real":
                assert uio.kernel_tainted() & TAINT_USER
            else:
                assert uio_env.mock.uio.tainted is True
