"""UIO devices as sysfs shows them: ``/sys/class/uio/uioN``.

Each node has ``name`` (the driver's name for the device), ``version``,
``event`` (the interrupt count), ``dev`` (major:minor of ``/dev/uioN``),
the ``device`` link to the parent (a PCI function for the PCI drivers),
``maps/mapM/{name,addr,size,offset}`` and ``portio/portM/{name,start,size,
porttype}``.  The roots come from :func:`pyvfio.core.sysfs.host`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.sysfs import host, link_name, read_text
from pyvfio.pci import PciAddress

__all__ = ["UioNode", "UioMapInfo", "UioPortInfo", "UIO_DRIVERS", "nodes", "find"]

#: The PCI drivers that hand a function to user space through UIO.
UIO_DRIVERS = ("uio_pci_generic", "uio_msi")

_BDF = re.compile(r"^[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_NODE = re.compile(r"^uio(\d+)$")


@dataclass(frozen=True)
class UioMapInfo:
    """``maps/mapN``: a memory area the device node maps at ``N * page size``.

    ``addr`` is page aligned; the area the driver means starts ``offset``
    bytes into the mapping; ``size`` counts from ``addr``.
    """
    index: int
    name: str
    addr: int
    size: int
    offset: int


@dataclass(frozen=True)
class UioPortInfo:
    """``portio/portN``: an I/O-port range (``porttype`` ``port_x86`` on PCs)."""
    index: int
    name: str
    start: int
    size: int
    porttype: str


def _read(path: str, default: Optional[str] = None) -> Optional[str]:
    text = read_text(path)
    return default if text is None else text


def _int(path: str) -> int:
    text = _read(path)
    return int(text, 0) if text else 0


@dataclass(frozen=True)
class UioNode:
    """One ``/sys/class/uio/uioN`` entry, read when it was found."""
    #: ``uioN``.
    node: str
    minor: int
    #: The ``name`` attribute: the driver's name for the device (``uio_pci_generic``, ``uio_msi``).
    name: str
    version: str
    #: The parent PCI function's address, None for a non-PCI UIO device.
    pci: Optional[str]
    maps: Tuple[UioMapInfo, ...]
    ports: Tuple[UioPortInfo, ...]
    #: ``/sys/class/uio/uioN``.
    path: str

    @property
    def dev_path(self) -> str:
        """The device node, ``/dev/uioN``."""
        return host().dev_path(self.node)

    @property
    def event(self) -> int:
        """The interrupt count now (the ``event`` attribute)."""
        path = os.path.join(self.path, "event")
        fd = syscalls.open(path, os.O_RDONLY, device=self.label)
        try:
            text = syscalls.read(fd, 32, device=self.label)
        finally:
            syscalls.close(fd)
        return int(text.strip() or b"0")

    @property
    def label(self) -> str:
        """``0000:00:10.0 (uio0)``: how messages name the device."""
        return f"{self.pci} ({self.node})" if self.pci else self.node


def _maps(path: str) -> Tuple[UioMapInfo, ...]:
    out = []
    base = os.path.join(path, "maps")
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return ()
    for entry in names:
        if entry.startswith("map") and entry[3:].isdigit():
            d = os.path.join(base, entry)
            out.append(UioMapInfo(int(entry[3:]), _read(os.path.join(d, "name"), "") or "",
                                  _int(os.path.join(d, "addr")), _int(os.path.join(d, "size")),
                                  _int(os.path.join(d, "offset"))))
    return tuple(sorted(out, key=lambda m: m.index))


def _ports(path: str) -> Tuple[UioPortInfo, ...]:
    out = []
    base = os.path.join(path, "portio")
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return ()
    for entry in names:
        if entry.startswith("port") and entry[4:].isdigit():
            d = os.path.join(base, entry)
            out.append(UioPortInfo(int(entry[4:]), _read(os.path.join(d, "name"), "") or "",
                                   _int(os.path.join(d, "start")), _int(os.path.join(d, "size")),
                                   _read(os.path.join(d, "porttype"), "") or ""))
    return tuple(sorted(out, key=lambda p: p.index))


def _node(path: str) -> UioNode:
    name = os.path.basename(path)
    target = link_name(os.path.join(path, "device"))
    parent = target.lower() if target and _BDF.match(target) else None
    return UioNode(name, int(_NODE.match(name).group(1)),  # type: ignore[union-attr]
                   _read(os.path.join(path, "name"), "") or "",
                   _read(os.path.join(path, "version"), "") or "", parent,
                   _maps(path), _ports(path), path)


def nodes() -> List[UioNode]:
    """Every UIO device, by minor number; [] when UIO is not loaded."""
    base = host().sys_path("class", "uio")
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    found = [_node(os.path.join(base, n)) for n in names if _NODE.match(n)]
    return sorted(found, key=lambda n: n.minor)


def find(which: str) -> UioNode:
    """The UIO device ``uioN`` or the one whose parent is the PCI function ``which``.

    Raises :class:`~pyvfio.errors.NotBoundError` for a PCI function that has
    no UIO device (not bound to a UIO driver), :class:`NotFoundError` for an
    unknown ``uioN``.
    """
    if _NODE.match(which):
        path = host().sys_path("class", "uio", which)
        if not os.path.isdir(path):
            raise errors.NotFoundError(
                f"no UIO device {which}", path=path,
                remedy="`pyvfio ls` shows the UIO bindings; bind a device with "
                       "`pyvfio bind BDF --driver uio_pci_generic`")
        return _node(path)
    bdf = str(PciAddress.parse(which))
    for n in nodes():
        if n.pci == bdf:
            return n
    if not os.path.isdir(host().sys_path("bus", "pci", "devices", bdf)):
        raise errors.NotFoundError(f"no PCI device {bdf}", device=bdf,
                                   remedy="`pyvfio ls` lists the PCI devices present")
    driver = link_name(host().sys_path("bus", "pci", "devices", bdf, "driver"))
    raise errors.NotBoundError(
        f"bound to {driver or 'no driver'}, not to a UIO driver ({', '.join(UIO_DRIVERS)})",
        device=bdf, remedy=f"`pyvfio bind {bdf} --driver uio_pci_generic` (INTx) or "
                           f"`--driver uio_msi` (MSI-X vectors to eventfds)")
