"""The pyvfio demo: a userspace driver for QEMU's edu device, step by step.

Run it on a machine with an edu device (``pyvfio lab demo`` boots one in a
QEMU guest).  It binds the device to vfio-pci, opens it through VFIO, maps a
DMA buffer into the IOMMU, lets the device's DMA engine copy data in and
out, takes the device's MSI on an eventfd, and puts everything back.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, List, Optional

from pyvfio import errors, pci
from pyvfio.core import syscalls
from pyvfio.vfio.open import open_device
from pyvfio.core.memory import DmaBuffer
from pyvfio.drivers import edu as edu_regs
from .drivers.edu import Edu


def main(argv: Optional[List[str]] = None, out: Callable[[str], None] = print) -> int:
    """Run the demo; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    found = pci.find(vendor=edu_regs.VENDOR_ID, device=edu_regs.DEVICE_ID)
    if not found:
        out("no edu device (1234:11e8) here: run `pyvfio lab demo`, which boots one")
        return 1
    dev = pci.get(argv[0]) if argv else found[0]
    t0 = time.perf_counter()
    def step(text: str) -> None:
        out(f"[{time.perf_counter() - t0:6.3f}s] {text}")
    syscalls.modprobe("vfio-pci")
    previous = dev.driver
    with dev.bound("vfio-pci"):
        step(f"bound {dev.name} to vfio-pci (was: {previous or 'no driver'}), "
             f"IOMMU group {dev.iommu_group}")
        with open_device(dev.name) as device:
            path = "iommufd + cdev" if device.path and "devices" in device.path else "container/group"
            step(f"opened through {path}: {device.info.num_regions} regions, "
                 f"{device.info.num_irqs} IRQ indexes")
            edu = Edu(device)
            major, minor = edu.version
            step(f"BAR0 {device.bar(0).size >> 10} KiB mapped: edu v{major}.{minor}, "
                 f"liveness(0x12345678) = {edu.liveness(0x12345678):#010x}")
            step(f"factorial engine: 10! = {edu.factorial(10)}")
            with DmaBuffer(2 * 4096) as buf:
                dma = device.dma
                if dma is None:
                    step("no IOMMU (no-IOMMU mode): this demo shows IOMMU-mapped DMA")
                    return 1
                m = dma.map(buf, dma_mask_bits=edu_regs.DMA_MASK_BITS)
                step(f"DMA buffer of {buf.size} bytes at vaddr {buf.vaddr:#x} mapped at "
                     f"IOVA {m.iova:#x} (usable IOVA ranges: "
                     f"{', '.join(f'{s:#x}-{e:#x}' for s, e in dma.iova_ranges())})")
                message = b"hello from userspace, via the device's DMA engine"
                buf.write(0, message)
                msi = device.msi
                msi.enable()
                edu.to_device(m.iova, len(message))
                step(f"DMA RAM -> device: {len(message)} bytes copied into the device buffer")
                edu.from_device(m.iova + 4096, len(message), irq=True)
                got = buf.read(4096, len(message))
                step(f"DMA device -> RAM: read back {got!r}")
                n = msi.wait(timeout=10)
                step(f"MSI received on eventfd {msi.eventfds[0]}: count {n}, "
                     f"device interrupt status {edu.irq_status:#x}")
                edu.ack_irq(edu.irq_status)
                if got != message:
                    step("FAILED: the bytes differ")
                    return 1
            step("DMA unmapped, MSI disabled, device closed")
    leaked = syscalls.open_fds()
    step(f"{dev.name} given back to {dev.driver or 'no driver'}; "
         f"open fds left: {len(leaked)}, mappings left: {len(syscalls.live_mappings())}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except errors.PyvfioError as exc:
        print(f"pyvfio demo: {exc}", file=sys.stderr)
        sys.exit(1)
