#!/usr/bin/env python3
"""pyvfio benchmarks: pyvfio against bare ``fcntl.ioctl``/``mmap`` and against C.

Usage::

    python3 benchmarks/run.py [--json FILE] [--quick] [--mock] [--bdf BDF] [--no-c]
                              [--reps N] [--target-ms MS]

Each operation is measured three ways in one run:

* **pyvfio**: the library's API (``syscalls.ioctl``, ``Region.read32``,
  ``device.dma.map``, ``Irq.trigger``/``wait`` ...);
* **fcntl**: bare Python, the way it is written without pyvfio: request
  numbers computed by hand, ``struct``-packed buffers for ``fcntl.ioctl``,
  ``mmap`` with ``struct.unpack_from``/``memoryview.cast``, ``select.poll`` and
  ``os.read`` on the eventfd; it uses the file descriptors pyvfio opened (a
  VFIO group can be opened once only) but none of its code;
* **C**: ``benchmarks/vfio_bench.c``, compiled here with the system ``cc``
  against the system's ``<linux/vfio.h>`` into a temporary directory and run
  after the Python part (a group can be open in one place only), with its own
  container, group and device fds but the same device, the same IOVA and the
  same DMA buffer pages (memfds it inherits).

Each cell is calibrated (doubling the iteration count until a batch takes
``--calib-ms``, which also warms the path up), warmed up once more, then run
``--reps`` times with N iterations chosen so that one repetition takes about
``--target-ms``; the median ns/op is reported.  The Python variants of an
operation are measured interleaved, repetition by repetition, so that a drift
of the machine affects them alike.  The garbage collector is off while timing.

Device benchmarks need an edu device (QEMU's ``-device edu``, PCI 1234:11e8)
and root: run them in the lab guest with
``python3 -m pyvfio lab run -- python3 benchmarks/run.py``.  Without a device
the script says so, runs the device-free benchmark and exits 0; ``--mock``
then measures the pure-Python layers against :mod:`pyvfio.mock` instead.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import importlib.metadata
import json
import mmap
import os
import platform
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pyvfio import errors  # noqa: E402

from pyvfio.core import syscalls
from pyvfio.core.uapi import ffi, lib  # noqa: E402

perf_counter_ns = time.perf_counter_ns

#: A benchmark body: runs ``n`` iterations, returns the elapsed nanoseconds.
Runner = Callable[[int], int]

EDU_VENDOR, EDU_DEVICE = 0x1234, 0x11E8
EDU_ID, EDU_LIVENESS, EDU_IRQ_RAISE, EDU_IRQ_ACK = 0x00, 0x04, 0x60, 0x64
EDU_ID_VALUE = 0x010000ED
WRITE_VALUE = 0x5A5A5A5A


# ---------------------------------------------------------------------------
# The uAPI as written without pyvfio: request numbers and layouts by hand
# (from <linux/vfio.h>); checked against pyvfio's binding at start-up.
# ---------------------------------------------------------------------------

def _IO(kind: str, nr: int) -> int:  # noqa: N802 - the C macro's name
    return (ord(kind) << 8) | nr


VFIO_BASE = 100
VFIO_CHECK_EXTENSION = _IO(";", VFIO_BASE + 1)
VFIO_GROUP_GET_STATUS = _IO(";", VFIO_BASE + 3)
VFIO_DEVICE_GET_IRQ_INFO = _IO(";", VFIO_BASE + 9)
VFIO_DEVICE_SET_IRQS = _IO(";", VFIO_BASE + 10)
VFIO_IOMMU_MAP_DMA = _IO(";", VFIO_BASE + 13)
VFIO_IOMMU_UNMAP_DMA = _IO(";", VFIO_BASE + 14)
VFIO_TYPE1v2_IOMMU = 3
VFIO_PCI_MSI_IRQ_INDEX = 1
VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5
VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE = 1, 2
IRQ_INFO_FMT = "=IIII"        # argsz, flags, index, count
GROUP_STATUS_FMT = "=II"      # argsz, flags
IRQ_SET_FMT = "=IIIII"        # argsz, flags, index, start, count (then data[])
DMA_MAP_FMT = "=IIQQQ"        # argsz, flags, vaddr, iova, size
DMA_UNMAP_FMT = "=IIQQ"       # argsz, flags, iova, size (then data[])


def check_hand_written_uapi() -> None:
    """The hand-written numbers above must be the kernel's (as pyvfio's binding has them)."""
    pairs = {
        "VFIO_CHECK_EXTENSION": VFIO_CHECK_EXTENSION,
        "VFIO_GROUP_GET_STATUS": VFIO_GROUP_GET_STATUS,
        "VFIO_DEVICE_GET_IRQ_INFO": VFIO_DEVICE_GET_IRQ_INFO,
        "VFIO_DEVICE_SET_IRQS": VFIO_DEVICE_SET_IRQS,
        "VFIO_IOMMU_MAP_DMA": VFIO_IOMMU_MAP_DMA,
        "VFIO_IOMMU_UNMAP_DMA": VFIO_IOMMU_UNMAP_DMA,
        "VFIO_TYPE1v2_IOMMU": VFIO_TYPE1v2_IOMMU,
        "VFIO_PCI_MSI_IRQ_INDEX": VFIO_PCI_MSI_IRQ_INDEX,
        "VFIO_IRQ_SET_DATA_NONE": VFIO_IRQ_SET_DATA_NONE,
        "VFIO_IRQ_SET_ACTION_TRIGGER": VFIO_IRQ_SET_ACTION_TRIGGER,
        "VFIO_DMA_MAP_FLAG_READ": VFIO_DMA_MAP_FLAG_READ,
        "VFIO_DMA_MAP_FLAG_WRITE": VFIO_DMA_MAP_FLAG_WRITE,
    }
    wrong = [n for n, v in pairs.items() if getattr(lib, n) != v]
    sizes = {
        "struct vfio_irq_info": IRQ_INFO_FMT, "struct vfio_group_status": GROUP_STATUS_FMT,
        "struct vfio_irq_set": IRQ_SET_FMT, "struct vfio_iommu_type1_dma_map": DMA_MAP_FMT,
        "struct vfio_iommu_type1_dma_unmap": DMA_UNMAP_FMT,
    }
    wrong += [c for c, f in sizes.items() if ffi.sizeof(c) != struct.calcsize(f)]
    if wrong:
        raise SystemExit(f"benchmarks: hand-written uAPI differs from the headers: {wrong}")


# ---------------------------------------------------------------------------
# Measurement
# ---------------------------------------------------------------------------

@dataclass
class Settings:
    target_ns: int          # one repetition
    calib_ns: int           # calibration stops when a batch takes this long
    reps: int


@dataclass
class Cell:
    """One measured cell: ns/op of each repetition, and the iterations per repetition."""
    samples: List[float]
    iterations: int

    @property
    def ns(self) -> float:
        return statistics.median(self.samples)

    def as_json(self) -> Dict[str, Any]:
        return {"ns_per_op": round(self.ns, 3), "iterations": self.iterations,
                "samples": [round(s, 3) for s in self.samples]}


def _calibrate(run: Runner, calib_ns: int) -> Tuple[int, int]:
    n = 1
    while True:
        t = run(n)
        if t >= calib_ns or n >= 1 << 40:
            return n, max(t, 1)
        n *= 2


def measure(runs: Dict[str, Runner], settings: Settings) -> Dict[str, Cell]:
    """Calibrate and warm up each runner, then time them interleaved, ``reps`` times."""
    iters: Dict[str, int] = {}
    gc.collect()
    gc.disable()
    try:
        for key, run in runs.items():
            n, t = _calibrate(run, settings.calib_ns)
            iters[key] = max(1, int(settings.target_ns * n / t))
            run(max(1, iters[key] // 10))                   # warm-up at the final size
        samples: Dict[str, List[float]] = {k: [] for k in runs}
        for _ in range(settings.reps):
            for key, run in runs.items():
                samples[key].append(run(iters[key]) / iters[key])
    finally:
        gc.enable()
    return {k: Cell(samples[k], iters[k]) for k in runs}


# ---------------------------------------------------------------------------
# The Python benchmarks.  Every runner is a plain loop around the operation,
# with the callables bound to locals first in both variants, so that the
# loop costs the same and the difference is the library's.
# ---------------------------------------------------------------------------

@dataclass
class Family:
    """The variants of one operation, measured together."""
    name: str
    runs: Dict[str, Runner] = field(default_factory=dict)


def pipe_family(stack: contextlib.ExitStack, baselines: bool) -> Family:
    """FIONREAD on a pipe: the ioctl layer with no device at all."""
    rfd, wfd = os.pipe()
    stack.callback(os.close, rfd)
    stack.callback(os.close, wfd)
    req = termios.FIONREAD
    avail = ffi.new("int *")
    fam = Family("pipe FIONREAD")

    def py(n: int) -> int:
        ioctl = syscalls.ioctl
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            ioctl(rfd, req, avail)
        return perf_counter_ns() - t0

    fam.runs["pipe.py"] = py
    if baselines:
        buf = bytearray(4)

        def fc(n: int) -> int:
            ioctl = fcntl.ioctl
            r = range(n)
            t0 = perf_counter_ns()
            for _ in r:
                ioctl(rfd, req, buf, True)
            return perf_counter_ns() - t0

        fam.runs["pipe.fc"] = fc
    return fam


def ioctl_families(dev: Any, baselines: bool) -> List[Family]:
    """Cheap VFIO ioctls: an int argument, and small structs read and written in place."""
    from pyvfio.vfio.irq import irq_info

    container, group, dfd = dev.dma, dev.group, dev.fd
    cfd, gfd = container.fd, group.fd
    msi = lib.VFIO_PCI_MSI_IRQ_INDEX

    chk = Family("VFIO_CHECK_EXTENSION")
    req_chk = lib.VFIO_CHECK_EXTENSION

    def chk_raw(n: int) -> int:
        ioctl = syscalls.ioctl
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            ioctl(cfd, req_chk, VFIO_TYPE1v2_IOMMU)
        return perf_counter_ns() - t0

    def chk_api(n: int) -> int:
        check = container.check_extension
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            check(VFIO_TYPE1v2_IOMMU)
        return perf_counter_ns() - t0

    chk.runs["chkext.py_raw"] = chk_raw
    chk.runs["chkext.py"] = chk_api

    info = Family("VFIO_DEVICE_GET_IRQ_INFO")
    req_info = lib.VFIO_DEVICE_GET_IRQ_INFO
    p = ffi.new("struct vfio_irq_info *")
    p.argsz = ffi.sizeof("struct vfio_irq_info")
    p.index = msi

    def info_raw(n: int) -> int:
        ioctl = syscalls.ioctl
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            ioctl(dfd, req_info, p)
        return perf_counter_ns() - t0

    def info_api(n: int) -> int:
        get = irq_info
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            get(dfd, msi)
        return perf_counter_ns() - t0

    info.runs["irqinfo.py_raw"] = info_raw
    info.runs["irqinfo.py"] = info_api

    status = Family("VFIO_GROUP_GET_STATUS")

    def status_api(n: int) -> int:
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            _ = group.status
        return perf_counter_ns() - t0

    status.runs["gstatus.py"] = status_api

    if baselines:
        def chk_fc(n: int) -> int:
            ioctl = fcntl.ioctl
            r = range(n)
            t0 = perf_counter_ns()
            for _ in r:
                ioctl(cfd, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU)
            return perf_counter_ns() - t0

        chk.runs["chkext.fc"] = chk_fc
        buf = bytearray(struct.pack(IRQ_INFO_FMT, struct.calcsize(IRQ_INFO_FMT), 0,
                                    VFIO_PCI_MSI_IRQ_INDEX, 0))

        def info_fc_raw(n: int) -> int:
            ioctl = fcntl.ioctl
            r = range(n)
            t0 = perf_counter_ns()
            for _ in r:
                ioctl(dfd, VFIO_DEVICE_GET_IRQ_INFO, buf, True)
            return perf_counter_ns() - t0

        def info_fc(n: int) -> int:
            ioctl, pack, unpack = fcntl.ioctl, struct.pack, struct.unpack
            size = struct.calcsize(IRQ_INFO_FMT)
            r = range(n)
            t0 = perf_counter_ns()
            for _ in r:
                _, _flags, _, _count = unpack(IRQ_INFO_FMT, ioctl(
                    dfd, VFIO_DEVICE_GET_IRQ_INFO,
                    pack(IRQ_INFO_FMT, size, 0, VFIO_PCI_MSI_IRQ_INDEX, 0)))
            return perf_counter_ns() - t0

        info.runs["irqinfo.fc_raw"] = info_fc_raw
        info.runs["irqinfo.fc"] = info_fc

        def status_fc(n: int) -> int:
            ioctl, pack, unpack = fcntl.ioctl, struct.pack, struct.unpack
            size = struct.calcsize(GROUP_STATUS_FMT)
            r = range(n)
            t0 = perf_counter_ns()
            for _ in r:
                unpack(GROUP_STATUS_FMT, ioctl(gfd, VFIO_GROUP_GET_STATUS,
                                               pack(GROUP_STATUS_FMT, size, 0)))[1]
            return perf_counter_ns() - t0

        status.runs["gstatus.fc"] = status_fc

        # the baselines answer what pyvfio answers
        assert struct.unpack(IRQ_INFO_FMT, fcntl.ioctl(
            dfd, VFIO_DEVICE_GET_IRQ_INFO, bytes(buf)))[3] == irq_info(dfd, msi).count
        assert fcntl.ioctl(cfd, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) == \
            container.check_extension(VFIO_TYPE1v2_IOMMU)
    return [chk, info, status]


def bar_mapping(bar: Any) -> mmap.mmap:
    """The mmap object behind pyvfio's mapping of a whole BAR (the same mapping for both)."""
    whole = getattr(bar, "_mmio_whole", None)
    mapping = getattr(whole, "mapping", None)
    if not isinstance(mapping, mmap.mmap):
        raise RuntimeError("the BAR is not mapped whole by pyvfio; cannot share its mapping")
    return mapping


def mmio_families(stack: contextlib.ExitStack, dev: Any, baselines: bool) -> List[Family]:
    """32-bit loads and stores on edu's BAR0, through one mapping."""
    bar = dev.bar(0)
    rd, wr = Family("MMIO read32"), Family("MMIO write32")
    assert bar.read32(EDU_ID) == EDU_ID_VALUE, "BAR0 is not an edu device's"

    def rd_py(n: int) -> int:
        read32 = bar.read32
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            read32(EDU_ID)
        return perf_counter_ns() - t0

    def wr_py(n: int) -> int:
        write32 = bar.write32
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            write32(EDU_LIVENESS, WRITE_VALUE)
        return perf_counter_ns() - t0

    rd.runs["rd.py"] = rd_py
    wr.runs["wr.py"] = wr_py
    if not baselines:
        return [rd, wr]

    m = bar_mapping(bar)
    mv = memoryview(m).cast("I")
    stack.callback(mv.release)        # before pyvfio unmaps the BAR
    i_id, i_live = EDU_ID // 4, EDU_LIVENESS // 4

    def rd_struct(n: int) -> int:
        unpack_from = struct.unpack_from
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            unpack_from("<I", m, EDU_ID)[0]
        return perf_counter_ns() - t0

    def rd_mv(n: int) -> int:
        v = mv
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            v[i_id]
        return perf_counter_ns() - t0

    def wr_struct(n: int) -> int:
        pack_into = struct.pack_into
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            pack_into("<I", m, EDU_LIVENESS, WRITE_VALUE)
        return perf_counter_ns() - t0

    def wr_mv(n: int) -> int:
        v = mv
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            v[i_live] = WRITE_VALUE
        return perf_counter_ns() - t0

    # each path must make whole 32-bit accesses (edu ignores narrower ones)
    assert struct.unpack_from("<I", m, EDU_ID)[0] == EDU_ID_VALUE and mv[i_id] == EDU_ID_VALUE
    for store in (lambda v: struct.pack_into("<I", m, EDU_LIVENESS, v),
                  lambda v: mv.__setitem__(i_live, v),
                  lambda v: bar.write32(EDU_LIVENESS, v)):
        store(0x12345678)
        assert bar.read32(EDU_LIVENESS) == 0xEDCBA987
        store(0)
    rd.runs["rd.fc_struct"] = rd_struct
    rd.runs["rd.fc_mv"] = rd_mv
    wr.runs["wr.fc_struct"] = wr_struct
    wr.runs["wr.fc_mv"] = wr_mv
    return [rd, wr]


def physical_runs(vaddr: int, size: int) -> Optional[int]:
    """How many physically contiguous runs the pages of a buffer form (root only; else None).

    type1 maps each run with one IOMMU mapping, so this decides much of what a
    map costs; it is reported with the results.
    """
    page = mmap.PAGESIZE
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(vaddr // page * 8)
            data = f.read(size // page * 8)
    except OSError:
        return None
    runs, prev = 0, -2
    for (entry,) in struct.iter_unpack("<Q", data):
        pfn = entry & ((1 << 55) - 1)
        if not entry >> 63 or not pfn:
            return None
        if pfn != prev + 1:
            runs += 1
        prev = pfn
    return runs


def dma_buffers(stack: contextlib.ExitStack, huge: bool) -> Dict[str, Any]:
    """The DMA buffers, as memfds so that the C run can map the very same pages.

    What a map costs depends on how the pages lie in physical memory (each
    physically contiguous run is one IOMMU mapping): pyvfio, fcntl and C map
    the same pages, so that this does not differ between them.
    """
    from pyvfio.core.memory import DmaBuffer

    bufs = {"4KiB": DmaBuffer(4096, "memfd"), "2MiB": DmaBuffer(2 << 20, "memfd")}
    if huge:
        bufs["2MiB-huge"] = DmaBuffer(2 << 20, "hugetlb")
    for buf in bufs.values():
        stack.enter_context(buf)
        buf.fill(0)                              # fault the pages in before timing
    return bufs


def dma_family(dev: Any, buf: Any, tag: str, baselines: bool) -> Tuple[Family, int]:
    """VFIO_IOMMU_MAP_DMA + VFIO_IOMMU_UNMAP_DMA of ``buf``; returns the family and IOVA used."""
    space, size = dev.dma, buf.size
    first = space.map(buf)
    iova = first.iova                            # the IOVA pyvfio's allocator picks
    space.unmap(first)
    fam = Family(f"DMA map+unmap {tag}")

    def py(n: int) -> int:
        map_, unmap = space.map, space.unmap
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            unmap(map_(buf))
        return perf_counter_ns() - t0

    fam.runs[f"{tag}.py"] = py
    if baselines:
        cfd, vaddr = space.fd, buf.vaddr
        map_len, unmap_len = struct.calcsize(DMA_MAP_FMT), struct.calcsize(DMA_UNMAP_FMT)
        rw = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE

        def fc(n: int) -> int:
            ioctl, pack = fcntl.ioctl, struct.pack
            r = range(n)
            t0 = perf_counter_ns()
            for _ in r:
                ioctl(cfd, VFIO_IOMMU_MAP_DMA, pack(DMA_MAP_FMT, map_len, rw, vaddr, iova, size))
                ioctl(cfd, VFIO_IOMMU_UNMAP_DMA, pack(DMA_UNMAP_FMT, unmap_len, 0, iova, size))
            return perf_counter_ns() - t0

        fam.runs[f"{tag}.fc"] = fc
    return fam, iova


@contextlib.contextmanager
def huge_pages(count: int) -> Iterator[bool]:
    """Make sure ``count`` free 2 MiB pages exist (reserving them only in a lab guest)."""
    base = "/sys/kernel/mm/hugepages/hugepages-2048kB"
    try:
        with open(f"{base}/free_hugepages") as f:
            free = int(f.read())
        with open(f"{base}/nr_hugepages") as f:
            total = int(f.read())
    except OSError:
        yield False
        return
    if free >= count:
        yield True
        return
    if os.environ.get("PYVFIO_LAB") != "1":      # never change a real machine's reservation
        yield False
        return
    try:
        with open(f"{base}/nr_hugepages", "w") as f:
            f.write(str(total + count - free))
    except OSError:
        yield False
        return
    try:
        with open(f"{base}/free_hugepages") as f:
            yield int(f.read()) >= count
    finally:
        with contextlib.suppress(OSError), open(f"{base}/nr_hugepages", "w") as f:
            f.write(str(total))


def irq_families(stack: contextlib.ExitStack, dev: Any, baselines: bool) -> List[Family]:
    """MSI round trips to the eventfd: fired by the kernel (SET_IRQS), and by the device."""
    msi = dev.msi
    msi.enable()
    stack.callback(msi.disable)
    bar = dev.bar(0)
    trig, edu = Family("MSI trigger"), Family("MSI from edu")

    def trig_py(n: int) -> int:
        trigger, wait = msi.trigger, msi.wait
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            trigger()
            wait(timeout=5)
        return perf_counter_ns() - t0

    def edu_py(n: int) -> int:
        write32, wait = bar.write32, msi.wait
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            write32(EDU_IRQ_RAISE, 1)
            wait(timeout=5)
            write32(EDU_IRQ_ACK, 1)
        return perf_counter_ns() - t0

    trig.runs["irqtrig.py"] = trig_py
    edu.runs["irqedu.py"] = edu_py
    if not baselines:
        return [trig, edu]

    dfd, efd = dev.fd, msi.eventfds[0]
    poller = select.poll()
    poller.register(efd, select.POLLIN)
    fire = struct.pack(IRQ_SET_FMT, struct.calcsize(IRQ_SET_FMT),
                       VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                       VFIO_PCI_MSI_IRQ_INDEX, 0, 1)
    mv = memoryview(bar_mapping(bar)).cast("I")
    stack.callback(mv.release)
    i_raise, i_ack = EDU_IRQ_RAISE // 4, EDU_IRQ_ACK // 4

    def trig_fc(n: int) -> int:
        ioctl, poll, read = fcntl.ioctl, poller.poll, os.read
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            ioctl(dfd, VFIO_DEVICE_SET_IRQS, fire)
            poll(5000)
            read(efd, 8)
        return perf_counter_ns() - t0

    def edu_fc(n: int) -> int:
        v, poll, read = mv, poller.poll, os.read
        r = range(n)
        t0 = perf_counter_ns()
        for _ in r:
            v[i_raise] = 1
            poll(5000)
            read(efd, 8)
            v[i_ack] = 1
        return perf_counter_ns() - t0

    trig.runs["irqtrig.fc"] = trig_fc
    edu.runs["irqedu.fc"] = edu_fc
    return [trig, edu]


# ---------------------------------------------------------------------------
# The C baseline
# ---------------------------------------------------------------------------

def compile_c(tmp: str) -> Tuple[Optional[str], str]:
    """Compile vfio_bench.c into ``tmp``; (executable, "") or (None, why not)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None, "no C compiler (cc) on PATH"
    exe = os.path.join(tmp, "vfio_bench")
    proc = subprocess.run([cc, "-O2", "-Wall", "-o", exe, str(HERE / "vfio_bench.c")], check=False,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        return None, f"{cc} failed:\n{proc.stdout.strip()}"
    return exe, ""


def run_c(exe: str, settings: Settings, args: List[str],
          pass_fds: Sequence[int] = ()) -> Tuple[Dict[str, Any], str]:
    """Run the C benchmark; (its JSON, "") or ({}, why it failed)."""
    cmd = [exe, "--target-ms", str(settings.target_ns / 1e6),
           "--calib-ms", str(settings.calib_ns / 1e6), "--reps", str(settings.reps), *args]
    proc = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, pass_fds=tuple(pass_fds))
    if proc.returncode != 0:
        return {}, f"vfio_bench exited with {proc.returncode}: {proc.stderr.strip()}"
    try:
        return json.loads(proc.stdout), ""
    except ValueError as exc:
        return {}, f"vfio_bench printed no JSON ({exc}): {proc.stdout[:200]!r}"


# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------

# (label, pyvfio cell, fcntl cell, C benchmark, what each column ran: pyvfio | fcntl | C)
ROWS: List[Tuple[str, str, str, str, str]] = [
    ("pipe FIONREAD ioctl (no device)", "pipe.py", "pipe.fc", "pipe_fionread",
     "syscalls.ioctl(fd, FIONREAD, int*) | fcntl.ioctl(fd, FIONREAD, bytearray, True) | ioctl()"),
    ("CHECK_EXTENSION: syscalls.ioctl", "chkext.py_raw", "chkext.fc", "check_extension",
     "syscalls.ioctl(container, VFIO_CHECK_EXTENSION, 3) | fcntl.ioctl(fd, req, 3) | ioctl()"),
    ("CHECK_EXTENSION: .check_extension()", "chkext.py", "chkext.fc", "check_extension",
     "Container.check_extension(3) | fcntl.ioctl(fd, req, 3) | ioctl()"),
    ("GET_IRQ_INFO: syscalls.ioctl", "irqinfo.py_raw", "irqinfo.fc_raw", "irq_info",
     "syscalls.ioctl(dev, req, preallocated cffi struct) | "
     "fcntl.ioctl(dev, req, preallocated bytearray, True) | ioctl() on a stack struct"),
    ("GET_IRQ_INFO: irq.irq_info()", "irqinfo.py", "irqinfo.fc", "irq_info",
     "pyvfio.vfio.irq.irq_info(fd, MSI) -> IrqInfo | struct.unpack(fcntl.ioctl(fd, req, "
     "struct.pack(...))) | ioctl() on a stack struct"),
    ("GROUP_GET_STATUS: Group.status", "gstatus.py", "gstatus.fc", "group_status",
     "Group.status | struct.unpack(fcntl.ioctl(fd, req, struct.pack(...)))[1] | ioctl()"),
    ("MMIO read32 vs struct.unpack_from", "rd.py", "rd.fc_struct", "mmio_read32",
     "Region.read32(0x00) | struct.unpack_from('<I', mapping, 0x00)[0] | volatile load"),
    ("MMIO read32 vs memoryview.cast('I')", "rd.py", "rd.fc_mv", "mmio_read32",
     "Region.read32(0x00) | memoryview(mapping).cast('I')[0] | volatile load"),
    ("MMIO write32 vs struct.pack_into", "wr.py", "wr.fc_struct", "mmio_write32",
     "Region.write32(0x04, v) | struct.pack_into('<I', mapping, 0x04, v) | volatile store"),
    ("MMIO write32 vs memoryview.cast('I')", "wr.py", "wr.fc_mv", "mmio_write32",
     "Region.write32(0x04, v) | memoryview(mapping).cast('I')[1] = v | volatile store"),
    ("DMA map+unmap 4 KiB", "4KiB.py", "4KiB.fc", "dma_4k",
     "dev.dma.unmap(dev.dma.map(buf)) | fcntl.ioctl MAP_DMA + UNMAP_DMA with struct.pack "
     "(same buffer, same IOVA) | ioctl() x2"),
    ("DMA map+unmap 2 MiB, 4 KiB pages", "2MiB.py", "2MiB.fc", "dma_2m",
     "as above, a 2 MiB buffer of 4 KiB pages"),
    ("DMA map+unmap 2 MiB huge page", "2MiB-huge.py", "2MiB-huge.fc", "dma_2m_huge",
     "as above, one 2 MiB hugetlb page"),
    ("MSI: SET_IRQS trigger -> eventfd", "irqtrig.py", "irqtrig.fc", "irq_trigger",
     "msi.trigger(); msi.wait() | fcntl.ioctl(SET_IRQS DATA_NONE|TRIGGER); poll; os.read "
     "| ioctl(); poll(); read()"),
    ("MSI: edu raise -> eventfd, ack", "irqedu.py", "irqedu.fc", "irq_edu",
     "write32(0x60, 1); msi.wait(); write32(0x64, 1) | the same with memoryview stores, "
     "poll, os.read | volatile stores, poll(), read()"),
]


def _fmt_ns(ns: Optional[float]) -> str:
    if ns is None:
        return "-"
    return f"{ns:,.1f}" if ns < 100 else f"{ns:,.0f}"


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def _round(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(x, 3)


def build_rows(cells: Dict[str, Cell], c_cells: Dict[str, Any]) -> List[Dict[str, Any]]:
    rows = []
    shown = set()
    for label, py_key, fc_key, c_key, what in ROWS:
        py = cells[py_key].ns if py_key in cells else None
        fc = cells[fc_key].ns if fc_key in cells else None
        c = c_cells[c_key]["ns_per_op"] if c_key in c_cells else None
        if py is None or (fc is None and py_key in shown):
            continue                  # not measured, or a baseline variant without baseline
        shown.add(py_key)
        op = label if fc is not None else label.split(" vs ")[0]
        rows.append({"op": op, "pyvfio_ns": _round(py), "fcntl_ns": _round(fc),
                     "c_ns": _round(c), "pyvfio_over_fcntl": _round(_ratio(py, fc)),
                     "pyvfio_over_c": _round(_ratio(py, c)),
                     "cells": {"pyvfio": py_key, "fcntl": fc_key, "c": c_key}, "what": what})
    return rows


def format_table(rows: List[Dict[str, Any]]) -> str:
    head = ("op", "pyvfio ns/op", "fcntl ns/op", "C ns/op", "pyvfio/fcntl", "pyvfio/C")
    body = [(r["op"], _fmt_ns(r["pyvfio_ns"]), _fmt_ns(r["fcntl_ns"]), _fmt_ns(r["c_ns"]),
             "-" if r["pyvfio_over_fcntl"] is None else f"{r['pyvfio_over_fcntl']:.2f}x",
             "-" if r["pyvfio_over_c"] is None else f"{r['pyvfio_over_c']:.2f}x")
            for r in rows]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(widths[i]) if i == 0 else h.rjust(widths[i])
                               for i, h in enumerate(head)) + " |",
             "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":"
                            for i, w in enumerate(widths)) + "|"]
    for row in body:
        lines.append("| " + " | ".join(x.ljust(widths[i]) if i == 0 else x.rjust(widths[i])
                                       for i, x in enumerate(row)) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine_info() -> Dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        cffi_version = importlib.metadata.version("cffi")
    except importlib.metadata.PackageNotFoundError:
        cffi_version = "unknown"
    return {"python": platform.python_version(), "implementation": platform.python_implementation(),
            "cffi": cffi_version, "kernel": platform.release(), "machine": platform.machine(),
            "cpu": model, "lab_guest": os.environ.get("PYVFIO_LAB") == "1",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


@contextlib.contextmanager
def edu_device(bdf: Optional[str]) -> Iterator[Tuple[Any, str, str]]:
    """Bind an edu device to vfio-pci for the block; yields (PciDevice, BDF, group node)."""
    from pyvfio import pci
    if bdf:
        found = [pci.get(bdf)]
    else:
        found = pci.find(vendor=EDU_VENDOR, device=EDU_DEVICE)
        if not found:
            raise LookupError("no edu device (PCI 1234:11e8) on this machine")
    dev = found[0]
    with dev.bound("vfio-pci"):
        yield dev, dev.name, dev.vfio_group_path()


def python_device_benchmarks(dev: Any, settings: Settings, baselines: bool,
                             bufs: Dict[str, Any], cells: Dict[str, Cell],
                             meta: Dict[str, Any]) -> Dict[str, int]:
    """Measure every device family on an open pyvfio Device; returns the IOVAs used."""
    from pyvfio.drivers.edu import Edu

    Edu(dev)                  # checks the device, turns memory space and bus mastering on
    iovas: Dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        families: List[Family] = []
        families += ioctl_families(dev, baselines)
        families += mmio_families(stack, dev, baselines)
        for tag, buf in bufs.items():
            fam, iovas[tag] = dma_family(dev, buf, tag, baselines)
            families.append(fam)
        meta["dma_physical_runs"] = {tag: physical_runs(b.vaddr, b.size)
                                     for tag, b in bufs.items()}
        families += irq_families(stack, dev, baselines)
        for fam in families:
            say(f"  {fam.name}: {', '.join(fam.runs)}")
            try:
                cells.update(measure(fam.runs, settings))
            except (errors.PyvfioError, OSError) as exc:
                if baselines:             # the real kernel: a failure is a failure
                    raise
                say(f"  {fam.name}: not measured against the mock: {exc}")
    return iovas


def mock_benchmarks(settings: Settings, cells: Dict[str, Cell]) -> Optional[str]:
    """pyvfio's layers against pyvfio.mock (the pyvfio column only); why not, if skipped."""
    try:
        from pyvfio.mock import EduModel, MockKernel
    except ImportError as exc:
        return f"pyvfio.mock is not available ({exc})"
    from pyvfio.vfio.open import open_device
    bdf = "0000:00:10.0"
    with tempfile.TemporaryDirectory(prefix="pyvfio-bench-mock-") as tmp:
        kernel = MockKernel(tmp, devices=[EduModel(bdf=bdf, group=5)], iommu="type1")
        with contextlib.ExitStack() as stack:
            bufs = dma_buffers(stack, huge=False)        # real memory, made outside the mock
            with kernel.installed():
                dev = open_device(bdf, iommu="container")
                try:
                    python_device_benchmarks(dev, settings, False, bufs, cells, {})
                finally:
                    dev.close()
    return None


@dataclass
class Results:
    cells: Dict[str, Cell] = field(default_factory=dict)
    c_cells: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        say(f"benchmarks: {msg}")

    def add_c(self, exe: str, settings: Settings, args: List[str],
              pass_fds: Sequence[int] = ()) -> None:
        out, why = run_c(exe, settings, args, pass_fds)
        if why:
            self.note(f"C baseline failed: {why}")
        self.c_cells.update(out.get("benchmarks", {}))
        if out.get("iommu") not in (None, "none"):
            self.meta["c_iommu"] = out["iommu"]
            self.meta["c_dma_2m_physical_runs"] = out.get("dma_2m_physical_runs")


def device_benchmarks(res: Results, settings: Settings, bdf_wanted: Optional[str],
                      exe: Optional[str]) -> bool:
    """The device benchmarks on a real edu device; False (and a note) if there is none."""
    from pyvfio.vfio.open import open_device
    with contextlib.ExitStack() as stack:
        try:
            _, bdf, group_path = stack.enter_context(edu_device(bdf_wanted))
        except (LookupError, errors.PyvfioError, OSError) as exc:
            res.note(f"no VFIO device benchmarks: {exc}")
            say("benchmarks: run them in the lab guest: "
                "python3 -m pyvfio lab run -- python3 benchmarks/run.py "
                "(or use --mock for pyvfio's Python layers)")
            return False
        res.meta.update(bdf=bdf, group=group_path)
        huge = stack.enter_context(huge_pages(1))
        if not huge:
            say("  (no free 2 MiB huge page: the hugetlb DMA benchmark is skipped)")
        bufs = dma_buffers(stack, huge)         # kept for the C run
        say(f"benchmarks: edu {bdf} (group {group_path}), legacy container")
        dev = open_device(bdf, iommu="container")
        try:
            res.meta["iommu"] = getattr(dev.dma, "iommu_name", None)
            iovas = python_device_benchmarks(dev, settings, True, bufs, res.cells, res.meta)
        finally:
            dev.close()
        res.meta["iova"] = {k: hex(v) for k, v in iovas.items()}
        if exe:               # after pyvfio closed the group: it can be opened once only
            say("benchmarks: C baseline")
            args = ["--group", group_path, "--bdf", bdf, "--iova", hex(iovas["4KiB"])]
            for tag, opt in (("4KiB", "--dma-4k-fd"), ("2MiB", "--dma-2m-fd"),
                             ("2MiB-huge", "--dma-huge-fd")):
                if tag in bufs:
                    args += [opt, str(bufs[tag].fd)]
            res.add_c(exe, settings, args, pass_fds=[b.fd for b in bufs.values()])
    return True


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--json", metavar="FILE", help="also write every result to FILE as JSON")
    ap.add_argument("--quick", action="store_true",
                    help="short runs (about 0.05 s a cell instead of 0.75 s)")
    ap.add_argument("--mock", action="store_true",
                    help="measure pyvfio's Python layers against pyvfio.mock (no device needed)")
    ap.add_argument("--bdf", help="the edu device to use (default: the first one found)")
    ap.add_argument("--no-c", action="store_true", help="skip the C baseline")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per cell (default: 5)")
    ap.add_argument("--target-ms", type=float, help="time of one repetition "
                    "(default: 150, or 10 with --quick)")
    args = ap.parse_args(argv)
    target_ms = args.target_ms or (10.0 if args.quick else 150.0)
    settings = Settings(target_ns=int(target_ms * 1e6),
                        calib_ns=int(min(20.0, target_ms / 5) * 1e6), reps=max(1, args.reps))
    check_hand_written_uapi()

    res = Results(meta=machine_info())
    res.meta.update(reps=settings.reps, target_ms=target_ms, calib_ms=settings.calib_ns / 1e6,
                    mode="mock" if args.mock else "device")
    with tempfile.TemporaryDirectory(prefix="pyvfio-bench-") as tmp:
        exe: Optional[str] = None
        if not args.no_c:
            exe, why = compile_c(tmp)
            if exe is None:
                res.note(f"C baseline skipped: {why}")

        if args.mock:
            say("benchmarks: pyvfio against pyvfio.mock (pyvfio column only)")
            why_not = mock_benchmarks(settings, res.cells)
            if why_not:
                res.note(f"mock benchmarks skipped: {why_not}")
            else:
                res.notes.append("every row but the pipe row ran against pyvfio.mock: it "
                                 "measures pyvfio's Python layers, not a kernel or a device")
        else:
            device_benchmarks(res, settings, args.bdf, exe)
        # last, when the machine has settled (a freshly booted guest has not)
        say("benchmarks: device-free ioctl layer")
        with contextlib.ExitStack() as stack:
            res.cells.update(measure(pipe_family(stack, True).runs, settings))
        if exe and "pipe_fionread" not in res.c_cells:
            res.add_c(exe, settings, ["--no-device"])

    rows = build_rows(res.cells, res.c_cells)
    print(format_table(rows))
    for note in res.notes:
        print(f"note: {note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": res.meta, "notes": res.notes, "rows": rows,
                       "cells": {k: v.as_json() for k, v in res.cells.items()},
                       "c": res.c_cells}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
