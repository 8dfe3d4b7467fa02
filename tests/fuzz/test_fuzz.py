"""Fuzzing every public entry point with random arguments (hypothesis), against the mock.

Each example runs in a child process (fork) under a watchdog, on a device
freshly opened through one of the three VFIO paths, and the child reports:

- ``ok`` or ``library`` (a :class:`~pyvfio.errors.PyvfioError`): fine;
- ``foreign``: any other exception escaped — a bug;
- ``hang``: the watchdog (``WATCHDOG`` s) killed the child — a bug;
- ``leak``: a descriptor, mapping, pinned page or eventfd outlived the example.

The example count per entry point is ``PYVFIO_FUZZ_EXAMPLES`` (default 20:
bounded for the default test run).  With ``--lab`` a short pass runs the
VFIO entry points against the real kernel in the guest.

Adding a family is adding entries to ENTRY_POINTS: a name, a strategy for
the arguments, and a function ``(ctx, *args)``; ``ctx`` holds an open
``dev`` (VFIO device), ``buf`` (a 2-page DmaBuffer) and ``edu`` (its driver).
"""
from __future__ import annotations

import json
import math
import os
import select
import signal
import sys
import traceback
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Tuple

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings                      # noqa: E402
from hypothesis import strategies as st                                   # noqa: E402

from pyvfio import errors                                                 # noqa: E402
from pyvfio.core import syscalls                                          # noqa: E402

pytestmark = pytest.mark.device

EXAMPLES = int(os.environ.get("PYVFIO_FUZZ_EXAMPLES", "10"))
WATCHDOG = float(os.environ.get("PYVFIO_FUZZ_WATCHDOG", "20"))
REPORT: Dict[str, Dict[str, int]] = {}

# -- argument strategies ----------------------------------------------------------------

_EDGES = [0, 1, -1, 2, 3, 4, 7, 8, 100, 4095, 4096, 4097, 8192, 1 << 20, 0x40000, 1 << 28,
          (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1,
          1 << 64, -(1 << 63), -4096]


def nasty() -> st.SearchStrategy:
    """Anything a caller might pass: edge integers, huge ones, floats (NaN, inf), wrong types."""
    return st.one_of(
        st.sampled_from(_EDGES),
        st.integers(min_value=-(1 << 70), max_value=1 << 70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(), st.none(), st.text(max_size=6), st.binary(max_size=12),
        st.lists(st.integers(-3, 3), max_size=2))


def small() -> st.SearchStrategy:
    """Plausible values mixed with nasty ones."""
    return st.one_of(st.integers(min_value=-8, max_value=0x2000), nasty())


def waits() -> st.SearchStrategy:
    """Timeouts that may not block: nothing above 0.2 s, no None or inf (those wait forever)."""
    return st.one_of(st.floats(max_value=0.2), st.just(math.nan),
                     st.sampled_from([0, -1, "1", b"", [], -math.inf]),
                     st.integers(max_value=0))


def data() -> st.SearchStrategy:
    return st.one_of(st.binary(max_size=64), nasty())


# -- entry points ------------------------------------------------------------------------

def _map_buf(ctx, iova, size, offset, readable, writable, mask):
    if ctx.dev.dma is None:
        return ctx.dev.bus_address(ctx.buf, 0)
    return ctx.dev.dma.map(ctx.buf, iova=iova, size=size, offset=offset, readable=readable,
                           writable=writable, dma_mask_bits=mask)


def _map_vaddr(ctx, vaddr, size):
    if ctx.dev.dma is None:
        return None
    return ctx.dev.dma.map(vaddr=vaddr, size=size)


def _unmap(ctx, what):
    if ctx.dev.dma is not None:
        ctx.dev.dma.map(ctx.buf, dma_mask_bits=28)
        ctx.dev.dma.unmap(what)


def _iova_of(ctx, off):
    if ctx.dev.dma is not None:
        ctx.dev.dma.map(ctx.buf, dma_mask_bits=28)
        return ctx.dev.dma.iova_of(ctx.buf, off)
    return None


def _irq_wait(ctx, vector, timeout):
    ctx.dev.msi.enable()
    ctx.edu.raise_irq(1)
    return ctx.dev.msi.wait(vector, timeout)


def _dma_buffer(ctx, size, kind, page_size):
    from pyvfio.core.memory import DmaBuffer
    with DmaBuffer(size, kind, page_size=page_size) as b:
        return b.size


def _iova_alloc(ctx, ranges, alignment, mask, size):
    from pyvfio.core.iova import IovaAllocator
    a = IovaAllocator(ranges, alignment=alignment, dma_mask_bits=mask)
    iova = a.alloc(size)
    a.reserve(iova + (1 << 40), size)
    a.free(iova)


def _eventfd(ctx, initval, n, timeout):
    from pyvfio.core.eventfd import EventFd
    with EventFd("fuzz", initval=initval) as e:
        e.signal(n)
        return e.wait(timeout)


def _open_device(ctx, name, iommu, allow):
    from pyvfio.vfio.open import open_device
    with open_device(name, iommu=iommu, allow_noiommu=allow):
        pass


def _pci_get(ctx, text):
    from pyvfio import pci
    return pci.get(text).vendor


def _parse(ctx, text):
    from pyvfio.pci import PciAddress
    return str(PciAddress.parse(text))


def _with_closed(ctx, attr):
    obj = {"dev": ctx.dev, "buf": ctx.buf}[attr]
    obj.close()
    with obj:
        pass


def _kvm_vm(ctx, body):
    """A VM on /dev/kvm (the mock's, switched on in the child, or the real one in a guest)."""
    from pyvfio.kvm import Kvm
    if ctx.mock is not None and getattr(ctx.mock, "kvm", None) is not None:
        if ctx.mock.kvm.arch is None:
            ctx.mock.kvm.enable("loongarch")
    with Kvm() as kvm, kvm.create_vm() as vm:
        return body(kvm, vm)


def _kvm_reg(ctx, reg, value):
    return _kvm_vm(ctx, lambda k, vm: vm.create_vcpu(0).set_reg(reg, value))


def _kvm_irqfd(ctx, gsi):
    from pyvfio.core.eventfd import EventFd
    with EventFd("fuzz irqfd") as ev:
        _kvm_vm(ctx, lambda k, vm: (vm.register_irqfd(ev, gsi), vm.unregister_irqfd(ev, gsi)))


ENTRY_POINTS: Dict[str, Tuple[Any, Callable[..., Any]]] = {
    # KVM
    "Kvm.check_extension": (st.tuples(st.one_of(nasty(), st.text(max_size=12))),
                            lambda c, cap: _kvm_vm(c, lambda k, vm: k.check_extension(cap))),
    "Vm.set_user_memory_region": (st.tuples(small(), small()),
                                  lambda c, slot, gpa: _kvm_vm(
                                      c, lambda k, vm: vm.set_user_memory_region(slot, gpa, c.buf))),
    "Vm.create_vcpu": (st.tuples(small()),
                       lambda c, i: _kvm_vm(c, lambda k, vm: vm.create_vcpu(i))),
    "Vcpu.set_reg": (st.tuples(nasty(), nasty()), _kvm_reg),
    "Vm.register_irqfd": (st.tuples(small()), _kvm_irqfd),
    # VFIO device
    "Device.region": (st.tuples(small()), lambda c, i: c.dev.region(i)),
    "Device.bar": (st.tuples(small(), nasty()), lambda c, n, m: c.dev.bar(n, mmap=m)),
    "Device.irq": (st.tuples(small()), lambda c, i: c.dev.irq(i)),
    "Device.bus_address": (st.tuples(small()), lambda c, o: c.dev.bus_address(c.buf, o)),
    "Device.reset+closed": (st.tuples(st.sampled_from(["dev", "buf"])), _with_closed),
    # regions
    "Region.read": (st.tuples(small(), small()), lambda c, o, n: c.edu.bar.read(o, n)),
    "Region.write": (st.tuples(small(), data()), lambda c, o, d: c.edu.bar.write(o, d)),
    "Region.read32": (st.tuples(small()), lambda c, o: c.edu.bar.read32(o)),
    "Region.write32": (st.tuples(small(), nasty()), lambda c, o, v: c.edu.bar.write32(o, v)),
    "Region.read8/16/64": (st.tuples(st.sampled_from([8, 16, 64]), small()),
                           lambda c, w, o: getattr(c.edu.bar, f"read{w}")(o)),
    "Region.write8/16/64": (st.tuples(st.sampled_from([8, 16, 64]), small(), nasty()),
                            lambda c, w, o, v: getattr(c.edu.bar, f"write{w}")(o, v)),
    "config.read": (st.tuples(small(), st.sampled_from([1, 2, 4])),
                    lambda c, o, n: c.dev.region(7).read(o, n)),
    # interrupts
    "Irq.enable": (st.tuples(st.sampled_from([0, 1, 2]), small()),
                   lambda c, i, n: c.dev.irq(i).enable(n)),
    "Irq.mask/unmask/trigger": (st.tuples(st.sampled_from(["mask", "unmask", "trigger"]), small()),
                                lambda c, op, v: getattr(c.dev.intx, op)(v)),
    "Irq.pending": (st.tuples(small()), lambda c, v: (c.dev.msi.enable(), c.dev.msi.pending(v))),
    "Irq.wait": (st.tuples(small(), waits()), _irq_wait),
    # DMA
    "IoAddressSpace.map(buffer)": (st.tuples(st.one_of(st.none(), small()),
                                             st.one_of(st.none(), small()), small(), nasty(),
                                             nasty(), st.one_of(st.none(), small())), _map_buf),
    "IoAddressSpace.map(vaddr)": (st.tuples(nasty(), nasty()), _map_vaddr),
    "IoAddressSpace.unmap": (st.tuples(nasty()), _unmap),
    "IoAddressSpace.iova_of": (st.tuples(small()), _iova_of),
    "DmaBuffer()": (st.tuples(st.one_of(small(), st.integers(1, 1 << 16)),
                              st.sampled_from(["anonymous", "memfd", "hugetlb", "x", 3]),
                              st.one_of(st.none(), small())), _dma_buffer),
    "DmaBuffer.read": (st.tuples(small(), small()), lambda c, o, n: c.buf.read(o, n)),
    "DmaBuffer.write": (st.tuples(small(), data()), lambda c, o, d: c.buf.write(o, d)),
    "DmaBuffer.fill": (st.tuples(nasty()), lambda c, b: c.buf.fill(b)),
    "DmaBuffer[]": (st.tuples(nasty(), nasty()),
                    lambda c, k, v: (c.buf.__getitem__(k), c.buf.__setitem__(k, v))),
    "IovaAllocator": (st.tuples(st.one_of(st.just([(0, (1 << 32) - 1)]), nasty()), small(),
                                st.one_of(st.none(), small()), small()), _iova_alloc),
    # core
    "EventFd": (st.tuples(small(), nasty(), waits()), _eventfd),
    # opening, PCI
    "open_device": (st.tuples(st.one_of(st.just("0000:00:10.0"), st.text(max_size=14), nasty()),
                              st.one_of(st.sampled_from(["auto", "iommufd", "container"]),
                                        nasty()), nasty()), _open_device),
    "pci.get": (st.tuples(st.one_of(st.text(max_size=14), nasty())), _pci_get),
    "PciAddress.parse": (st.tuples(st.one_of(st.text(max_size=14), nasty())), _parse),
    # the edu driver
    "Edu.factorial": (st.tuples(nasty()), lambda c, n: c.edu.factorial(n)),
    "Edu.dma": (st.tuples(small(), small(), nasty()),
                lambda c, a, n, t: c.edu.dma(a, 0x40000, n, to_ram=bool(t))),
}

# -- the child process ---------------------------------------------------------------------


def _snapshot(mock: Any) -> List[str]:
    out = [f"fd {fd} {p}" for fd, p in sorted(syscalls.open_fds().items())]
    out += [f"mapping {m}" for m in syscalls.live_mappings()]
    if mock is not None:
        out += [f"kernel {x}" for x in mock.leaks()]
    return out


def _child(env: Any, func: Callable[..., Any], args: Tuple[Any, ...]) -> Dict[str, str]:
    from pyvfio.core.memory import DmaBuffer
    from pyvfio.drivers.edu import Edu
    import warnings
    warnings.simplefilter("ignore", ResourceWarning)
    mock = getattr(env, "mock", None)            # None on a real kernel (lab guest)
    before = _snapshot(mock)
    result = {"outcome": "ok", "detail": ""}
    dev = env.open()
    buf = DmaBuffer(8192)
    ctx = SimpleNamespace(dev=dev, buf=buf, edu=None, mock=mock)
    try:
        ctx.edu = Edu(dev, timeout=2.0)
        func(ctx, *args)
    except errors.PyvfioError as exc:
        result = {"outcome": "library", "detail": type(exc).__name__}
    except Exception as exc:                      # the bug this suite is for
        result = {"outcome": "foreign",
                  "detail": "".join(traceback.format_exception_only(type(exc), exc)).strip()
                  + " | " + traceback.format_exc().splitlines()[-3].strip()}
    finally:
        for obj in (buf, dev):
            try:
                obj.close()
            except errors.PyvfioError:
                pass                               # e.g. a view still alive: checked below
    leaked = [x for x in _snapshot(mock) if x not in before]
    if leaked and result["outcome"] != "foreign":
        result = {"outcome": "leak", "detail": "; ".join(leaked)[:500]}
    return result


def run_in_child(env: Any, func: Callable[..., Any], args: Tuple[Any, ...], *,
                 child: Callable[..., Dict[str, str]] = None) -> Dict[str, str]:  # type: ignore[assignment]
    """Fork, run one example in the child, and wait for it under the watchdog."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:                                                   # child
        code = 0
        try:
            os.close(r)
            out = (child or _child)(env, func, args)
            os.write(w, json.dumps(out).encode())
        except BaseException:                                      # noqa: B902 - report anything
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], WATCHDOG)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"outcome": "hang", "detail": f"no answer within {WATCHDOG} s"}
        chunks = []
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(r)
    if not chunks:
        return {"outcome": "crash", "detail": f"the child died (wait status {status:#x}) "
                                              "before reporting"}
    return json.loads(b"".join(chunks))


def _paths() -> List[Any]:
    """Each entry point on one VFIO path, the three paths in turn (all three with
    PYVFIO_FUZZ_ALL_PATHS=1): the default run stays short."""
    out = []
    every = os.environ.get("PYVFIO_FUZZ_ALL_PATHS") == "1"
    for i, name in enumerate(sorted(ENTRY_POINTS)):
        for j, path in enumerate(("container", "iommufd", "noiommu")):
            if every or i % 3 == j:
                out.append(pytest.param(name, path, id=f"{name}-{path}"))
    return out


@pytest.mark.parametrize("name,vfio_edu", _paths(), indirect=["vfio_edu"])
def test_fuzz_entry_point(name, vfio_edu):
    strategy, func = ENTRY_POINTS[name]
    counts = REPORT.setdefault(f"{name} [{vfio_edu.path}]", {})
    bad: List[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(args=strategy)
    def one(args):
        out = run_in_child(vfio_edu, func, args)
        counts[out["outcome"]] = counts.get(out["outcome"], 0) + 1
        if out["outcome"] not in ("ok", "library"):
            bad.append(f"{name}{args!r}: {out['outcome']}: {out['detail']}")

    one()
    assert not bad, "\n".join(bad[:10])


# -- vhost/virtio, vDPA and UIO families (mock kernel, one fresh per child) -----------------
#
# ``ctx`` of these entry points holds the family's mock kernel only; each entry point
# opens what it needs in ``with`` blocks, so a leak is whatever outlives them.

def _scatter() -> st.SearchStrategy:
    """A scatter list: (offset, size) parts, plausible and nasty, up to 5 parts."""
    part = st.tuples(st.one_of(st.integers(0, 0x3000), nasty()),
                     st.one_of(st.integers(0, 0x1000), nasty()))
    return st.lists(part, max_size=5)


def _vhost_queue(ctx, readable, writable, kicks, batch):
    """Random chains on the loopback vhost-net TX ring: add, kick, collect used."""
    from pyvfio.vhost import Tap, VirtioNet
    with Tap("pyvfio-fz0", create=False) as tap, VirtioNet(tap, size=16) as net:
        buf = net._tx_slots[0].buffer
        for _ in range(batch if isinstance(batch, int) and 0 <= batch <= 20 else 1):
            net.txq.add([net.memory.region(buf, o, n) for o, n in readable],
                        [net.memory.region(buf, o, n) for o, n in writable])
            if kicks:
                net.txq.kick()
        net.txq.used()


def _vhost_transmit(ctx, frames, batch):
    from pyvfio.vhost import Tap, VirtioNet
    with Tap("pyvfio-fz0", create=False) as tap, VirtioNet(tap, size=16) as net:
        net.post_rx()
        net.transmit(frames, batch=batch)
        net.receive(len(frames) if isinstance(frames, list) else 1, timeout=0.1)


def _vdpa(ctx, body):
    from pyvfio.vdpa.device import VhostVdpa
    from pyvfio.vdpa.netlink import Vdpa
    with Vdpa() as nl:
        nl.dev_add("pvfz0", "vdpasim_blk")
        try:
            with VhostVdpa("pvfz0") as dev:
                return body(dev)
        finally:
            nl.dev_del("pvfz0")


def _vdpa_status(ctx, values):
    def body(dev):
        for v in values:
            dev.set_status(v)
        return dev.get_status()
    return _vdpa(ctx, body)


def _vdpa_vring(ctx, op, index, num):
    from pyvfio.vdpa.device import ACKNOWLEDGE, DRIVER
    def body(dev):
        dev.add_status(ACKNOWLEDGE)
        dev.add_status(DRIVER)
        dev.negotiate(dev.get_features() & (1 << 32))
        getattr(dev, op)(index, num) if op != "set_vring_enable" else dev.set_vring_enable(
            index, bool(num))
    return _vdpa(ctx, body)


def _vdpa_iotlb(ctx, iova, size, perm, asid):
    from pyvfio.core.memory import DmaBuffer
    def body(dev):
        with DmaBuffer(8192, "memfd") as b:
            dev.iotlb_update(iova, size, b.vaddr, perm, asid=asid)
            dev.iotlb_invalidate(iova, size, asid=asid)
    return _vdpa(ctx, body)


def _vdpa_space_map(ctx, iova, size):
    from pyvfio.core.memory import DmaBuffer
    def body(dev):
        with DmaBuffer(8192, "memfd") as b:
            dev.space(0).map(b, iova=iova, size=size)
            dev.space(0).unmap_all()
    return _vdpa(ctx, body)


def _uio(ctx, body):
    from pyvfio import uio
    with uio.open_uio(ctx.bdf) as dev:
        return body(dev)


def _uio_map(ctx, index, width, off, value):
    def body(dev):
        m = dev.map(index)
        m.read(off, width)
        m.write(off, width, value)
    return _uio(ctx, body)


def _uio_vector(ctx, op, vector, n):
    from pyvfio.core.eventfd import EventFd
    def body(dev):
        if op == "enable":
            dev.msix.enable(n)
            dev.msix.disable()
        elif op == "set":
            with EventFd("fuzz vec") as e:
                dev.msix.set(vector, e)
                dev.msix.clear(vector)
        else:
            dev.msix.enable()
            dev.msix.pending(vector)
            dev.msix.disable()
    return _uio(ctx, body)


FAMILY_ENTRY_POINTS: Dict[str, Tuple[str, Any, Callable[..., Any]]] = {
    "VirtQueue.add+kick+used": ("vhost", st.tuples(_scatter(), _scatter(), st.booleans(),
                                                   small()), _vhost_queue),
    "VirtioNet.transmit": ("vhost", st.tuples(
        st.one_of(st.lists(st.binary(min_size=0, max_size=2000), max_size=6), nasty()),
        small()), _vhost_transmit),
    "VhostVdpa.set_status": ("vdpa", st.tuples(st.lists(
        st.one_of(st.integers(0, 0xFF), nasty()), max_size=4)), _vdpa_status),
    "VhostVdpa vring ops": ("vdpa", st.tuples(
        st.sampled_from(["set_vring_num", "set_vring_base", "set_vring_enable"]),
        small(), small()), _vdpa_vring),
    "VhostVdpa.iotlb_update": ("vdpa", st.tuples(nasty(), nasty(), small(), small()),
                               _vdpa_iotlb),
    "VdpaAddressSpace.map": ("vdpa", st.tuples(st.one_of(st.none(), nasty()),
                                               st.one_of(st.none(), small())), _vdpa_space_map),
    "UioMemoryMap.read/write": ("uio", st.tuples(small(), st.one_of(st.sampled_from(
        [1, 2, 4, 8]), small()), small(), nasty()), _uio_map),
    "UioMsix vectors": ("uio", st.tuples(st.sampled_from(["enable", "set", "pending"]),
                                         small(), small()), _uio_vector),
}


def _family_child(env: Any, func: Callable[..., Any], args: Tuple[Any, ...]) -> Dict[str, str]:
    import warnings
    warnings.simplefilter("ignore", ResourceWarning)
    before = _snapshot(env.mock)
    result = {"outcome": "ok", "detail": ""}
    try:
        func(env, *args)
    except errors.PyvfioError as exc:
        result = {"outcome": "library", "detail": type(exc).__name__}
    except Exception as exc:                      # the bug this suite is for
        result = {"outcome": "foreign",
                  "detail": "".join(traceback.format_exception_only(type(exc), exc)).strip()
                  + " | " + traceback.format_exc().splitlines()[-3].strip()}
    leaked = [x for x in _snapshot(env.mock) if x not in before]
    if leaked and result["outcome"] != "foreign":
        result = {"outcome": "leak", "detail": "; ".join(leaked)[:500]}
    return result


@pytest.fixture
def family_mock(request, lab_target, tmp_path):
    """The mock kernel with the family's devices (no kernel on the host has vDPA or uio_msi)."""
    if lab_target.kind == "real":
        pytest.skip("the family entry points are fuzzed against the mock kernel")
    from pyvfio.core.sysfs import host, use_host
    from pyvfio.mock import mock_kernel
    family = request.param
    if family == "uio":
        from pyvfio.mock.uio import MsixModel
        bdf = "0000:00:12.0"
        kw = dict(devices=[MsixModel(bdf, group=7, vectors=4)], iommu="none", noiommu=True,
                  uio={bdf: "uio_msi"})
    else:
        bdf, kw = None, {}
    with mock_kernel(tmp_path, **kw) as mk, use_host(
            mk.host if family == "vdpa" else host().with_roots(sysfs=mk.sysfs, dev=mk.devroot)):
        yield SimpleNamespace(mock=mk, bdf=bdf)


@pytest.mark.parametrize("name,family_mock",
                         [pytest.param(n, f, id=n) for n, (f, _, _) in
                          sorted(FAMILY_ENTRY_POINTS.items())], indirect=["family_mock"])
def test_fuzz_family_entry_point(name, family_mock):
    _, strategy, func = FAMILY_ENTRY_POINTS[name]
    counts = REPORT.setdefault(f"{name} [mock]", {})
    bad: List[str] = []

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(args=strategy)
    def one(args):
        out = run_in_child(family_mock, func, args, child=_family_child)
        counts[out["outcome"]] = counts.get(out["outcome"], 0) + 1
        if out["outcome"] not in ("ok", "library"):
            bad.append(f"{name}{args!r}: {out['outcome']}: {out['detail']}")

    one()
    assert not bad, "\n".join(bad[:10])


def test_fuzz_report():
    """Print the per-entry-point outcome counts (after the fuzz tests of this run)."""
    if not REPORT:
        pytest.skip("no fuzz test ran before this one")
    width = max(len(k) for k in REPORT)
    lines = [f"{'ENTRY POINT'.ljust(width)}  EXAMPLES  OK  LIBRARY  FOREIGN  HANG  LEAK  CRASH"]
    for k in sorted(REPORT):
        c = REPORT[k]
        lines.append(f"{k.ljust(width)}  {sum(c.values()):8}  {c.get('ok', 0):2}  "
                     f"{c.get('library', 0):7}  {c.get('foreign', 0):7}  {c.get('hang', 0):4}  "
                     f"{c.get('leak', 0):4}  {c.get('crash', 0):5}")
    print("\n" + "\n".join(lines))
