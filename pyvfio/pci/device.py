"""PCI functions as sysfs shows them: identity, binding to drivers, SR-IOV.

The kernel publishes every PCI function under ``/sys/bus/pci/devices/<BDF>``:
its IDs, its driver (the ``driver`` symlink), its IOMMU group (the
``iommu_group`` symlink), its SR-IOV state and its BARs.  Binding goes through
the same tree: ``driver_override`` names the only driver allowed to claim the
function, ``drivers/<drv>/unbind`` detaches it from its driver, and
``drivers_probe`` asks the bus to attach a driver again.

Paths are below the roots of :func:`pyvfio.core.sysfs.host`, so that a fake
tree (the mock kernel's) can stand in for the machine's.
"""
from __future__ import annotations

import contextlib
import errno as _errno
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple, Union, cast

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.sysfs import Host, host, link_name, read_text, write_attr
from pyvfio.pci.address import PciAddress, is_bdf, spelled
from pyvfio.pci.iommu_group import (IOMMU_GROUPS, group_blockers,
                                    group_entries, group_number, not_viable_error,
                                    vfio_cdev_path, vfio_group_path)

__all__ = ["PciDevice", "Resource", "devices", "find", "get"]

PCI_DEVICES = "bus/pci/devices"
PCI_DRIVERS = "bus/pci/drivers"
PCI_PROBE = "bus/pci/drivers_probe"

#: The module to load for a driver, where its name is not the driver's.
_MODULE_OF_DRIVER: Dict[str, str] = {}

_NULL = "(null)"

# resource flags (include/linux/ioport.h)
IORESOURCE_IO = 0x00000100
IORESOURCE_MEM = 0x00000200
IORESOURCE_PREFETCH = 0x00002000
IORESOURCE_MEM_64 = 0x00100000


@dataclass(frozen=True)
class Resource:
    """One line of the ``resource`` file: a BAR (0-5), the ROM (6) or a bridge window."""

    index: int
    start: int
    end: int
    flags: int

    @property
    def size(self) -> int:
        """Length in bytes; 0 for an unused resource."""
        return self.end - self.start + 1 if self.end else 0

    @property
    def is_io(self) -> bool:
        """An I/O-port resource."""
        return bool(self.flags & IORESOURCE_IO)

    @property
    def is_mem(self) -> bool:
        """A memory resource."""
        return bool(self.flags & IORESOURCE_MEM)

    @property
    def prefetchable(self) -> bool:
        """A prefetchable memory BAR."""
        return bool(self.flags & IORESOURCE_PREFETCH)

    @property
    def is_64bit(self) -> bool:
        """A 64-bit memory BAR (it uses two BAR slots)."""
        return bool(self.flags & IORESOURCE_MEM_64)


# --------------------------------------------------------------------------- devices
class PciDevice:
    """One PCI function, read live from sysfs (``/sys/bus/pci/devices/<BDF>``)."""

    def __init__(self, address: Union[str, PciAddress], *, on: Optional[Host] = None) -> None:
        try:
            self.address = PciAddress.parse(address)
        except errors.InvalidArgumentError:
            shown = spelled(address) if isinstance(address, str) else None
            if shown is None:
                raise
            # well formed but out of range (slot > 1f): no such device can exist
            raise errors.NotFoundError(
                f"no PCI device {shown}",
                remedy="`pyvfio ls` lists the PCI devices present (slots run 00 to 1f)"
                ) from None
        #: The machine whose sysfs this device lives in (the current :func:`host` by default).
        self.host = on or host()
        self.path = self.host.sys_path(PCI_DEVICES, str(self.address))
        #: (driver, driver_override) before the first :meth:`bind`, for :meth:`restore`.
        self._saved: Optional[Tuple[Optional[str], Optional[str]]] = None
        if not os.path.isdir(self.path):
            raise errors.NotFoundError(
                f"no PCI device {self.address}",
                remedy="`pyvfio ls` lists the PCI devices present")

    # ----------------------------------------------------------------- identity
    @property
    def name(self) -> str:
        """The address as the kernel writes it, e.g. ``0000:00:1f.3``."""
        return str(self.address)

    def __repr__(self) -> str:
        return f"PciDevice({self.name!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PciDevice):
            return NotImplemented
        return (self.address, self.host) == (other.address, other.host)

    def __hash__(self) -> int:
        return hash((self.address, self.host))

    def _attr_path(self, attr: str) -> str:
        return os.path.join(self.path, attr)

    def _text(self, attr: str) -> str:
        text = read_text(self._attr_path(attr), self.name)
        if text is None:
            raise errors.NotFoundError(
                f"no {attr} in sysfs (was the device removed?)", device=self.name,
                path=self._attr_path(attr), remedy="`pyvfio ls` lists the PCI devices present")
        return text

    def _int(self, attr: str) -> int:
        return int(self._text(attr), 0)

    @property
    def vendor(self) -> int:
        """Vendor ID (``vendor``)."""
        return self._int("vendor")

    @property
    def device(self) -> int:
        """Device ID (``device``)."""
        return self._int("device")

    @property
    def subsystem_vendor(self) -> int:
        """Subsystem vendor ID (``subsystem_vendor``)."""
        return self._int("subsystem_vendor")

    @property
    def subsystem_device(self) -> int:
        """Subsystem ID (``subsystem_device``)."""
        return self._int("subsystem_device")

    @property
    def class_code(self) -> int:
        """24-bit class code: base class, subclass, programming interface (``class``)."""
        return self._int("class")

    @property
    def revision(self) -> int:
        """Revision ID (``revision``)."""
        return self._int("revision")

    @property
    def header_type(self) -> Optional[int]:
        """Configuration header layout (0 endpoint, 1 PCI bridge, 2 CardBus), from ``config``."""
        from pyvfio.core.uapi import lib
        try:
            head = syscalls.read_file(self._attr_path("config"), device=self.name)
        except OSError:
            return None
        if len(head) <= lib.PCI_HEADER_TYPE:
            return None
        return cast("int | None", head[lib.PCI_HEADER_TYPE] & lib.PCI_HEADER_TYPE_MASK)

    @property
    def numa_node(self) -> Optional[int]:
        """NUMA node the function is attached to; None when the kernel says -1 (none)."""
        text = read_text(self._attr_path("numa_node"), self.name)
        if text is None or int(text) < 0:
            return None
        return int(text)

    # ----------------------------------------------------------------- driver and group
    @property
    def driver(self) -> Optional[str]:
        """Name of the bound driver (the ``driver`` symlink), None when unbound."""
        return link_name(self._attr_path("driver"))

    @property
    def driver_override(self) -> Optional[str]:
        """The only driver allowed to bind (``driver_override``), None when unset."""
        text = read_text(self._attr_path("driver_override"), self.name)
        return None if text in (None, "", _NULL) else text

    @property
    def iommu_group(self) -> Optional[int]:
        """IOMMU group number (the ``iommu_group`` symlink), None without an IOMMU."""
        return group_number(self.path)

    def _group_dir(self) -> Optional[str]:
        group = self.iommu_group
        return None if group is None else self.host.sys_path(IOMMU_GROUPS, str(group))

    def _group_entries(self) -> List[Tuple[str, Optional[str]]]:
        """(name, driver) of every device in the group, PCI or not, sorted by name."""
        group = self.iommu_group
        return [] if group is None else group_entries(group, self.host)

    def group_members(self) -> List["PciDevice"]:
        """The PCI devices of this device's IOMMU group (itself included); [] without one."""
        members = []
        for name, _ in self._group_entries():
            if is_bdf(name) and os.path.isdir(self.host.sys_path(PCI_DEVICES, name)):
                members.append(PciDevice(name, on=self.host))
        return sorted(members, key=lambda d: d.address)

    def group_blockers(self) -> List[Tuple[str, str]]:
        """(device, driver) of each group member whose driver keeps the group from VFIO."""
        group = self.iommu_group
        return [] if group is None else group_blockers(group, self.host)

    def group_viable(self) -> bool:
        """VFIO's rule: every device in the group is unbound or bound to a user-DMA driver.

        False when the device has no IOMMU group at all.
        """
        return self.iommu_group is not None and not self.group_blockers()

    def check_viable(self) -> None:
        """Raise :class:`NotViableError` naming each device that keeps the group from VFIO."""
        group = self.iommu_group
        if group is None:
            raise errors.NotViableError(
                "not in an IOMMU group, so VFIO cannot claim it", device=self.name,
                remedy="enable the IOMMU (intel_iommu=on or amd_iommu=on on the kernel command "
                       "line), or load vfio with enable_unsafe_noiommu_mode=1 and "
                       f"`pyvfio bind {self.name}`")
        blockers = self.group_blockers()
        if blockers:
            raise not_viable_error(group, blockers, device=self.name)

    @property
    def is_bridge(self) -> bool:
        """A host bridge (class 0x0600) or a PCI-to-PCI/CardBus bridge (header type 1, 2)."""
        return self.class_code >> 8 == 0x0600 or self.header_type not in (None, 0)

    def bind_remedy(self, driver: str = "vfio-pci") -> str:
        """How to hand this device to ``driver``, or why that cannot work."""
        from pyvfio.pci.iommu_group import IOMMU_OFF_REMEDY, host_has_iommu_groups
        opt = "" if driver == "vfio-pci" else f" --driver {driver}"
        cmd = f"`pyvfio bind {self.name}{opt}`"
        if "vfio" not in driver:
            return cmd
        if self.is_bridge:
            kind = "a host bridge" if self.class_code >> 8 == 0x0600 else "a bridge"
            return (f"{self.name} is {kind}, which VFIO cannot take: choose an endpoint "
                    "device (`pyvfio ls`)")
        if not host_has_iommu_groups():
            return f"{IOMMU_OFF_REMEDY}; then {cmd}"
        return cmd

    def check_bound(self, driver: str = "vfio-pci") -> None:
        """Raise :class:`NotBoundError` unless the device is bound to ``driver``."""
        now = self.driver
        if now != driver:
            raise errors.NotBoundError(
                f"bound to {now or 'no driver'}, not {driver}", device=self.name,
                remedy=self.bind_remedy(driver))

    # ----------------------------------------------------------------- binding
    def _write(self, path: str, value: str, remedy: Optional[str] = None) -> None:
        write_attr(path, value, device=self.name, remedy=remedy)

    def _set_override(self, driver: Optional[str]) -> None:
        if self.driver_override != driver:
            # "\n" alone clears the override (drivers/base/driver.c: driver_set_override)
            self._write(self._attr_path("driver_override"), driver if driver else "\n")

    def _driver_dir(self, driver: str, load: bool = True) -> str:
        """``/sys/bus/pci/drivers/<driver>``, loading its module first when it is missing."""
        path = self.host.sys_path(PCI_DRIVERS, driver)
        if not os.path.isdir(path) and load:
            module = _MODULE_OF_DRIVER.get(driver, driver)
            syscalls.modprobe(module)
            if not os.path.isdir(path):
                raise errors.ModuleMissingError(
                    f"module {module} loaded but no PCI driver {driver} registered",
                    device=self.name, path=path,
                    remedy=f"check the driver's name: {', '.join(self._known_drivers())}")
        return path

    def _known_drivers(self) -> List[str]:
        try:
            return sorted(os.listdir(self.host.sys_path(PCI_DRIVERS)))
        except OSError:
            return []

    def _detach(self, driver: str) -> None:
        """Unbind from ``driver``; the kernel runs the driver's remove before returning."""
        path = self.host.sys_path(PCI_DRIVERS, driver, "unbind")
        try:
            self._write(path, self.name)
        except errors.NotFoundError:
            if self.driver == driver:  # ENODEV only when it is no longer bound there
                raise

    def _probe(self) -> None:
        """Ask the bus to attach a driver (``drivers_probe``); it honours driver_override."""
        self._write(self.host.sys_path(PCI_PROBE), self.name)

    def _state(self) -> Tuple[Optional[str], Optional[str]]:
        return self.driver, self.driver_override

    def _refusal_remedy(self, driver: str) -> str:
        header = self.header_type
        if "vfio" in driver and header not in (None, 0):
            return (f"{driver} drives only endpoint functions (header type 0); "
                    f"{self.name} has header type {header} (a bridge): use its group's "
                    "endpoints instead")
        return f"the kernel log (`dmesg | tail`) says why {driver} refused {self.name}"

    def bind(self, driver: str = "vfio-pci") -> Optional[str]:
        """Bind to ``driver``; return the driver it had before (None: unbound).

        The kernel way: write ``driver`` to ``driver_override`` (left in place
        so that later probes keep it), unbind from the current driver, then
        write the address to ``drivers_probe``.  The driver's module is loaded
        when it is not registered.  On failure the previous binding is put back.
        """
        self._driver_dir(driver)
        state = self._state()
        if self._saved is None:
            self._saved = state
        previous = state[0]
        if previous == driver:
            self._set_override(driver)
            return previous
        try:
            self._set_override(driver)
            if previous is not None:
                self._detach(previous)
            self._probe()
            now = self.driver
            if now != driver:
                raise errors.NotBoundError(
                    f"{driver} did not bind (now {now or 'unbound'})", device=self.name,
                    remedy=self._refusal_remedy(driver))
        except BaseException:
            with contextlib.suppress(errors.PyvfioError):
                self._restore_state(state)
            raise
        return previous

    def unbind(self) -> Optional[str]:
        """Detach from the current driver; return its name (None if it had none).

        ``driver_override`` stays as it is: reprobing binds the same driver
        again (see :meth:`reprobe` to hand the device back to the kernel's choice).
        """
        previous = self.driver
        if previous is not None:
            self._detach(previous)
        return previous

    def reprobe(self) -> Optional[str]:
        """Clear ``driver_override``, unbind, and let the kernel pick a driver by ID.

        Returns the driver now bound (None when no driver claims the device).
        """
        self._set_override(None)
        current = self.driver
        if current is not None:
            self._detach(current)
        self._probe()
        return self.driver

    def _restore_state(self, state: Tuple[Optional[str], Optional[str]]) -> Optional[str]:
        driver, override = state
        current = self.driver
        if current != driver:
            if driver is not None and os.path.isdir(self._driver_dir(driver, load=False)):
                self._set_override(driver)  # the same driver, not whichever matches first
            else:
                self._set_override(override)
            if current is not None:
                self._detach(current)
            if driver is not None:
                self._probe()
        self._set_override(override)
        now = self.driver
        if driver is not None and now != driver:
            raise errors.NotBoundError(
                f"could not give the device back to {driver} (now {now or 'unbound'})",
                device=self.name, remedy=self._refusal_remedy(driver))
        return now

    def restore(self) -> Optional[str]:
        """Put back the driver and driver_override the device had before :meth:`bind`.

        Returns the driver now bound.  Without an earlier bind, nothing changes.
        """
        if self._saved is None:
            return self.driver
        now = self._restore_state(self._saved)
        self._saved = None
        return now

    @contextlib.contextmanager
    def bound(self, driver: str = "vfio-pci") -> Iterator["PciDevice"]:
        """Bind to ``driver`` for the ``with`` block, then restore the earlier binding."""
        state = self._state()
        try:
            self.bind(driver)
            yield self
        finally:
            self._restore_state(state)
            if self._saved == state:
                self._saved = None

    # ----------------------------------------------------------------- SR-IOV
    @property
    def is_vf(self) -> bool:
        """True for an SR-IOV virtual function (it has a ``physfn`` link)."""
        return os.path.islink(self._attr_path("physfn"))

    @property
    def physfn(self) -> Optional["PciDevice"]:
        """The physical function of a VF, None for anything else."""
        name = link_name(self._attr_path("physfn"))
        return None if name is None else PciDevice(name, on=self.host)

    @property
    def sriov_totalvfs(self) -> int:
        """How many VFs the function can create; 0 when it is not SR-IOV capable."""
        text = read_text(self._attr_path("sriov_totalvfs"), self.name)
        return int(text) if text else 0

    @property
    def sriov_numvfs(self) -> int:
        """How many VFs are enabled.  Setting it enables or disables VFs.

        The kernel refuses to change a non-zero count to another non-zero one
        (EBUSY), so the setter disables the VFs first.  The PF's driver must
        support SR-IOV (vfio-pci does with ``enable_sriov=1``).
        """
        text = read_text(self._attr_path("sriov_numvfs"), self.name)
        return int(text) if text else 0

    @sriov_numvfs.setter
    def sriov_numvfs(self, count: int) -> None:
        path = self._attr_path("sriov_numvfs")
        if not os.path.exists(path):
            raise errors.NotSupportedError(
                "not SR-IOV capable (no sriov_numvfs in sysfs)", device=self.name, path=path,
                remedy="use a physical function that has the SR-IOV capability "
                       "(`lspci -vv` shows it)")
        total = self.sriov_totalvfs
        if not isinstance(count, int) or not 0 <= count <= total:
            raise errors.InvalidArgumentError(
                f"cannot enable {count!r} VFs: the device supports 0..{total}",
                device=self.name, remedy=f"ask for at most {total} VFs")
        current = self.sriov_numvfs
        if count == current:
            return
        try:
            if current and count:
                self._write(path, "0")
            self._write(path, str(count))
        except errors.NotFoundError as exc:
            if exc.errno != _errno.ENOENT:
                raise
            drv = self.driver
            raise errors.NotSupportedError(
                f"{'its driver ' + drv if drv else 'no driver'} cannot enable VFs",
                errno=exc.errno, op="sysfs write", path=path, device=self.name,
                remedy="bind the PF to a driver that supports SR-IOV, e.g. "
                       f"`modprobe vfio-pci enable_sriov=1` and `pyvfio bind {self.name}`"
                       ) from None

    def virtfns(self) -> List["PciDevice"]:
        """The VFs of a physical function, in VF order (``virtfn0``, ``virtfn1`` …)."""
        try:
            entries = os.listdir(self.path)
        except OSError:
            return []
        indexed = []
        for entry in entries:
            if entry.startswith("virtfn") and entry[6:].isdigit():
                name = link_name(os.path.join(self.path, entry))
                if name is not None:
                    indexed.append((int(entry[6:]), name))
        return [PciDevice(name, on=self.host)
                for _, name in sorted(indexed)]

    # ----------------------------------------------------------------- VFIO nodes, BARs
    def vfio_group_path(self) -> str:
        """The group's VFIO node: ``/dev/vfio/N``, or ``/dev/vfio/noiommu-N`` without an IOMMU."""
        return vfio_group_path(self.path, self.name, self.host)

    def vfio_cdev_path(self) -> Optional[str]:
        """The VFIO device node ``/dev/vfio/devices/vfioX`` (kernel ≥ 6.6), None if absent."""
        return vfio_cdev_path(self.path, self.host)

    @property
    def resources(self) -> List[Resource]:
        """Every line of the ``resource`` file: BARs 0-5, the ROM, then bridge windows."""
        text = read_text(self._attr_path("resource"), self.name) or ""
        out = []
        for index, line in enumerate(text.splitlines()):
            fields = line.split()
            if len(fields) >= 3:
                out.append(Resource(index, int(fields[0], 16), int(fields[1], 16),
                                    int(fields[2], 16)))
        return out


# --------------------------------------------------------------------------- module level
def _as_int(value: Union[int, str, None]) -> Optional[int]:
    if value is None or isinstance(value, int):
        return value
    try:
        return int(value, 16)
    except ValueError:
        raise errors.InvalidArgumentError(f"not a hexadecimal ID: {value!r}") from None


def devices() -> List[PciDevice]:
    """Every PCI function in ``/sys/bus/pci/devices``, sorted by address."""
    on = host()
    if not os.path.isdir(on.sysfs):
        raise errors.NotFoundError(f"no sysfs at {on.sysfs}", path=on.sysfs,
                                   remedy="mount sysfs (`mount -t sysfs sysfs /sys`)")
    try:
        names = os.listdir(on.sys_path(PCI_DEVICES))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if is_bdf(name):
            with contextlib.suppress(errors.NotFoundError):  # removed while we looked
                found.append(PciDevice(name, on=on))
    return sorted(found, key=lambda d: d.address)


def find(vendor: Union[int, str, None] = None, device: Union[int, str, None] = None,
         class_code: Optional[int] = None, driver: Optional[str] = None, *,
         class_mask: int = 0xFFFFFF) -> List[PciDevice]:
    """The PCI functions matching every criterion given (IDs as ints or hex strings).

    ``class_code`` is compared under ``class_mask`` (e.g. ``0x020000`` with
    ``0xFF0000`` finds every network controller).
    """
    want_vendor, want_device = _as_int(vendor), _as_int(device)
    out = []
    for dev in devices():
        try:
            if want_vendor is not None and dev.vendor != want_vendor:
                continue
            if want_device is not None and dev.device != want_device:
                continue
            if class_code is not None and (dev.class_code ^ class_code) & class_mask:
                continue
            if driver is not None and dev.driver != driver:
                continue
        except errors.NotFoundError:  # removed while we looked
            continue
        out.append(dev)
    return out


def get(bdf: Union[str, PciAddress]) -> PciDevice:
    """The PCI function at ``bdf``; :class:`NotFoundError` when there is none."""
    return PciDevice(bdf)
