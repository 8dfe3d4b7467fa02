"""A fake sysfs tree and ``/dev`` directory matching the mock's devices.

The layout is the kernel's: devices under ``sys/devices/pci0000:00`` (behind a
root port when not on bus 0), links from ``sys/bus/pci/devices``, the
driver's directory under ``sys/bus/pci/drivers``, ``iommu_group`` links into
``sys/kernel/iommu_groups/N/devices`` and, with device cdevs, ``vfio-dev/vfioN``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

from pyvfio.mock.pci.function import HostFunction, PciFunction
from pyvfio.mock.pci.sysfs import SysfsTree

put = SysfsTree.put
link = SysfsTree.link

MockKernel = Any     # the kernel, as families see it (pyvfio.mock.core.family.KernelState)

__all__ = ["build"]

VFIO_DEV_MAJOR = 236
VFIO_GROUP_MAJOR = 237


def _bridge_of(bus: int) -> str:
    """The root port above secondary bus ``bus`` (a q35-like topology)."""
    n = bus - 1
    return f"0000:00:{0x1c + n // 8:02x}.{n % 8}"


def _device_dir(sysfs: str, segment: int, bus: int, bdf: str) -> str:
    root = os.path.join(sysfs, "devices", f"pci{segment:04x}:00")
    if bus == 0:
        return os.path.join(root, bdf)
    return os.path.join(root, _bridge_of(bus).replace("0000:", f"{segment:04x}:", 1), bdf)


def _common_files(d: str, bdf: str, vendor: int, device: int, sub_vendor: int, sub_device: int,
                  class_code: int, revision: int, driver: Optional[str], config: bytes) -> None:
    put(os.path.join(d, "vendor"), f"0x{vendor:04x}\n")
    put(os.path.join(d, "device"), f"0x{device:04x}\n")
    put(os.path.join(d, "subsystem_vendor"), f"0x{sub_vendor:04x}\n")
    put(os.path.join(d, "subsystem_device"), f"0x{sub_device:04x}\n")
    put(os.path.join(d, "class"), f"0x{class_code:06x}\n")
    put(os.path.join(d, "revision"), f"0x{revision:02x}\n")
    put(os.path.join(d, "numa_node"), "-1\n")
    put(os.path.join(d, "driver_override"), "(null)\n")
    modalias = (f"pci:v{vendor:08X}d{device:08X}sv{sub_vendor:08X}sd{sub_device:08X}"
                f"bc{class_code >> 16:02X}sc{(class_code >> 8) & 0xFF:02X}i{class_code & 0xFF:02X}")
    put(os.path.join(d, "modalias"), modalias + "\n")
    uevent = ""
    if driver:
        uevent += f"DRIVER={driver}\n"
    uevent += (f"PCI_CLASS={class_code:X}\nPCI_ID={vendor:04X}:{device:04X}\n"
               f"PCI_SUBSYS_ID={sub_vendor:04X}:{sub_device:04X}\nPCI_SLOT_NAME={bdf}\n"
               f"MODALIAS={modalias}\n")
    put(os.path.join(d, "uevent"), uevent)
    with open(os.path.join(d, "config"), "wb") as f:
        f.write(config)


def build(kernel: "MockKernel") -> None:
    """Create the vfio-pci view of the fake sysfs and /dev for the kernel's configuration."""
    sysfs, devroot = kernel.host.sysfs, kernel.host.dev
    os.makedirs(os.path.join(sysfs, "bus", "pci", "devices"), exist_ok=True)
    os.makedirs(os.path.join(sysfs, "kernel", "iommu_groups"), exist_ok=True)
    drivers = os.path.join(sysfs, "bus", "pci", "drivers")
    vfio_drv = os.path.join(drivers, "vfio-pci")
    for name in ("bind", "unbind", "new_id", "remove_id"):
        put(os.path.join(vfio_drv, name), "")
    put(os.path.join(sysfs, "module", "vfio", "parameters", "enable_unsafe_noiommu_mode"),
           "Y\n" if kernel.vfio.noiommu else "N\n")
    put(os.path.join(sysfs, "module", "vfio_pci", "parameters", "nointxmask"), "N\n")
    if kernel.iommu.kind == "type1":
        params = os.path.join(sysfs, "module", "vfio_iommu_type1", "parameters")
        put(os.path.join(params, "dma_entry_limit"), f"{kernel.vfio.dma_entry_limit}\n")
        put(os.path.join(params, "allow_unsafe_interrupts"), "N\n")
        os.makedirs(os.path.join(sysfs, "class", "iommu", "dmar0"), exist_ok=True)
    elif kernel.iommu.kind == "spapr":
        os.makedirs(os.path.join(sysfs, "module", "vfio_iommu_spapr_tce"), exist_ok=True)

    bridges: Dict[str, int] = {}
    next_group = max([g for g in kernel.vfio.groups] + [0]) + 1
    functions: List[Any] = list(kernel.pci.all_functions())
    for f in functions:
        if getattr(f, "bus", 0) and _bridge_of(f.bus) not in bridges:
            bridges[_bridge_of(f.bus)] = next_group
            next_group += 1
    for bdf, bridge_group in bridges.items():
        d = os.path.join(sysfs, "devices", "pci0000:00", bdf)
        cfg = bytearray(64)
        cfg[0:4] = (0x1B36 | (0x000C << 16)).to_bytes(4, "little")
        cfg[0x0E] = 0x01
        _common_files(d, bdf, 0x1B36, 0x000C, 0x1B36, 0x0000, 0x060400, 0, "pcieport", bytes(cfg))
        link(os.path.join(sysfs, "bus", "pci", "devices", bdf), d)
        link(os.path.join(d, "driver"), os.path.join(drivers, "pcieport"))
        link(os.path.join(drivers, "pcieport", bdf), d)
        _group_links(sysfs, kernel, bridge_group, d, bdf)

    for f in functions:
        _function(kernel, f)

    put(os.path.join(devroot, "vfio", "vfio"), "")
    if kernel.vfio.cdev:
        os.makedirs(os.path.join(devroot, "vfio", "devices"), exist_ok=True)
    for group in kernel.vfio.groups.values():
        if group.devices:
            put(os.path.join(devroot, "vfio", group.node_name), "")
            vdir = os.path.join(sysfs, "devices", "virtual", "vfio", group.node_name)
            put(os.path.join(vdir, "dev"), f"{VFIO_GROUP_MAJOR}:{group.id}\n")
            link(os.path.join(sysfs, "class", "vfio", group.node_name), vdir)
    for dev in kernel.vfio.devices:
        if kernel.vfio.cdev:
            put(os.path.join(devroot, "vfio", "devices", f"vfio{dev.index}"), "")


def _group_links(sysfs: str, kernel: "MockKernel", group: int, devdir: str, bdf: str) -> None:
    gdir = os.path.join(sysfs, "kernel", "iommu_groups", str(group))
    link(os.path.join(gdir, "devices", bdf), devdir)
    link(os.path.join(devdir, "iommu_group"), gdir)
    if not os.path.exists(os.path.join(gdir, "type")):
        g = kernel.vfio.groups.get(group)
        if g is not None and g.noiommu:
            put(os.path.join(gdir, "name"), "vfio-noiommu\n")
            put(os.path.join(gdir, "type"), "unknown\n")
            put(os.path.join(gdir, "reserved_regions"), "")
        else:
            put(os.path.join(gdir, "type"), "DMA-FQ\n" if kernel.iommu.kind == "type1" else "DMA\n")
            text = "".join(f"0x{s:016x} 0x{e:016x} msi\n" for s, e in kernel.iommu.reserved_regions())
            put(os.path.join(gdir, "reserved_regions"), text)


def _function(kernel: "MockKernel", f: Any) -> None:
    sysfs = kernel.host.sysfs
    drivers = os.path.join(sysfs, "bus", "pci", "drivers")
    if isinstance(f, PciFunction):
        vdev = kernel.vfio.vfio_device(f.bdf)
        driver = "vfio-pci" if vdev is not None else None
        d = _device_dir(sysfs, f.segment, f.bus, f.bdf)
        _common_files(d, f.bdf, f.vendor_id, f.device_id, f.subsystem_vendor_id, f.subsystem_id,
                      f.class_code, f.revision, driver, bytes(f.config))
        put(os.path.join(d, "irq"), "16\n" if f.interrupt_pin else "0\n")
        put(os.path.join(d, "msi_bus"), "1\n")
        put(os.path.join(d, "enable"), "0\n")
        lines = []
        for i in range(13):
            spec = f.bars.get(i) if i < 6 else None
            if spec is not None:
                flags = 0x40200 | (0x100000 if spec.mem64 else 0) | (0x2000 if spec.prefetch else 0)
                lines.append(f"0x{spec.address:016x} 0x{spec.address + spec.size - 1:016x} 0x{flags:016x}")
                with open(os.path.join(d, f"resource{i}"), "wb") as r:
                    r.truncate(spec.size)
            else:
                lines.append(f"0x{0:016x} 0x{0:016x} 0x{0:016x}")
        put(os.path.join(d, "resource"), "\n".join(lines) + "\n")
        if vdev is not None and vdev.reset_works:
            put(os.path.join(d, "reset_method"), "flr\n" if f.pcie_cap else "bus\n")
        if vdev is not None and kernel.vfio.cdev:
            vd = os.path.join(d, "vfio-dev", f"vfio{vdev.index}")
            put(os.path.join(vd, "dev"), f"{VFIO_DEV_MAJOR}:{vdev.index}\n")
            put(os.path.join(vd, "uevent"), f"MAJOR={VFIO_DEV_MAJOR}\nMINOR={vdev.index}\n"
                                               f"DEVNAME=vfio/devices/vfio{vdev.index}\n")
            link(os.path.join(sysfs, "class", "vfio-dev", f"vfio{vdev.index}"), vd)
        group, bdf = f.group, f.bdf
    else:
        hf: "HostFunction" = f
        driver = hf.driver
        d = _device_dir(sysfs, hf.segment, hf.bus, hf.bdf)
        cfg = bytearray(64)
        cfg[0:4] = (hf.vendor | (hf.device << 16)).to_bytes(4, "little")
        _common_files(d, hf.bdf, hf.vendor, hf.device, hf.vendor, 0, hf.class_code, 0, driver, bytes(cfg))
        group, bdf = hf.group, hf.bdf
    link(os.path.join(sysfs, "bus", "pci", "devices", bdf), d)
    if driver:
        link(os.path.join(d, "driver"), os.path.join(drivers, driver))
        link(os.path.join(drivers, driver, bdf), d)
    if group is not None and (kernel.iommu.kind != "none" or kernel.vfio.noiommu):
        _group_links(sysfs, kernel, group, d, bdf)
