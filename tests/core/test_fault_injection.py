"""Fault injection at every step: each setup sequence is run with its k-th system
call failed, for k = 1, 2, ... until a run completes.

Every run must end in a library error (never a foreign exception, never a
failure silently absorbed), and everything the run acquired must be back:
descriptors and eventfds, mappings, the mock kernel's DMA mappings and locked
memory, the process's VmLck/VmPin.

On the host the failure is injected in :mod:`pyvfio.core.syscalls` against
the mock kernel.  In a lab guest with the full kernel the same sequences run
against the real drivers, first with the syscall-layer injection, then with
the kernel's own ``/proc/thread-self/fail-nth`` (failslab + fail_page_alloc),
which fails the k-th allocation the kernel makes inside our calls.

Adding a family is one line in SEQUENCES: a name, the fixture that gives the
environment, and a function that runs the sequence in ``with`` blocks.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Dict, List, Tuple

import pytest

from pyvfio import errors
from pyvfio.core import faults
from pyvfio.core.memory import DmaBuffer

pytestmark = pytest.mark.device

REPORT: List[faults.Run] = []


def vfio_open_map_irq(env: Any, timeout: float = 5.0) -> None:
    """Open the device, map its BAR, map a buffer for DMA, DMA, enable MSI, take one."""
    from pyvfio.drivers.edu import Edu
    with env.open() as dev:
        edu = Edu(dev, timeout=timeout)
        with DmaBuffer(4096) as buf:
            buf.write(0, b"fail-nth")
            edu.to_device(dev.bus_address(buf), 8)
            msi = dev.msi
            msi.enable()
            edu.raise_irq(0x1)
            msi.wait(timeout=timeout)            # the count is not what this test is about
            edu.ack_irq(0x1)


# VFIO sequences run on each IOMMU path (the vfio_edu fixture): name -> sequence
VFIO_SEQUENCES: Dict[str, Callable[[Any], None]] = {
    "vfio open+map+irq": vfio_open_map_irq,
}

def kvm_vm_memory_vcpu_irqfd(env: Any) -> None:
    """Open /dev/kvm, make a VM with guest memory, a vCPU, an in-kernel irqchip and an irqfd."""
    from pyvfio.core.eventfd import EventFd
    from pyvfio.kvm import Kvm
    with Kvm() as kvm, kvm.create_vm() as vm, DmaBuffer(0x10000) as mem, EventFd("irqfd") as ev:
        vm.set_user_memory_region(0, 0, mem)
        vm.create_irqchip()                       # before the vCPU, as KVM requires
        vm.create_vcpu(0)
        vm.register_irqfd(ev, 5)
        vm.unregister_irqfd(ev, 5)


def vhost_net_rings_and_frames(env: Any) -> None:
    """vhost-net on a TAP: owner, memory table, two rings with kick/call eventfds, 8 frames."""
    from pyvfio.vhost import Tap, VirtioNet
    with Tap("pyvfio-fi0", create=False) as tap, VirtioNet(tap, size=64) as net:
        net.post_rx()
        frames = [bytes([i]) * 60 for i in range(8)]
        net.transmit(frames, batch=8)
        assert net.receive(8) == frames          # the mock loops TX back into RX


def uio_msi_map_vectors(env: Any) -> None:
    """Open a uio_msi device, map its BAR 0, connect every MSI-X vector to an eventfd."""
    from pyvfio import uio
    with uio.open_uio(env.bdf) as dev:
        bar = dev.map(0)
        bar.read(0, 4)
        fds = dev.msix.enable()
        assert len(fds) == env.vectors
        dev.msix.disable()


def vdpa_dev_status_vring(env: Any) -> None:
    """Netlink dev add, open vhost-vdpa, ACKNOWLEDGE -> DRIVER -> FEATURES_OK, one vring up."""
    from pyvfio.core.uapi import lib
    from pyvfio.vdpa.device import ACKNOWLEDGE, DRIVER, VhostVdpa
    from pyvfio.vdpa.netlink import Vdpa
    from pyvfio.virtio.queue import SplitQueue
    base = (1 << lib.VIRTIO_F_VERSION_1) | (1 << lib.VIRTIO_F_ACCESS_PLATFORM)
    with Vdpa() as nl:
        try:
            nl.dev_add("pvfi0", "vdpasim_blk")
            with VhostVdpa("pvfi0") as dev:
                dev.add_status(ACKNOWLEDGE)
                dev.add_status(DRIVER)
                features = dev.negotiate(dev.get_features() & base)
                mem = dev.iotlb_memory(0)
                mem.new_buffer(1 << 16)
                with SplitQueue(mem, 64, features=features, name="fi vq 0") as q:
                    dev.setup_vring(0, q)
        finally:
            _vdpa_dev_del(nl, "pvfi0")


def _vdpa_dev_del(nl: Any, name: str) -> None:
    """Delete ``name`` if the kernel made it (an add whose ack was lost did make it).

    A failed delete is tried once more, then reported: the device must not
    outlive the sequence, and the failure must not be absorbed.
    """
    try:
        nl.dev_del(name)
    except errors.NotFoundError:
        pass                                     # the add never reached the kernel
    except errors.PyvfioError:
        try:
            nl.dev_del(name)
        except errors.NotFoundError:
            pass
        raise


def vhost_vsock_cid_rings(env: Any) -> None:
    """vhost-vsock: owner, features, guest CID, memory table, two rings with eventfds."""
    from pyvfio.core.eventfd import EventFd
    from pyvfio.core.uapi import lib
    from pyvfio.vhost.vsock import VhostVsock
    from pyvfio.virtio import DeviceMemory
    with VhostVsock() as v, DeviceMemory() as mem, EventFd("kick") as kick, \
            EventFd("call") as call:
        v.set_features(1 << lib.VIRTIO_F_VERSION_1)
        v.set_guest_cid(7)
        mem.new_buffer(1 << 16)
        v.set_mem_table(mem)
        for index in (0, 1):
            v.set_vring_num(index, 64)
            v.set_vring_kick(index, kick)
            v.set_vring_call(index, call)


def vhost_scsi_mem_workers(env: Any) -> None:
    """vhost-scsi: owner, ABI version, memory table, a worker attached to a vring."""
    from pyvfio.vhost.scsi import VhostScsi
    from pyvfio.virtio import DeviceMemory
    with VhostScsi() as v, DeviceMemory() as mem:
        v.get_abi_version()
        mem.new_buffer(1 << 16)
        v.set_mem_table(mem)
        w = v.new_worker()
        v.attach_vring_worker(2, w)
        v.get_events_missed()


# other families: name -> (fixture giving the environment, sequence); one line each
SEQUENCES: Dict[str, Tuple[str, Callable[[Any], None]]] = {
    "kvm vm+memory+vcpu+irqfd": ("host_kvm", kvm_vm_memory_vcpu_irqfd),
    "vhost-net tap+rings+frames": ("mock_vhost", vhost_net_rings_and_frames),
    "uio_msi open+map+vectors": ("mock_uio", uio_msi_map_vectors),
    "vdpa add+status+vring": ("mock_vdpa", vdpa_dev_status_vring),
    "vhost-vsock cid+rings": ("mock_vhost", vhost_vsock_cid_rings),
    "vhost-scsi mem+worker": ("mock_vhost", vhost_scsi_mem_workers),
}


@pytest.fixture
def mock_vhost(lab_target, tmp_path):
    """The mock kernel's vhost-net and TAP (its loopback makes the sequence self-contained)."""
    if lab_target.kind == "real":
        pytest.skip("the vhost sequence uses the mock's TX->RX loopback")
    from pyvfio.core.sysfs import host, use_host
    from pyvfio.mock import mock_kernel
    with mock_kernel(tmp_path) as mk, use_host(host().with_roots(dev=mk.devroot)):
        yield mk


@pytest.fixture
def mock_vdpa(lab_target, tmp_path):
    """The mock kernel's vdpa netlink family and vhost-vdpa state rules (no kernel here has vDPA)."""
    if lab_target.kind == "real":
        pytest.skip("the vDPA sequence runs against the mock's vdpasim_blk management device")
    from pyvfio.core.sysfs import use_host
    from pyvfio.mock import mock_kernel
    with mock_kernel(tmp_path) as mk, use_host(mk.host):
        yield mk


@pytest.fixture
def mock_uio(lab_target, tmp_path):
    """The mock kernel's UIO family: an MSI-X test function bound to uio_msi."""
    if lab_target.kind == "real":
        pytest.skip("the UIO sequence uses the mock's MSI-X test function")
    from types import SimpleNamespace
    from pyvfio.core.sysfs import host, use_host
    from pyvfio.mock import mock_kernel
    from pyvfio.mock.uio import MsixModel
    bdf = "0000:00:12.0"
    with mock_kernel(tmp_path, devices=[MsixModel(bdf, group=7, vectors=4)], iommu="none",
                     noiommu=True, uio={bdf: "uio_msi"}) as mk, \
            use_host(host().with_roots(sysfs=mk.sysfs, dev=mk.devroot)):
        yield SimpleNamespace(mock=mk, bdf=bdf, vectors=4)


@pytest.fixture
def host_kvm(request):
    """The real /dev/kvm of the host (x86: runs real-mode guests), or a skip."""
    import platform
    if platform.machine() not in ("x86_64", "i686"):
        pytest.skip("the KVM sequence uses an x86 in-kernel irqchip")
    try:
        from kvm_support import _kvm_usable
    except ImportError:
        import sys as _sys
        _sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "kvm"))
        from kvm_support import _kvm_usable
    why = _kvm_usable()
    if why:
        pytest.skip(why)
    from kvm_support import label
    from pyvfio.lab import in_guest
    if not in_guest():
        label(request, f"real {os.uname().release} host-kvm")
    return None


def _env(value: Any) -> Callable[[], Any]:
    return lambda: contextlib.nullcontext(value)


def _snapshot(value: Any) -> Dict[str, Any]:
    return faults.resources(getattr(value, "mock", None))


def _check(rows: List[faults.Run]) -> None:
    REPORT.extend(rows)
    print("\n" + faults.format_table(rows))
    assert rows[-1].outcome == "ok", rows[-1]
    bad = [r for r in rows if not r.good]
    assert not bad, "\n" + faults.format_table(bad) + "".join(
        f"\n{r.k}: {r.raised!r}" for r in bad if r.raised is not None)
    # every failed call was reported with the errno injected for it
    for r in rows[:-1]:
        assert isinstance(r.raised, errors.PyvfioError)
        assert r.raised.errno == r.errno, (r.k, r.op, r.raised)
    assert len(rows) > 5                 # the sequence makes system calls at all


@pytest.mark.parametrize("name", sorted(VFIO_SEQUENCES))
def test_vfio_every_syscall_failed_in_turn(vfio_edu, name):
    _check(faults.explore(f"{name} [{vfio_edu.path}]", VFIO_SEQUENCES[name],
                          env=_env(vfio_edu), snapshot=_snapshot))


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_every_syscall_failed_in_turn(request, name):
    fixture, sequence = SEQUENCES[name]
    value = request.getfixturevalue(fixture)
    _check(faults.explore(name, sequence, env=_env(value), snapshot=_snapshot))


def _kernel_fail_nth_ready(lab_target) -> None:
    if lab_target.kind != "real":
        pytest.skip("the kernel's fail-nth needs a real kernel (lab guest)")
    if not os.path.exists("/proc/thread-self/fail-nth"):
        pytest.skip(f"kernel {lab_target.kernel} has no CONFIG_FAULT_INJECTION (full kernel has)")
    if not os.path.exists("/sys/kernel/debug/failslab"):
        os.system("mount -t debugfs none /sys/kernel/debug >/dev/null 2>&1")
    faults.setup_kernel_fault_injection()


def test_kernel_fail_nth_vfio(lab_target, vfio_edu):
    """The kernel fails its k-th allocation inside our calls; every k until the sequence completes.

    Each k runs in a forked child: fail-nth counts every allocation of the
    task, and the interpreter's own (between arming and the call) can meet
    the failure too; a child killed by a signal is reported with its k and
    the exploration goes on from k + 1.
    """
    if os.environ.get("PYVFIO_KERNEL_FAILNTH") != "1":
        pytest.skip("opt-in (PYVFIO_KERNEL_FAILNTH=1): on 6.12 an allocation failure absorbed "
                    "while the device is enabled ends in an ACPI oops at close, and the killed "
                    "task keeps the device, so vfio-pci blocks every later release of it")
    _kernel_fail_nth_ready(lab_target)
    import functools
    import json
    import signal
    import sys
    name = f"vfio open+map+irq [{vfio_edu.path}] fail-nth"
    seq = functools.partial(vfio_open_map_irq, timeout=2.0)
    k = int(os.environ.get("PYVFIO_FAILNTH_START", "1"))
    rows: List[faults.Run] = []
    crashes: List[str] = []
    while k < 3000:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                got = faults.explore(name, seq, env=_env(vfio_edu), snapshot=_snapshot,
                                     inject="kernel", start=k, limit=k)[0]
                os.write(w, json.dumps([got.k, got.op, got.errno, got.outcome, got.leaks,
                                        repr(got.raised)[:200] if got.raised else ""]).encode())
            finally:
                os._exit(0)
        os.close(w)
        data = b""
        import select
        while True:
            ready, _, _ = select.select([r], [], [], 120)        # the watchdog
            if not ready:
                os.kill(pid, signal.SIGKILL)
                break
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if not data:
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
            text = signal.Signals(sig).name if sig else f"exit {os.WEXITSTATUS(status)}"
            crashes.append(f"k={k}: the process died ({text})")
            rows.append(faults.Run(name, k, "?", None, f"died: {text}"))
        else:
            kk, op, err, outcome, leaks, raised = json.loads(data)
            rows.append(faults.Run(name, kk, op, err, outcome, None, leaks))
        print(faults.format_table(rows[-1:]).splitlines()[1], raised if data else "",
              file=sys.stderr, flush=True)
        if rows[-1].outcome == "ok":
            break
        if crashes:
            # the kernel killed the task (an oops in a system call): it is not in a
            # state to go on; the console has the trace
            break
        k += 1
    REPORT.extend(rows)
    print("\n" + faults.format_table(rows))
    assert rows[-1].outcome == "ok", rows[-1]
    assert not [r for r in rows if r.leaks], "\n" + faults.format_table([r for r in rows if r.leaks])
    assert not crashes, crashes


def test_syscall_layer_injection_itself():
    """fail_nth: counts calls, fails exactly the k-th with the errno given, refuses bad k."""
    import errno
    from pyvfio.core import syscalls
    with syscalls.fail_nth(0) as inj:
        fd = syscalls.eventfd()
        syscalls.write(fd, (1).to_bytes(8, "little"))
        syscalls.close(fd)
    assert (inj.calls, inj.trace, inj.fired) == (2, ["eventfd", "write"], None)
    with syscalls.fail_nth(2, errno.EINTR) as inj:
        fd = syscalls.eventfd()
        with pytest.raises(errors.PyvfioError) as ei:
            syscalls.write(fd, (1).to_bytes(8, "little"))
        syscalls.close(fd)
    assert (inj.fired, ei.value.errno, ei.value.op) == ("write", errno.EINTR, "write")
    with syscalls.fail_nth(1) as inj:
        with pytest.raises(errors.PyvfioError) as ei:
            syscalls.eventfd()
    assert ei.value.errno == errno.EMFILE           # eventfd's typical errno
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(errors.InvalidArgumentError):
            with syscalls.fail_nth(bad):             # type: ignore[arg-type]
                pass
    with pytest.raises(errors.InvalidArgumentError):
        with syscalls.fail_nth(1, 0):
            pass
    with syscalls.fail_nth(0):
        with pytest.raises(errors.BusyError):
            with syscalls.fail_nth(1):
                pass
