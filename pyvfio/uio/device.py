"""An open UIO device: ``/dev/uioN`` with its maps, ports, interrupt and,
under ``uio_msi``, its MSI-X vectors.

:func:`open_uio` takes ``uioN`` or the address of a PCI function bound to
``uio_pci_generic`` or ``uio_msi``::

    with open_uio("0000:00:10.0") as dev:
        print(hex(dev.map(0).read32(0)))
        dev.interrupt.enable()
        dev.interrupt.wait(timeout=1)

The object offers what the project's userspace drivers expect of a device
(``name``, ``bar(n)``, ``config``, ``msix``, ``dma``), so the same driver
code runs on VFIO and on UIO; ``dma`` is None: addresses are physical.
"""
from __future__ import annotations

import asyncio
import errno
import os
import select
import struct
import time
from typing import Any, Dict, List, Optional, Sequence, Union

from pyvfio import errors
from pyvfio.core import syscalls
from pyvfio.core.eventfd import EventFd, check_timeout
from pyvfio.core.handle import Handle
from pyvfio.core.uapi import ffi, lib
from pyvfio.pci import PciDevice
from pyvfio.pci.config import PciConfig
from pyvfio.uio import sysfs as _sysfs
from pyvfio.uio.config import SysfsConfigSpace
from pyvfio.uio.maps import UioMemoryMap, UioPortRegion
from pyvfio.uio.sysfs import UioNode

__all__ = ["UioDevice", "UioInterrupt", "UioMsix", "open_uio", "MAX_VECTORS"]

#: The most vectors uio_msi connects (fewer if the device's MSI-X table is smaller).
MAX_VECTORS = 64


class UioInterrupt:
    """The interrupt of a UIO device as its node shows it.

    A 4-byte read of ``/dev/uioN`` returns the device's interrupt count (and
    blocks until it changed since this file last read it); :meth:`wait`
    polls then reads.  When the count moved by more than one between two
    looks, the interrupts in between were not seen one by one: they are
    added to :attr:`missed`.
    """

    def __init__(self, device: "UioDevice") -> None:
        self.device = device
        #: The count last read (sysfs ``event`` just before the node was opened).
        self.last = device._event_at_open
        #: Interrupts that arrived while nobody looked (folded into one wake-up).
        self.missed = 0
        #: Interrupts seen through this object.
        self.seen = 0

    @property
    def count(self) -> int:
        """The kernel's interrupt count now (sysfs ``event``), without consuming it."""
        self.device._check_open()
        return self.device.node.event

    def _take(self, total: int) -> int:
        new = (total - self.last) & 0xFFFFFFFF
        self.last = total
        if new > 1:
            self.missed += new - 1
        self.seen += new
        return new

    def pending(self) -> int:
        """Interrupts since the last look (0 if none), without blocking."""
        fd = self.device._check_open()
        try:
            data = syscalls.read(fd, 4, device=self.device.name)
        except errors.PyvfioError as exc:
            if exc.errno == errno.EAGAIN:
                return 0
            raise self._no_irq(exc) from None
        return self._take(struct.unpack("<i", data)[0] & 0xFFFFFFFF)

    def _no_irq(self, exc: errors.PyvfioError) -> errors.PyvfioError:
        if exc.errno == errno.EIO:
            return errors.NotSupportedError(
                "the device has no interrupt (its UIO driver registered none)",
                errno=exc.errno, op="read", device=self.device.name,
                remedy="use a device with an INTx pin or MSI-X, or poll its registers")
        return exc

    def wait(self, timeout: Optional[float] = None) -> int:
        """Block until an interrupt arrives; return how many arrived since the last look.

        Raises :class:`~pyvfio.errors.TimedOutError` after ``timeout`` seconds
        (None or ``math.inf``: forever).
        """
        fd = self.device._check_open()
        timeout = check_timeout(timeout, device=self.device.name)
        deadline = None if timeout is None else time.monotonic() + timeout
        left = timeout
        while True:
            if syscalls.poll([(fd, select.POLLIN)], left):
                n = self.pending()
                if n:
                    return n
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.TimedOutError(
                        f"no interrupt within {timeout} s", device=self.device.name,
                        remedy="check that the device raises it, that it was re-enabled "
                               "(interrupt.enable()) and that bus mastering is on for MSI")

    async def wait_async(self, timeout: Optional[float] = None) -> int:
        """:meth:`wait` for asyncio: the running loop watches ``/dev/uioN``."""
        fd = self.device._check_open()
        timeout = check_timeout(timeout, device=self.device.name)
        loop = asyncio.get_running_loop()
        while True:
            n = self.pending()
            if n:
                return n
            fut: asyncio.Future[None] = loop.create_future()

            def wake(fut: asyncio.Future[None] = fut) -> None:
                if not fut.done():
                    fut.set_result(None)
            loop.add_reader(fd, wake)
            try:
                await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                raise errors.TimedOutError(f"no interrupt within {timeout} s",
                                           device=self.device.name) from None
            finally:
                loop.remove_reader(fd)

    def enable(self) -> None:
        """Let the interrupt fire again after the kernel masked it.

        ``uio_pci_generic`` masks INTx in the command register and has no
        ``irqcontrol``: its INTX_DISABLE bit (10) is cleared through config
        space.  Other drivers take a 4-byte write of 1.
        """
        self._control(True)

    def disable(self) -> None:
        """Mask the interrupt (INTX_DISABLE for uio_pci_generic, a write of 0 otherwise)."""
        self._control(False)

    def _control(self, on: bool) -> None:
        fd = self.device._check_open()
        if self.device.node.name == "uio_pci_generic":
            self.device.config.intx_disable = not on
            return
        try:
            syscalls.write(fd, struct.pack("<i", 1 if on else 0), device=self.device.name)
        except errors.PyvfioError as exc:
            if exc.errno == errno.ENOSYS:
                raise errors.NotSupportedError(
                    f"{self.device.node.name} does not mask this interrupt (irqcontrol absent)",
                    errno=exc.errno, op="write", device=self.device.name,
                    remedy="MSI-X vectors of uio_msi need no re-enabling") from None
            raise self._no_irq(exc) from None

    def __repr__(self) -> str:
        return (f"<UioInterrupt of {self.device.name}: last count {self.last}, "
                f"{self.seen} seen, {self.missed} missed>")


class UioMsix:
    """uio_msi's vectors, each connected to an eventfd with ``UIO_MSI_IRQ_SET``.

    :attr:`count` is what the driver offers: the MSI-X table size, at most
    64; a device without MSI-X offers one vector, its INTx line.
    """

    def __init__(self, device: "UioDevice") -> None:
        self.device = device
        self.name = "MSI-X" if device._msix_table_size() else "INTx (uio_msi fallback)"
        self.count = self._vector_count()
        #: vector -> the eventfd connected to it.
        self.eventfds: Dict[int, EventFd] = {}
        self._owned: Dict[int, EventFd] = {}
        self._arg = ffi.new("struct uio_msi_irq_set *")

    def _vector_count(self) -> int:
        table = self.device._msix_table_size()
        if table:
            return min(table, MAX_VECTORS)
        pin = self.device.config.read8(0x3D)
        return 1 if pin else 0

    def _ioctl(self, vector: int, fd: int) -> None:
        dev_fd = self.device._check_open()
        if isinstance(vector, bool) or not isinstance(vector, int) or vector < 0:
            raise errors.InvalidArgumentError(f"vector must be an int >= 0, not {vector!r}",
                                              device=self.device.name)
        self._arg.vec = vector & 0xFFFFFFFF
        self._arg.fd = fd
        try:
            syscalls.ioctl(dev_fd, lib.UIO_MSI_IRQ_SET, self._arg, device=self.device.name)
        except errors.PyvfioError as exc:
            if exc.errno == errno.ERANGE:
                raise errors.OutOfBoundsError(
                    f"vector {vector} does not exist: the device has {self.count} "
                    f"(vectors 0..{self.count - 1})", errno=errno.ERANGE,
                    op="UIO_MSI_IRQ_SET", path=exc.path, device=self.device.name,
                    remedy=f"use vectors below {self.count}") from None
            if exc.errno == errno.EOPNOTSUPP or exc.errno == errno.ENOTTY:
                raise errors.NotSupportedError(
                    f"{self.device.node.name} does not take UIO_MSI_IRQ_SET",
                    errno=exc.errno, op="UIO_MSI_IRQ_SET", device=self.device.name,
                    remedy=f"`pyvfio bind {self.device.pci or 'BDF'} --driver uio_msi`") \
                    from None
            raise

    def set(self, vector: int, eventfd: Union[EventFd, int]) -> None:
        """Connect ``vector`` to ``eventfd``, replacing what it was connected to."""
        fd = eventfd.fileno() if isinstance(eventfd, EventFd) else int(eventfd)
        self._ioctl(vector, fd)
        old = self._owned.pop(vector, None)
        if old is not None and old is not eventfd:
            old.close()
        if isinstance(eventfd, EventFd):
            self.eventfds[vector] = eventfd
        else:
            self.eventfds.pop(vector, None)

    def clear(self, vector: int) -> None:
        """Disconnect ``vector`` (fd -1): its interrupts go nowhere."""
        self._ioctl(vector, -1)
        self.eventfds.pop(vector, None)
        old = self._owned.pop(vector, None)
        if old is not None:
            old.close()

    def enable(self, n: Optional[int] = None) -> List[EventFd]:
        """Connect vectors 0..n-1 (all by default) to new eventfds owned here."""
        n = self.count if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= self.count:
            raise errors.OutOfBoundsError(
                f"cannot enable {n!r} vectors: the device has {self.count}",
                errno=errno.ERANGE, device=self.device.name,
                remedy=f"ask for 1..{self.count} vectors")
        self.disable()
        made: List[EventFd] = []
        try:
            for v in range(n):
                efd = EventFd(f"{self.device.name} {self.name}[{v}]")
                made.append(efd)
                self.set(v, efd)
                self._owned[v] = efd
        except BaseException:
            for v, efd in enumerate(made):
                if v in self.eventfds:
                    try:
                        self.clear(v)
                    except errors.PyvfioError:
                        pass
                efd.close()
                self._owned.pop(v, None)
            raise
        return made

    def disable(self) -> None:
        """Disconnect every connected vector and close the eventfds made by :meth:`enable`."""
        first: Optional[BaseException] = None
        for v in sorted(self.eventfds):
            try:
                if not self.device.closed:
                    self._ioctl(v, -1)
            except errors.PyvfioError as exc:
                first = first or exc
        self.eventfds.clear()
        for efd in self._owned.values():
            efd.close()
        self._owned.clear()
        if first is not None:
            raise first

    def _efd(self, vector: int) -> EventFd:
        efd = self.eventfds.get(vector)
        if efd is None:
            raise errors.InvalidArgumentError(
                f"vector {vector} is not connected to an eventfd of ours",
                device=self.device.name, remedy="call msix.enable(n) or msix.set(vector, efd)")
        return efd

    def pending(self, vector: int = 0) -> int:
        """Interrupts on ``vector`` since the last look (0 if none)."""
        return self._efd(vector).pending()

    def wait(self, vector: int = 0, timeout: Optional[float] = None) -> int:
        """Wait for an interrupt on ``vector``; returns how many arrived."""
        return self._efd(vector).wait(timeout)

    async def wait_async(self, vector: int = 0, timeout: Optional[float] = None) -> int:
        return await self._efd(vector).wait_async(timeout)

    def wait_any(self, timeout: Optional[float] = None,
                 vectors: Optional[Sequence[int]] = None) -> Dict[int, int]:
        """Wait until any of ``vectors`` (all connected ones by default) fires.

        Returns {vector: interrupts} for every vector that had some.
        """
        self.device._check_open()
        timeout = check_timeout(timeout, device=self.device.name)
        chosen = sorted(self.eventfds) if vectors is None else list(vectors)
        efds = {v: self._efd(v) for v in chosen}
        if not efds:
            raise errors.InvalidArgumentError("no vector is connected", device=self.device.name,
                                              remedy="call msix.enable(n) first")
        by_fd = {e.fileno(): v for v, e in efds.items()}
        deadline = None if timeout is None else time.monotonic() + timeout
        left = timeout
        while True:
            ready = syscalls.poll([(fd, select.POLLIN) for fd in by_fd], left)
            got = {}
            for fd, _ in ready:
                n = efds[by_fd[fd]].pending()
                if n:
                    got[by_fd[fd]] = n
            if got:
                return got
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.TimedOutError(
                        f"no interrupt on vectors {chosen} within {timeout} s",
                        device=self.device.name)

    def close(self) -> None:
        self.disable()

    def __repr__(self) -> str:
        return (f"<UioMsix {self.name} of {self.device.name}: {self.count} vectors, "
                f"{len(self.eventfds)} connected>")


class UioDevice(Handle):
    """``/dev/uioN``, open: maps, port regions, the interrupt and, for uio_msi, vectors."""

    def __init__(self, node: UioNode) -> None:
        self.node = node
        self.name = node.label
        self.pci = node.pci
        #: No IOMMU: the device sees physical addresses (see :mod:`pyvfio.uio.dma`).
        self.dma = None
        self._maps: Dict[int, UioMemoryMap] = {}
        self._ports: Dict[int, UioPortRegion] = {}
        self._config: Optional[PciConfig] = None
        self._config_space: Optional[SysfsConfigSpace] = None
        self._interrupt: Optional[UioInterrupt] = None
        self._msix: Optional[UioMsix] = None
        self._table_size: Optional[int] = None
        # read before opening: the open file's first read counts from here
        self._event_at_open = node.event
        self.fd = syscalls.open(node.dev_path, os.O_RDWR | os.O_NONBLOCK, device=self.name)

    def _check_open(self) -> int:
        super()._check_open()
        return self.fd

    def fileno(self) -> int:
        return self._check_open()

    # -- maps and ports -----------------------------------------------------------------
    def map(self, index: int) -> UioMemoryMap:
        """Memory map ``index`` (``maps/map<index>``), mapped on first use."""
        self._check_open()
        m = self._maps.get(index)
        if m is not None:
            return m
        infos = {i.index: i for i in self.node.maps}
        if isinstance(index, bool) or not isinstance(index, int) or index not in infos:
            have = ", ".join(str(i) for i in sorted(infos)) or "none"
            raise errors.OutOfBoundsError(
                f"map {index!r} does not exist (maps: {have})", device=self.name,
                remedy=f"see /sys/class/uio/{self.node.node}/maps")
        m = self._maps[index] = UioMemoryMap(self, infos[index], self._bar_of(infos[index]))
        return m

    @property
    def maps(self) -> List[UioMemoryMap]:
        """Every memory map, mapped."""
        return [self.map(i.index) for i in self.node.maps]

    def _bar_of(self, info: Any) -> Optional[int]:
        if self.pci is None:
            return None
        try:
            res = PciDevice(self.pci).resources
        except errors.NotFoundError:       # the parent is gone: no BAR to name
            return None                    # (a failed read is the caller's error, not absorbed)
        for r in res[:6]:
            if r.is_mem and r.size and r.start == info.addr + info.offset:
                return r.index
        return None

    def bar(self, n: int) -> UioMemoryMap:
        """The map that shows PCI BAR ``n``."""
        self._check_open()
        for info in self.node.maps:
            if self._bar_of(info) == n:
                return self.map(info.index)
        raise errors.NotFoundError(
            f"BAR {n} is not one of the device's UIO maps", device=self.name,
            remedy=("uio_pci_generic maps only 32-bit non-prefetchable memory BARs; "
                    "uio_msi maps every memory BAR" if self.node.name == "uio_pci_generic"
                    else "see /sys/class/uio/" + self.node.node + "/maps"))

    def port(self, index: int) -> UioPortRegion:
        """Port region ``index`` (``portio/port<index>``)."""
        self._check_open()
        p = self._ports.get(index)
        if p is None:
            infos = {i.index: i for i in self.node.ports}
            if index not in infos:
                have = ", ".join(str(i) for i in sorted(infos)) or "none"
                raise errors.OutOfBoundsError(f"port region {index!r} does not exist "
                                              f"(regions: {have})", device=self.name)
            p = self._ports[index] = UioPortRegion(self, infos[index])
        return p

    # -- configuration space ----------------------------------------------------------------
    @property
    def config(self) -> PciConfig:
        """The parent PCI function's configuration space (sysfs ``config``)."""
        self._check_open()
        if self._config is None:
            if self.pci is None:
                raise errors.NotSupportedError("not a PCI device: no configuration space",
                                               device=self.name)
            self._config_space = SysfsConfigSpace(self.pci)
            self._config = PciConfig(self._config_space)
        return self._config

    def _msix_table_size(self) -> int:
        if self._table_size is None:
            cap = self.config.msix()
            self._table_size = cap.table_size if cap is not None else 0
        return self._table_size

    # -- interrupts -------------------------------------------------------------------------
    @property
    def interrupt(self) -> UioInterrupt:
        """The device's interrupt as ``/dev/uioN`` counts it."""
        self._check_open()
        if self._interrupt is None:
            self._interrupt = UioInterrupt(self)
        return self._interrupt

    @property
    def msix(self) -> UioMsix:
        """uio_msi's vectors (:class:`NotSupportedError` under another UIO driver)."""
        self._check_open()
        if self.node.name != "uio_msi":
            raise errors.NotSupportedError(
                f"{self.node.name or 'this UIO driver'} connects no vectors to eventfds",
                device=self.name,
                remedy=f"`pyvfio bind {self.pci or 'BDF'} --driver uio_msi`")
        if self._msix is None:
            self._msix = UioMsix(self)
        return self._msix

    # -- DMA --------------------------------------------------------------------------------
    def bus_address(self, buf: Any, offset: int = 0) -> int:
        """Where the device reaches ``buf[offset]``: its physical address (no IOMMU)."""
        from pyvfio.uio.dma import bus_address
        return bus_address(buf, offset, device=self.name)

    # -- lifetime ----------------------------------------------------------------------------
    def _release(self) -> None:
        first: Optional[BaseException] = None
        for step in ([self._msix.disable] if self._msix is not None else []) + \
                [m.close for m in self._maps.values()] + [p.close for p in self._ports.values()] \
                + ([self._config_space.close] if self._config_space is not None else []):
            try:
                step()
            except Exception as exc:          # keep releasing; report the first
                first = first or exc
        self._maps.clear()
        self._ports.clear()
        try:
            syscalls.close(self.fd)
        except errors.PyvfioError as exc:
            first = first or exc
        if first is not None:
            raise first

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<UioDevice {self.name} {self.node.name} {state}>"


def open_uio(which: str) -> UioDevice:
    """Open the UIO device ``uioN``, or the one of PCI function ``which``."""
    return UioDevice(_sysfs.find(which))
