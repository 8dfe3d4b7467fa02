"""``pyvfio ls``, ``pyvfio bind`` and ``pyvfio unbind``: PCI devices and their drivers."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from pyvfio import errors, pci
from pyvfio.cli import reports_errors
from pyvfio.core import syscalls
from pyvfio.core.sysfs import host

__all__ = ["register", "viability", "device_record", "device_users", "iommu_off_note"]


def _hex_id(text: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a hexadecimal ID: {text!r}") from None
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"ID out of range 0..ffff: {text!r}")
    return value


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``ls``, ``bind`` and ``unbind``."""
    ls = subparsers.add_parser(
        "ls", help="list PCI devices with their driver, IOMMU group and VFIO viability",
        description="List PCI functions: address, vendor:device, class, driver, IOMMU "
                    "group, and whether VFIO can claim the group (every device in it "
                    "unbound or bound to vfio-pci, pci-stub or pcieport).")
    ls.add_argument("--json", action="store_true",
                    help="print a JSON list of objects (IDs as hexadecimal strings)")
    ls.add_argument("--vendor", type=_hex_id, metavar="HEX", help="only this vendor ID")
    ls.add_argument("--device", type=_hex_id, metavar="HEX", help="only this device ID")
    ls.add_argument("--driver", metavar="NAME", help="only devices bound to this driver")
    ls.set_defaults(func=reports_errors(_ls))

    bind = subparsers.add_parser(
        "bind", help="bind a PCI device to vfio-pci (or another driver)",
        description="Bind a PCI function to a driver through driver_override, unbinding "
                    "it from its current driver; the driver's module is loaded if needed.")
    bind.add_argument("bdf", metavar="BDF", help="PCI address, e.g. 0000:01:00.0 or 01:00.0")
    bind.add_argument("--driver", default="vfio-pci",
                      help="driver to bind (default: vfio-pci; uio_pci_generic or uio_msi "
                           "for UIO, without IOMMU isolation)")
    bind.add_argument("--force", action="store_true",
                      help="bind even though the device is in use (a network interface with "
                           "an address or route, a mounted or swapped-on disk)")
    bind.set_defaults(func=reports_errors(_bind))

    unbind = subparsers.add_parser(
        "unbind", help="unbind a PCI device from its driver",
        description="Detach a PCI function from its driver.  driver_override stays; "
                    "--reprobe clears it and lets the kernel bind the driver that matches "
                    "the device's IDs (giving it back to its host driver).")
    unbind.add_argument("bdf", metavar="BDF", help="PCI address, e.g. 0000:01:00.0 or 01:00.0")
    unbind.add_argument("--reprobe", action="store_true",
                        help="clear driver_override and let the kernel pick a driver")
    unbind.set_defaults(func=reports_errors(_unbind))


def viability(dev: pci.PciDevice) -> str:
    """``viable``, ``not viable: <BDF> bound to <driver>, …`` or ``-`` without a group."""
    if dev.iommu_group is None:
        return "-"
    blockers = dev.group_blockers()
    if not blockers:
        return "viable"
    return "not viable: " + ", ".join(f"{name} bound to {drv}" for name, drv in blockers)


def uio_bindings() -> Dict[str, str]:
    """PCI address -> ``uioN`` for every function a UIO driver drives."""
    from pyvfio.uio import nodes
    return {n.pci: n.node for n in nodes() if n.pci}


def driver_text(dev: pci.PciDevice, uio: Dict[str, str]) -> str:
    """The DRIVER cell: ``vfio-pci``, ``uio_msi (uio1)``, or ``-``."""
    driver = dev.driver
    if driver is None:
        return "-"
    node = uio.get(dev.name)
    return f"{driver} ({node})" if node else driver


def device_record(dev: pci.PciDevice, uio: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The JSON object ``pyvfio ls --json`` prints for one device."""
    group = dev.iommu_group
    blockers = dev.group_blockers() if group is not None else []
    physfn = dev.physfn
    return {
        "address": dev.name,
        "vendor": f"{dev.vendor:04x}",
        "device": f"{dev.device:04x}",
        "subsystem_vendor": f"{dev.subsystem_vendor:04x}",
        "subsystem_device": f"{dev.subsystem_device:04x}",
        "class": f"{dev.class_code:06x}",
        "revision": f"{dev.revision:02x}",
        "driver": dev.driver,
        "driver_override": dev.driver_override,
        "uio": (uio or {}).get(dev.name),
        "iommu_group": group,
        "viable": None if group is None else not blockers,
        "blockers": [{"address": name, "driver": drv} for name, drv in blockers],
        "numa_node": dev.numa_node,
        "physfn": physfn.name if physfn is not None else None,
        "sriov_numvfs": dev.sriov_numvfs,
        "sriov_totalvfs": dev.sriov_totalvfs,
    }


def _kernel_children(devpath: str, max_depth: int = 8) -> List[Tuple[str, str]]:
    """(subsystem, name) of the net and block devices below a PCI function in sysfs."""
    found: List[Tuple[str, str]] = []
    base_depth = devpath.rstrip("/").count("/")
    for root, dirs, _ in os.walk(devpath):
        if root.count("/") - base_depth >= max_depth:
            dirs[:] = []
        link = os.path.join(root, "subsystem")
        if root != devpath and os.path.islink(link):
            subsystem = os.path.basename(os.readlink(link))
            if subsystem in ("net", "block"):
                found.append((subsystem, os.path.basename(root)))
    return found


def _read_lines(path: str) -> List[str]:
    try:
        return syscalls.read_file(path).decode(errors="replace").splitlines()
    except OSError:
        return []


def device_users(dev: pci.PciDevice) -> List[str]:
    """What on this host uses ``dev`` through its current driver (empty: nothing found).

    A network interface in use has an IPv4 route (``/proc/net/route``) or a
    global IPv6 address (``/proc/net/if_inet6``); a disk in use, or one of its
    partitions, is mounted (``/proc/self/mounts``), swapped on (``/proc/swaps``)
    or held by device-mapper/md (``holders/``).  Unbinding either takes it away
    from the host, as dpdk-devbind warns.
    """
    h = host()
    users: List[str] = []
    children = _kernel_children(dev.path)
    routes = {line.split()[0] for line in _read_lines(h.proc_path("net", "route"))[1:]
              if line.split()}
    inet6: Dict[str, List[str]] = {}
    for line in _read_lines(h.proc_path("net", "if_inet6")):
        f = line.split()
        if len(f) == 6 and int(f[3], 16) not in (0x10, 0x20):     # not host or link scope
            inet6.setdefault(f[5], []).append(":".join(f[0][i:i + 4] for i in range(0, 32, 4)))
    mounts: Dict[str, str] = {}
    for line in _read_lines(h.proc_path("self", "mounts")):
        f = line.split()
        if len(f) >= 2 and f[0].startswith("/dev/"):
            mounts.setdefault(os.path.basename(f[0]), f[1].replace("\\040", " "))
    swaps = {os.path.basename(line.split()[0])
             for line in _read_lines(h.proc_path("swaps"))[1:] if line.split()}
    for subsystem, name in children:
        if subsystem == "net":
            if name in routes:
                users.append(f"network interface {name} has IPv4 routes")
            elif name in inet6:
                users.append(f"network interface {name} has address {inet6[name][0]}")
            continue
        if name in mounts:
            users.append(f"disk {name} is mounted on {mounts[name]}")
        if name in swaps:
            users.append(f"disk {name} is in use as swap")
        try:
            held = sorted(os.listdir(h.sys_path("class", "block", name, "holders")))
        except OSError:
            held = []
        if held:
            users.append(f"disk {name} is held by {', '.join(held)}")
    return users


def iommu_off_note() -> Optional[str]:
    """The note `ls` prints when the host has no IOMMU groups."""
    if pci.host_has_iommu_groups():
        return None
    return "note: " + pci.IOMMU_OFF_REMEDY


def _ls(args: argparse.Namespace) -> int:
    found = pci.find(vendor=args.vendor, device=args.device, driver=args.driver)
    uio = uio_bindings()
    if args.json:
        json.dump([device_record(d, uio) for d in found], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    rows: List[List[str]] = [["BDF", "VENDOR:DEVICE", "CLASS", "DRIVER", "GROUP", "VFIO"]]
    for dev in found:
        group = dev.iommu_group
        rows.append([dev.name, f"{dev.vendor:04x}:{dev.device:04x}", f"{dev.class_code:06x}",
                     driver_text(dev, uio), "-" if group is None else str(group),
                     viability(dev)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths)] + [row[-1]]
        print("  ".join(cells).rstrip())
    note = iommu_off_note()
    if note:
        print(note, file=sys.stderr)
    return 0


def _bind(args: argparse.Namespace) -> int:
    dev = pci.get(args.bdf)
    if "vfio" in args.driver and dev.is_bridge:
        raise errors.InvalidArgumentError(
            "not an endpoint function", device=dev.name, remedy=dev.bind_remedy(args.driver))
    if dev.driver not in (None, args.driver) and not args.force:
        users = device_users(dev)
        if users:
            raise errors.BusyError(
                f"in use by the host through {dev.driver}: " + "; ".join(users),
                device=dev.name, op="bind",
                remedy="stop using it first (`ip link set DEV down`, `ip addr flush DEV`, "
                       "`umount`), or pass --force to take it away anyway")
    previous = dev.bind(args.driver)
    if previous == args.driver:
        print(f"{dev.name}: already bound to {args.driver}")
    else:
        print(f"{dev.name}: {previous or '(no driver)'} -> {args.driver}")
    if "vfio" in args.driver:
        note: Optional[str] = None
        if dev.iommu_group is None:
            note = ("the device has no IOMMU group: VFIO cannot open it; "
                    + (pci.IOMMU_OFF_REMEDY if not pci.host_has_iommu_groups()
                       else "its bus is not behind the IOMMU"))
        else:
            blockers = dev.group_blockers()
            if blockers:
                note = (f"IOMMU group {dev.iommu_group} is not viable yet: "
                        + ", ".join(f"{n} bound to {d} (`pyvfio bind {n}`)"
                                    for n, d in blockers))
        if note:
            print(f"note: {note}", file=sys.stderr)
    if args.driver in ("uio_pci_generic", "uio_msi"):
        try:
            node = uio_bindings().get(dev.name)
        except errors.PyvfioError:
            node = None
        if node:
            print(f"{dev.name}: /dev/{node}")
        print(f"note: {args.driver} gives user space the device without an IOMMU: its DMA "
              "is not isolated and can reach all of memory", file=sys.stderr)
    return 0


def _unbind(args: argparse.Namespace) -> int:
    dev = pci.get(args.bdf)
    if args.reprobe:
        previous = dev.driver
        now = dev.reprobe()
        print(f"{dev.name}: {previous or '(no driver)'} -> {now or '(no driver)'}")
        return 0
    previous = dev.unbind()
    if previous is None:
        print(f"{dev.name}: not bound to a driver")
        return 0
    print(f"{dev.name}: {previous} -> (no driver)")
    override = dev.driver_override
    if override is not None:
        print(f"note: driver_override is still {override}; `pyvfio unbind --reprobe "
              f"{dev.name}` hands the device back to the driver matching its IDs",
              file=sys.stderr)
    return 0
