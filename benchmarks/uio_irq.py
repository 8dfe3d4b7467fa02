"""Interrupt round trip on one NVMe controller: uio_msi against VFIO MSI-X, and against C.

One operation: write an admin command (Get Features, Number of Queues) and
ring the doorbell; the controller completes it and sends MSI-X vector 0;
the eventfd wakes the waiting process, which reaps the completion.  The
same driver code (:class:`pyvfio.drivers.nvme.Nvme`) runs on a
:class:`pyvfio.uio.UioDevice` bound to ``uio_msi`` and on a VFIO device
bound to ``vfio-pci`` (no-IOMMU mode: the guest has no IOMMU, so both paths
give the controller physical addresses); ``uio_irq_bench.c`` does the same
through uio_msi in C.

In the lab (the full kernel without IOMMU, with an nvme device)::

    python3 -m pyvfio lab run --kernel full --iommu off --device nvme -- \\
        python3 benchmarks/uio_irq.py
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from pyvfio import pci, uio                          # noqa: E402
from pyvfio.drivers.nvme import OPC_GET_FEATURES, Nvme   # noqa: E402

NVME_CLASS = 0x010802
FID_NUMBER_OF_QUEUES = 0x07


def _time_ops(ctrl: Nvme, iters: int, reps: int) -> List[float]:
    """ns per round trip, one value per repetition (after a warm-up repetition)."""
    out = []
    for r in range(reps + 1):
        t0 = time.perf_counter_ns()
        for _ in range(iters):
            ctrl.admin(OPC_GET_FEATURES, cdw10=FID_NUMBER_OF_QUEUES)
        if r:
            out.append((time.perf_counter_ns() - t0) / iters)
    return out


def bench_uio(dev: pci.PciDevice, iters: int, reps: int) -> List[float]:
    with dev.bound("uio_msi"), uio.open_uio(dev.name) as u:
        with Nvme(u) as ctrl:
            before = ctrl.interrupts
            samples = _time_ops(ctrl, iters, reps)
            assert ctrl.interrupts - before == iters * (reps + 1)   # one MSI-X per command
    return samples


def bench_vfio(dev: pci.PciDevice, iters: int, reps: int) -> List[float]:
    from pyvfio.vfio.open import open_device
    subprocess.run(["modprobe", "vfio", "enable_unsafe_noiommu_mode=1"], check=False)
    param = "/sys/module/vfio/parameters/enable_unsafe_noiommu_mode"
    if os.path.exists(param):
        with open(param, "w") as f:
            f.write("1")
    with dev.bound("vfio-pci"):
        with open_device(dev.name, iommu="container", allow_noiommu=True) as d:
            with Nvme(d) as ctrl:
                before = ctrl.interrupts
                samples = _time_ops(ctrl, iters, reps)
                assert ctrl.interrupts - before == iters * (reps + 1)
    return samples


def bench_c(dev: pci.PciDevice, iters: int, reps: int) -> List[float]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler")
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "uio_irq_bench"
        subprocess.run([cc, "-O2", "-Wall", "-I", str(REPO / "kernel_headers"), "-o", str(exe),
                        str(HERE / "uio_irq_bench.c")], check=True)
        with dev.bound("uio_msi"):
            node = uio.find(dev.name)
            config = os.path.join("/sys/bus/pci/devices", dev.name, "config")
            out = subprocess.run([str(exe), node.dev_path, config, str(iters), str(reps)],
                                 check=True, capture_output=True, text=True).stdout
    return [float(line.split()[1]) for line in out.splitlines() if line.startswith("ns_per_op")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=300, help="round trips per repetition")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions")
    ap.add_argument("--json", metavar="FILE", help="also write the samples here")
    args = ap.parse_args()
    found = pci.find(class_code=NVME_CLASS)
    if not found:
        print("no NVMe controller: nothing to measure")
        return 0
    dev = found[0]
    warnings.simplefilter("ignore", uio.UioDmaWarning)
    results: Dict[str, List[float]] = {}
    for name, fn in (("uio_msi", bench_uio), ("vfio", bench_vfio), ("C uio_msi", bench_c)):
        try:
            results[name] = fn(dev, args.iters, args.reps)
        except Exception as exc:          # report what could be measured
            print(f"{name}: not measured: {exc}", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in results.items() if v}
    print(f"NVMe admin round trip (doorbell -> MSI-X vector 0 -> eventfd wake -> reap), "
          f"{dev.name}, kernel {os.uname().release}, {args.reps} x {args.iters}")
    for name, ns in med.items():
        print(f"  {name:10s} {ns / 1000:9.1f} us per round trip (median of {args.reps})")
    if "uio_msi" in med and "vfio" in med:
        print(f"  ratio uio_msi / VFIO MSI-X: {med['uio_msi'] / med['vfio']:.3f}")
    if "uio_msi" in med and "C uio_msi" in med:
        print(f"  ratio pyvfio / C (uio_msi): {med['uio_msi'] / med['C uio_msi']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples_ns": results, "median_ns": med, "device": dev.name,
                       "kernel": os.uname().release}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
