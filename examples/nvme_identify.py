"""Identify an NVMe controller from userspace: admin queue, DMA, MSI-X.

Run it in the lab (a guest with QEMU's emulated NVMe controller)::

    python3 -m pyvfio lab run --device nvme -- python3 examples/nvme_identify.py

The controller (the BDF given, or the first device of class 01:08:02) is
taken from its kernel driver and bound to vfio-pci; the driver in
:mod:`pyvfio.drivers.nvme` resets it, sets up the admin queue pair in DMA
memory, and sends Identify Controller, the active namespace list and
Identify Namespace, each completion signalled by MSI-X vector 0.  Then the
controller is shut down and given back to its original driver.

A controller whose namespaces are mounted (or otherwise in use) is refused:
taking it away from the kernel would pull the disk from under the system.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import List, Optional, Set

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyvfio import errors, pci  # noqa: E402
from pyvfio.vfio.open import open_device  # noqa: E402
from pyvfio.drivers.nvme import CLASS_CODE, Nvme  # noqa: E402


def namespaces_in_use(dev: pci.PciDevice) -> List[str]:
    """Block devices of this controller that are mounted, swapped on, or held by dm/md."""
    names: Set[str] = set()
    for ctrl in glob.glob(os.path.join(dev.path, "nvme", "nvme*")):
        for entry in os.listdir(ctrl):
            if entry.startswith("nvme") and "n" in entry[4:]:
                names.add(entry)
                names.update(p for p in os.listdir(os.path.join(ctrl, entry))
                             if p.startswith(entry + "p"))
    busy: Set[str] = set()
    for table in ("/proc/mounts", "/proc/swaps"):
        try:
            with open(table) as f:
                used = {line.split()[0] for line in f if line.strip()}
        except OSError:
            continue
        busy.update(n for n in names if f"/dev/{n}" in used)
    for n in names:
        if glob.glob(f"/sys/class/block/{n}/holders/*"):
            busy.add(n)
    return sorted(busy)


def pick(bdf: Optional[str]) -> pci.PciDevice:
    if bdf:
        return pci.get(bdf)
    found = pci.find(class_code=CLASS_CODE)
    if not found:
        raise errors.NotFoundError("no NVMe controller (PCI class 01:08:02) found",
                                   remedy="give one with --bdf, or run in the lab: "
                                          "python3 -m pyvfio lab run --device nvme -- ...")
    return found[0]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bdf", nargs="?", help="PCI address (default: the first NVMe controller)")
    ap.add_argument("--iommu", choices=("auto", "iommufd", "container"), default="auto",
                    help="how to open the device (default: iommufd when available)")
    ap.add_argument("--poll", action="store_true",
                    help="poll the completion queue instead of waiting for MSI-X")
    args = ap.parse_args(argv)

    try:
        dev = pick(args.bdf)
        busy = namespaces_in_use(dev)
        if busy:
            print(f"{dev.name}: refusing, in use by the system: {', '.join(busy)}",
                  file=sys.stderr)
            return 1
        original = dev.driver
        print(f"controller {dev.name} ({dev.vendor:04x}:{dev.device:04x}), "
              f"driver {original or 'none'}")
        with dev.bound("vfio-pci"):
            with open_device(dev.name, iommu=args.iommu) as device:
                path = "iommufd" if device.dev_id is not None else "container"
                with Nvme(device, interrupts=not args.poll) as ctrl:
                    major, minor, ter = ctrl.version
                    info = ctrl.identify_controller()
                    nsids = ctrl.active_namespaces()
                    ns1 = ctrl.identify_namespace(1) if 1 in nsids else None
                    print(f"  through     vfio-pci, {path}, NVMe {major}.{minor}.{ter}, "
                          f"doorbell stride {ctrl.cap.doorbell_stride}, "
                          f"admin queue depth {ctrl.depth}")
                    print(f"  vendor      {info.vendor_id:#06x} "
                          f"(subsystem {info.subsystem_vendor_id:#06x})")
                    print(f"  model       {info.model}")
                    print(f"  serial      {info.serial}")
                    print(f"  firmware    {info.firmware}")
                    print(f"  namespaces  {info.namespaces} (active: "
                          f"{', '.join(map(str, nsids)) or 'none'})")
                    if ns1 is not None:
                        print(f"  namespace 1 {ns1.size} blocks of {ns1.block_size} bytes "
                              f"= {ns1.size_bytes / (1 << 20):g} MiB "
                              f"(LBA format {ns1.lba_format_index})")
                    else:
                        print("  namespace 1 not active")
                    irqs = ("polled" if args.poll
                            else f"{ctrl.interrupts} MSI-X interrupts on vector 0")
                    print(f"  completions {irqs}")
        print(f"controller shut down; driver {dev.driver or 'none'} again")
    except errors.PyvfioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
