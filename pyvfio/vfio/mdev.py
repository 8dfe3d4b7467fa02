"""Mediated devices (mdev): virtual devices a parent driver carves out of a real one.

A parent driver that supports mdev appears under ``/sys/class/mdev_bus/<parent>``
with a directory per type in ``mdev_supported_types``.  Writing a UUID to a
type's ``create`` makes the kernel create the mdev
``/sys/bus/mdev/devices/<uuid>``, in an IOMMU group of its own; writing ``1``
to its ``remove`` destroys it.  VFIO then opens it like any other device.
"""
from __future__ import annotations

import errno as _errno
import os
import uuid as _uuid
from types import TracebackType
from typing import List, Optional, Type

from pyvfio import errors
from pyvfio.core.sysfs import Host, host, link_name, read_text, write_attr
from pyvfio.pci.iommu_group import group_number, vfio_cdev_path, vfio_group_path

__all__ = ["MdevParent", "MdevType", "Mdev", "parents", "devices", "get"]

MDEV_BUS = "class/mdev_bus"
MDEV_DEVICES = "bus/mdev/devices"


def _canonical_uuid(value: object) -> str:
    try:
        return str(value if isinstance(value, _uuid.UUID) else _uuid.UUID(str(value)))
    except ValueError:
        raise errors.InvalidArgumentError(
            f"not a UUID: {value!r}",
            remedy="an mdev is named by a UUID such as 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001 "
                   "(`uuidgen` makes one)") from None


class MdevParent:
    """A device whose driver creates mdevs (``/sys/class/mdev_bus/<name>``)."""

    def __init__(self, name: str, *, on: Optional[Host] = None) -> None:
        self.name = name
        self.host = on or host()
        self.path = self.host.sys_path(MDEV_BUS, name)
        if not os.path.isdir(self.path):
            known = ", ".join(p.name for p in parents()) or "none"
            raise errors.NotFoundError(
                f"no mdev parent {name} (parents: {known})",
                remedy="load the parent's driver with mdev support (e.g. i915 with GVT-g, "
                       "mtty for the sample)")

    def __repr__(self) -> str:
        return f"MdevParent({self.name!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MdevParent):
            return NotImplemented
        return (self.name, self.host) == (other.name, other.host)

    def __hash__(self) -> int:
        return hash((self.name, self.host))

    def types(self) -> List["MdevType"]:
        """The mdev types the parent offers, sorted by id."""
        try:
            names = sorted(os.listdir(os.path.join(self.path, "mdev_supported_types")))
        except FileNotFoundError:
            return []
        return [MdevType(self, n) for n in names]

    def type(self, type_id: str) -> "MdevType":
        """The type ``type_id`` (e.g. ``mtty-2``); :class:`NotFoundError` if not offered."""
        found = MdevType(self, type_id)
        if not os.path.isdir(found.path):
            offered = ", ".join(t.id for t in self.types()) or "none"
            raise errors.NotFoundError(
                f"{self.name} offers no mdev type {type_id}", device=self.name,
                remedy=f"choose one of its types: {offered}")
        return found

    def create(self, type_id: str, uuid: Optional[object] = None) -> "Mdev":
        """Create an mdev of type ``type_id`` (a new random UUID unless one is given)."""
        return self.type(type_id).create(uuid)

    def devices(self) -> List["Mdev"]:
        """The mdevs created on this parent, of every type."""
        out: List[Mdev] = []
        for mtype in self.types():
            out.extend(mtype.devices())
        return sorted(out, key=lambda m: m.uuid)


class MdevType:
    """One type of mdev a parent offers (``mdev_supported_types/<id>``)."""

    def __init__(self, parent: MdevParent, type_id: str) -> None:
        self.parent = parent
        self.id = type_id
        self.path = os.path.join(parent.path, "mdev_supported_types", type_id)

    def __repr__(self) -> str:
        return f"MdevType({self.parent.name!r}, {self.id!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MdevType):
            return NotImplemented
        return (self.parent, self.id) == (other.parent, other.id)

    def __hash__(self) -> int:
        return hash((self.parent, self.id))

    def _text(self, attr: str) -> Optional[str]:
        return read_text(os.path.join(self.path, attr), self.parent.name)

    @property
    def name(self) -> Optional[str]:
        """The driver's name for the type (``name``; optional in the kernel ABI)."""
        return self._text("name")

    @property
    def description(self) -> Optional[str]:
        """Free-form description (``description``; optional)."""
        return self._text("description")

    @property
    def device_api(self) -> str:
        """The VFIO API the mdev offers, e.g. ``vfio-pci`` (``device_api``)."""
        return self._text("device_api") or ""

    @property
    def available_instances(self) -> int:
        """How many more mdevs of this type can be created now."""
        text = self._text("available_instances")
        return int(text) if text else 0

    def devices(self) -> List["Mdev"]:
        """The mdevs of this type (its ``devices`` directory)."""
        try:
            names = sorted(os.listdir(os.path.join(self.path, "devices")))
        except FileNotFoundError:
            return []
        return [Mdev(n, on=self.parent.host) for n in names]

    def create(self, uuid: Optional[object] = None) -> "Mdev":
        """Write a UUID to ``create``; the kernel makes ``/sys/bus/mdev/devices/<uuid>``."""
        name = _canonical_uuid(uuid if uuid is not None else _uuid.uuid4())
        where = f"{self.parent.name} type {self.id}"
        if self.available_instances <= 0:
            existing = ", ".join(m.uuid for m in self.devices()) or "none"
            raise errors.BusyError(
                f"no instances of mdev type {self.id} left on {self.parent.name} "
                f"(its mdevs: {existing})", errno=_errno.EUSERS, device=self.parent.name,
                remedy="remove an mdev of this type (Mdev.remove(), or write 1 to "
                       "/sys/bus/mdev/devices/<uuid>/remove) or choose another type: "
                       + (", ".join(f"{t.id} ({t.available_instances} left)"
                                    for t in self.parent.types() if t.id != self.id)
                          or "the parent has no other"))
        try:
            write_attr(os.path.join(self.path, "create"), name, device=where)
        except errors.PyvfioError as exc:
            if exc.errno == _errno.EEXIST:
                raise errors.BusyError(
                    f"an mdev {name} exists already", errno=exc.errno, device=where,
                    remedy="use another UUID, or remove the existing mdev first") from None
            if exc.errno == _errno.EUSERS:
                raise errors.BusyError(
                    f"no instances of mdev type {self.id} left", errno=exc.errno, device=where,
                    remedy="remove an mdev of this type or choose another type") from None
            raise
        return Mdev(name, on=self.parent.host)


class Mdev:
    """One mediated device (``/sys/bus/mdev/devices/<uuid>``); ``with`` removes it at the end."""

    def __init__(self, uuid: object, *, on: Optional[Host] = None) -> None:
        self.uuid = _canonical_uuid(uuid)
        self.host = on or host()
        self.path = self.host.sys_path(MDEV_DEVICES, self.uuid)
        if not os.path.isdir(self.path):
            raise errors.NotFoundError(
                f"no mdev {self.uuid}",
                remedy="create it with MdevParent.create(type_id, uuid); "
                       "/sys/bus/mdev/devices lists the mdevs present")

    def __repr__(self) -> str:
        return f"Mdev({self.uuid!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mdev):
            return NotImplemented
        return (self.uuid, self.host) == (other.uuid, other.host)

    def __hash__(self) -> int:
        return hash((self.uuid, self.host))

    @property
    def exists(self) -> bool:
        """Whether the kernel still has this mdev."""
        return os.path.isdir(self.path)

    @property
    def parent(self) -> MdevParent:
        """The parent device (the directory the mdev lives in)."""
        parent_name = os.path.basename(os.path.dirname(os.path.realpath(self.path)))
        return MdevParent(parent_name, on=self.host)

    @property
    def type(self) -> MdevType:
        """The mdev's type (the ``mdev_type`` symlink)."""
        type_id = link_name(os.path.join(self.path, "mdev_type"))
        if type_id is None:
            raise errors.NotFoundError(f"no mdev_type link in {self.path}", device=self.uuid)
        return MdevType(self.parent, type_id)

    @property
    def driver(self) -> Optional[str]:
        """The driver bound on the mdev bus, None when unbound."""
        return link_name(os.path.join(self.path, "driver"))

    @property
    def iommu_group(self) -> Optional[int]:
        """The IOMMU group VFIO made for the mdev, None when it has none."""
        return group_number(self.path)

    def vfio_group_path(self) -> str:
        """The group's VFIO node, ``/dev/vfio/N``."""
        return vfio_group_path(self.path, self.uuid, self.host)

    def vfio_cdev_path(self) -> Optional[str]:
        """The VFIO device node ``/dev/vfio/devices/vfioX``, None if absent."""
        return vfio_cdev_path(self.path, self.host)

    def remove(self) -> None:
        """Destroy the mdev (write ``1`` to its ``remove``)."""
        write_attr(os.path.join(self.path, "remove"), "1", device=self.uuid,
                    remedy="close every file descriptor of the mdev first")

    def __enter__(self) -> "Mdev":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        if self.exists:
            self.remove()


def parents() -> List[MdevParent]:
    """Every device that can create mdevs, sorted by name."""
    try:
        names = sorted(os.listdir(host().sys_path(MDEV_BUS)))
    except FileNotFoundError:
        return []
    return [MdevParent(n) for n in names]


def devices() -> List[Mdev]:
    """Every mdev present, sorted by UUID."""
    try:
        names = sorted(os.listdir(host().sys_path(MDEV_DEVICES)))
    except FileNotFoundError:
        return []
    return [Mdev(n) for n in names]


def get(uuid: object) -> Mdev:
    """The mdev named ``uuid``; :class:`NotFoundError` when there is none."""
    return Mdev(uuid)
