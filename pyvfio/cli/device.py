"""``pyvfio info`` and ``pyvfio reset``: what VFIO says of a device, and resetting it."""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List

from pyvfio import errors, pci
from pyvfio.cli import reports_errors
from pyvfio.cli.pci import device_record
from pyvfio.vfio.irq import INDEX_NAMES
from pyvfio.core.uapi import lib

__all__ = ["register", "device_report"]

_REGION_NAMES = {lib.VFIO_PCI_BAR0_REGION_INDEX + i: f"BAR{i}" for i in range(6)}
_REGION_NAMES.update({lib.VFIO_PCI_ROM_REGION_INDEX: "ROM",
                      lib.VFIO_PCI_CONFIG_REGION_INDEX: "config",
                      lib.VFIO_PCI_VGA_REGION_INDEX: "VGA"})
_FLAG_NAMES = ((lib.VFIO_REGION_INFO_FLAG_READ, "read"), (lib.VFIO_REGION_INFO_FLAG_WRITE, "write"),
               (lib.VFIO_REGION_INFO_FLAG_MMAP, "mmap"), (lib.VFIO_REGION_INFO_FLAG_CAPS, "caps"))


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``info`` and ``reset``."""
    info = subparsers.add_parser(
        "info", help="regions, IRQs and PCI capabilities of a device bound to vfio-pci",
        description="Open the device through VFIO and print its regions (with their "
                    "capabilities), interrupt indexes and PCI capabilities.")
    info.add_argument("bdf", metavar="BDF")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.add_argument("--iommu", choices=("auto", "iommufd", "container"), default="auto")
    info.set_defaults(func=reports_errors(_info))
    reset = subparsers.add_parser("reset", help="reset a device bound to vfio-pci "
                                                "(VFIO_DEVICE_RESET, or a hot reset with --bus)")
    reset.add_argument("bdf", metavar="BDF")
    reset.add_argument("--bus", action="store_true",
                       help="secondary bus reset (VFIO_DEVICE_PCI_HOT_RESET)")
    reset.set_defaults(func=reports_errors(_reset))


def _open(args: argparse.Namespace) -> Any:
    from pyvfio.vfio.open import open_device
    dev = pci.get(args.bdf)
    dev.check_bound("vfio-pci")
    return dev, open_device(dev.name, iommu=getattr(args, "iommu", "auto"),
                            allow_noiommu=True)


def device_report(device: Any) -> Dict[str, Any]:
    """Regions, IRQs and PCI capabilities of an open device, as plain data."""
    regions: List[Dict[str, Any]] = []
    for i in range(device.info.num_regions):
        try:
            r = device.region(i)
        except errors.InvalidArgumentError:      # e.g. the VGA region of a non-VGA device
            continue
        if not r.size:
            continue
        info = r.info
        regions.append({
            "index": i, "name": _REGION_NAMES.get(i, f"region {i}"), "size": r.size,
            "offset": r.offset, "flags": [n for bit, n in _FLAG_NAMES if r.flags & bit],
            "sparse_mmap": info.sparse_areas, "type": info.type,
            "msix_mappable": info.msix_mappable})
    irqs = []
    for i in range(device.info.num_irqs):
        try:
            q = device.irq(i)
        except errors.InvalidArgumentError:      # e.g. ERR on a conventional PCI device
            continue
        irqs.append({"index": i, "name": INDEX_NAMES.get(i, str(i)), "count": q.count,
                     "eventfd": q.info.eventfd, "maskable": q.info.maskable,
                     "automasked": q.info.automasked})
    report: Dict[str, Any] = {"device": device.name, "path": device.path,
                              "flags": device.info.flags, "reset": device.info.can_reset,
                              "regions": regions, "irqs": irqs}
    if device.info.is_pci:
        report["pci"] = device.config.describe()
    return report


def _info(args: argparse.Namespace) -> int:
    dev, device = _open(args)
    with device:
        report = device_report(device)
        report["sysfs"] = device_record(dev)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['device']}  via {report['path']}  reset: {'yes' if report['reset'] else 'no'}")
    print("regions:")
    for r in report["regions"]:
        extra = []
        if r["sparse_mmap"] is not None:
            extra.append("sparse mmap " + ", ".join(f"{o:#x}+{s:#x}" for o, s in r["sparse_mmap"]))
        if r["type"]:
            extra.append(f"type {r['type'][0]:#x}/{r['type'][1]:#x}")
        if r["msix_mappable"]:
            extra.append("MSI-X mappable")
        print(f"  {r['name']:7} {r['size']:#12x} bytes at {r['offset']:#x}  "
              f"{','.join(r['flags'])}{'  ' + '; '.join(extra) if extra else ''}")
    print("interrupts:")
    for q in report["irqs"]:
        traits = [t for t in ("eventfd", "maskable", "automasked") if q[t]]
        print(f"  {q['name']:6} {q['count']:4} vectors  {','.join(traits)}")
    for line in report.get("pci", ()):
        print(line if line.startswith(" ") else "  " + line)
    return 0


def _reset(args: argparse.Namespace) -> int:
    _, device = _open(args)
    with device:
        if args.bus:
            affected = device.hot_reset_info()
            device.hot_reset()
            print(f"{device.name}: bus reset ({', '.join(d.address for d in affected)})")
        else:
            device.reset()
            print(f"{device.name}: reset")
    return 0
