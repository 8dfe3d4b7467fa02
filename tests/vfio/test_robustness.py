"""Every case of bad input and misuse found by feeding the public API random arguments.

Each must raise the library's error (naming the argument and the device),
change nothing, and leave the leak accounting where it started.  Device tests
run against the mock on the host and against the real kernel in the lab.
"""
from __future__ import annotations

import gc
import math
import warnings

import pytest

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.iova import IovaAllocator
from pyvfio.core.memory import PAGE_SIZE, DmaBuffer

P = PAGE_SIZE        # 4 KiB, or 64 KiB on POWER's 64K-page kernels

pytestmark = pytest.mark.device


@pytest.fixture
def dev(vfio_edu):
    before = (syscalls.open_fds(), syscalls.live_mappings())
    d = vfio_edu.open()
    try:
        yield d
    finally:
        d.close()
    assert (syscalls.open_fds(), syscalls.live_mappings()) == before


def _named(exc: BaseException, *words: str) -> None:
    text = str(exc)
    for w in words:
        assert w in text, (w, text)


@pytest.mark.parametrize("kw,cls,words", [
    ({"size": -4096}, errors.InvalidArgumentError, ["size", "-4096"]),
    ({"offset": 2 * P}, errors.OutOfBoundsError, ["do not fit"]),
    ({"offset": -4096}, errors.InvalidArgumentError, ["offset"]),
    ({"size": 100}, errors.InvalidArgumentError, ["IOMMU page size", "remedy"]),
    ({"size": 0}, errors.InvalidArgumentError, ["size 0", "remedy"]),
    ({"size": 4096.0}, errors.ArgumentTypeError, ["size must be an integer"]),
    ({"dma_mask_bits": -1}, errors.InvalidArgumentError, ["dma_mask_bits"]),
    ({"iova": -4096}, errors.InvalidArgumentError, ["iova"]),
    ({"iova": float("nan")}, errors.ArgumentTypeError, ["iova"]),
    ({"readable": "yes"}, errors.ArgumentTypeError, ["readable"]),
    ({"readable": False, "writable": False}, errors.InvalidArgumentError, ["readable or writable"]),
])
def test_dma_map_bad_arguments(dev, vfio_edu, kw, cls, words):
    if dev.dma is None:
        pytest.skip("no I/O address space without an IOMMU")
    with DmaBuffer(2 * P) as buf:
        with pytest.raises(cls) as ei:
            dev.dma.map(buf, **kw)
        _named(ei.value, dev.dma.name, *words)
        assert dev.dma.mappings == [] and buf.spaces == set()


def test_dma_map_raw_vaddr_bad(dev):
    if dev.dma is None:
        pytest.skip("no I/O address space without an IOMMU")
    with pytest.raises(errors.InvalidArgumentError) as ei:
        dev.dma.map(vaddr=-4096, size=4096)
    _named(ei.value, "vaddr")
    with pytest.raises(errors.InvalidArgumentError) as ei:
        dev.dma.map(vaddr=0x10000)
    _named(ei.value, "both vaddr= and size=")
    with pytest.raises(errors.ArgumentTypeError):
        dev.dma.map(b"not a buffer")                   # type: ignore[arg-type]
    assert dev.dma.mappings == []


def test_iova_allocator_bad_arguments():
    with pytest.raises(errors.InvalidArgumentError) as ei:
        IovaAllocator([(0, 1 << 32)], alignment=0)
    _named(ei.value, "alignment")
    with pytest.raises(errors.InvalidArgumentError):
        IovaAllocator([(0, 1 << 32)], alignment=3000)
    with pytest.raises(errors.InvalidArgumentError) as ei:
        IovaAllocator([(0, 1 << 32)], dma_mask_bits=-1)
    _named(ei.value, "dma_mask_bits")
    with pytest.raises(errors.ArgumentTypeError):
        IovaAllocator([(0, "end")])                    # type: ignore[list-item]
    alloc = IovaAllocator([(0, (1 << 32) - 1)])
    with pytest.raises(errors.InvalidArgumentError):
        alloc.alloc(0)
    with pytest.raises(errors.InvalidArgumentError):
        alloc.alloc(4096, dma_mask_bits=0)
    assert alloc.used == ()


@pytest.mark.parametrize("call,cls,words", [
    (lambda: DmaBuffer(2 ** 63), errors.InvalidArgumentError, ["DMA buffer size"]),
    (lambda: DmaBuffer(0), errors.InvalidArgumentError, ["DMA buffer size"]),
    (lambda: DmaBuffer(4096.5), errors.ArgumentTypeError, ["DMA buffer size"]),
    (lambda: DmaBuffer(1, page_size=-4096), errors.InvalidArgumentError, ["page_size"]),
    (lambda: DmaBuffer(1, page_size=2 * P), errors.InvalidArgumentError, ["hugetlb"]),
    (lambda: DmaBuffer(1, "bogus"), errors.InvalidArgumentError, ["kind"]),
])
def test_dma_buffer_bad_arguments(call, cls, words):
    before = (syscalls.open_fds(), syscalls.live_mappings())
    with pytest.raises(cls) as ei:
        call()
    _named(ei.value, *words)
    assert (syscalls.open_fds(), syscalls.live_mappings()) == before


def test_dma_buffer_bad_access():
    with DmaBuffer(P) as buf:
        buf.fill(0x5A)
        for bad in (256, -1, 1.0, True):
            with pytest.raises(errors.InvalidArgumentError) as ei:
                buf.fill(bad)                          # type: ignore[arg-type]
            _named(ei.value, "fill byte")
        with pytest.raises(errors.OutOfBoundsError):
            buf.read(P - 96, 200)
        with pytest.raises(errors.ArgumentTypeError):
            buf.read(0.5, 4)                           # type: ignore[arg-type]
        with pytest.raises(errors.ArgumentTypeError):
            buf.write(0, "text")                       # type: ignore[arg-type]
        with pytest.raises(errors.OutOfBoundsError):
            buf[P]
        with pytest.raises(errors.InvalidArgumentError):
            buf[0] = 300
        assert buf.read(0, 4) == b"\x5a" * 4           # nothing changed


def test_irq_wait_forever_accepts_none_and_inf(dev, vfio_edu):
    from pyvfio.drivers.edu import Edu
    edu = Edu(dev)
    msi = dev.msi
    msi.enable()
    for forever in (None, math.inf):
        edu.raise_irq(0x1)
        assert msi.wait(timeout=forever) == 1
        edu.ack_irq(0x1)
    for bad in (float("nan"), -1, "1"):
        with pytest.raises(errors.InvalidArgumentError) as ei:
            msi.wait(timeout=bad)                      # type: ignore[arg-type]
        _named(ei.value, "timeout", dev.name)


def test_msi_enable_bool_and_bad_counts(dev):
    for bad in (True, 1.0, "1"):
        with pytest.raises(errors.ArgumentTypeError) as ei:
            dev.msi.enable(bad)                        # type: ignore[arg-type]
        _named(ei.value, "count", dev.name)
    for bad in (0, -1, dev.msi.count + 1):
        with pytest.raises(errors.InvalidArgumentError):
            dev.msi.enable(bad)
    assert dev.msi.eventfds == []


def test_intx_while_msi_is_refused_with_a_remedy(dev):
    dev.msi.enable()
    with pytest.raises(errors.BusyError) as ei:
        dev.intx.enable()
    _named(ei.value, "MSI is enabled", "device.msi.disable()", dev.name)
    assert dev.intx.eventfds == [] and len(dev.msi.eventfds) == 1
    dev.msi.disable()
    dev.intx.enable()
    dev.intx.disable()


def test_region_bad_offsets(dev):
    bar = dev.bar(0)
    for call in (lambda: bar.read(0, float("nan")), lambda: bar.read32(4.0),
                 lambda: bar.write32(0.5, 1), lambda: bar.write32(4, 1.5),
                 lambda: bar.read("0", 4)):
        with pytest.raises(errors.ArgumentTypeError) as ei:
            call()
        _named(ei.value, dev.name)
    with pytest.raises(errors.InvalidArgumentError):
        bar.write32(4, -1)
    with pytest.raises(errors.InvalidArgumentError):
        bar.write32(4, 1 << 32)
    with pytest.raises(errors.OutOfBoundsError):
        bar.read(-4, 4)
    with pytest.raises(errors.ArgumentTypeError):
        dev.region(1.0)                                # type: ignore[arg-type]
    with pytest.raises(errors.ArgumentTypeError):
        dev.irq("msi")                                 # type: ignore[arg-type]


def test_closed_device_refuses_everything(vfio_edu):
    d = vfio_edu.open()
    msi = d.msi
    bar = d.bar(0)
    d.close()
    for call in (lambda: msi.wait(timeout=0), msi.enable, lambda: msi.pending(), d.reset,
                 lambda: d.region(0), lambda: bar.read32(0), lambda: d.config,
                 lambda: d.irq(0), msi.trigger):
        with pytest.raises(errors.ClosedError) as ei:
            call()
        _named(ei.value, d.name)
    with pytest.raises(errors.ClosedError):
        with d:
            pass
    d.close()                                          # closing twice is harmless


def test_buffer_close_refused_while_viewed_changes_nothing(dev, vfio_edu):
    from pyvfio.drivers.edu import Edu
    if dev.dma is None:
        pytest.skip("no IOMMU mapping to keep without an IOMMU")
    edu = Edu(dev)
    buf = DmaBuffer(4096)
    m = dev.dma.map(buf, dma_mask_bits=28)
    view = buf.view
    with pytest.raises(errors.BusyError):
        buf.close()
    assert not buf.closed and dev.dma.mappings == [m]
    buf.fill(0x11)                                     # still whole: usable
    buf.write(0, b"intact")
    edu.to_device(m.iova, 6)                           # the device still reaches it
    edu.from_device(m.iova + 64, 6)
    assert buf.read(64, 6) == b"intact"
    assert buf.physical_address(0) if vfio_edu.target.kind == "real" else True
    view.release()
    buf.close()
    assert buf.closed and dev.dma.mappings == []
    with pytest.raises(errors.ClosedError):
        buf.fill(0)
    with pytest.raises(errors.ClosedError):
        with buf:
            pass


def test_unclosed_objects_are_released_with_a_resource_warning(vfio_edu):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gc.collect()                                   # earlier tests' garbage is not ours
    before = (syscalls.open_fds(), syscalls.live_mappings())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = vfio_edu.open()
        d.msi.enable()
        d.bar(0)
        buf = DmaBuffer(8192)
        if d.dma is not None:
            d.dma.map(buf, dma_mask_bits=28)
        del d, buf
        gc.collect()
    assert (syscalls.open_fds(), syscalls.live_mappings()) == before
    texts = sorted(str(w.message).split(" ")[1] for w in caught
                   if issubclass(w.category, ResourceWarning))
    assert texts == ["<Device", "<DmaBuffer"]


def test_bus_address_in_every_mode(dev, vfio_edu):
    """One call gives where the device sees a buffer: IOVA (mapped on demand) or physical."""
    from pyvfio.drivers.edu import Edu
    edu = Edu(dev)
    with DmaBuffer(2 * P) as buf:
        buf.write(0, b"bus address!")
        addr = dev.bus_address(buf, 0)
        assert dev.bus_address(buf, 4096) == addr + 4096 if dev.dma is not None else True
        if dev.dma is None:
            assert addr == buf.physical_address(0)
        else:
            assert len(dev.dma.mappings) == 1                  # mapped once, on demand
            assert dev.dma.mappings[0].iova == addr < (1 << 28)
        edu.to_device(addr, 12)
        edu.from_device(dev.bus_address(buf, 100), 12)
        assert buf.read(100, 12) == b"bus address!"
        for bad, cls in ((2 * P, errors.OutOfBoundsError), (-1, errors.OutOfBoundsError),
                         (1.0, errors.ArgumentTypeError)):
            with pytest.raises(cls):
                dev.bus_address(buf, bad)                      # type: ignore[arg-type]
    if dev.dma is not None:
        assert dev.dma.mappings == []                          # closing the buffer unmapped it
    with pytest.raises(errors.ArgumentTypeError):
        dev.bus_address(b"x")                                  # type: ignore[arg-type]


def test_mock_dma_reaches_pinned_pages_after_the_memory_is_freed(vfio_edu):
    """The kernel pins mapped pages: freeing and re-mapping the address must not redirect DMA."""
    if vfio_edu.target.kind == "real":
        pytest.skip("checks the mock's pinning model (the real kernel is what it imitates)")
    if vfio_edu.path == "noiommu":
        pytest.skip("no IOMMU mapping without an IOMMU")
    import mmap
    from pyvfio.drivers.edu import Edu
    with vfio_edu.open() as d:
        edu = Edu(d)
        mem = mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED)
        from pyvfio.core.uapi import ffi
        ptr = ffi.from_buffer(mem)
        vaddr = int(ffi.cast("uintptr_t", ptr))
        mem[:8] = b"pinned!!"
        m = d.dma.map(vaddr=vaddr, size=4096, dma_mask_bits=28)
        ffi.release(ptr)
        mem.close()                                    # the process frees the memory
        later = mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED)   # may land at the same address
        later[:8] = b"stranger"
        edu.to_device(m.iova, 8)                       # the device reads the pinned pages
        edu.from_device(m.iova + 64, 8)                # and writes them, not the new mapping
        assert later[:8] == b"stranger" and later[64:72] == bytes(8)
        edu.to_device(m.iova + 64, 8)                  # what it wrote is in the pinned pages
        with DmaBuffer(4096) as out:
            edu.from_device(d.bus_address(out), 8)
            assert out.read(0, 8) == b"pinned!!"
        d.dma.unmap(m)
        later.close()


def test_mock_edu_huge_factorial_does_not_block(vfio_edu):
    if vfio_edu.target.kind == "real":
        pytest.skip("the mock's edu model (QEMU's edu really loops n times, in its own thread)")
    from pyvfio.drivers.edu import Edu
    import time
    with vfio_edu.open() as d:
        edu = Edu(d)
        t = time.monotonic()
        assert edu.factorial(0xFFFFFFFF) == 0          # n! mod 2**32 for n >= 34
        assert edu.factorial(33) == 2147483648
        assert time.monotonic() - t < 5
