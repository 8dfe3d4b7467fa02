"""A VFIO interrupt index: INTx, MSI, MSI-X, ERR or REQ of a device.

``VFIO_DEVICE_GET_IRQ_INFO`` says how many vectors an index has and what it
supports; ``VFIO_DEVICE_SET_IRQS`` connects vectors to eventfds (the kernel
writes 1 to the eventfd at each interrupt), masks and unmasks them, or fires
them for testing.  INTx is level-triggered: VFIO masks it when it fires
(AUTOMASKED) and the driver unmasks it after serving the device.
"""
from __future__ import annotations

import asyncio
import errno
import os
import select
import struct
import time
from typing import Any, Dict, List, NamedTuple, Optional

from pyvfio import errors
from pyvfio.core import args, argsz
from pyvfio.core.eventfd import check_timeout
from pyvfio.core.handle import Handle
from pyvfio.core import syscalls
from pyvfio.core.uapi import ffi, lib

__all__ = ["Irq", "IrqInfo", "INDEX_NAMES"]

_ATTR = {lib.VFIO_PCI_INTX_IRQ_INDEX: "intx", lib.VFIO_PCI_MSI_IRQ_INDEX: "msi",
         lib.VFIO_PCI_MSIX_IRQ_INDEX: "msix"}

INDEX_NAMES = {
    lib.VFIO_PCI_INTX_IRQ_INDEX: "INTx",
    lib.VFIO_PCI_MSI_IRQ_INDEX: "MSI",
    lib.VFIO_PCI_MSIX_IRQ_INDEX: "MSI-X",
    lib.VFIO_PCI_ERR_IRQ_INDEX: "ERR",
    lib.VFIO_PCI_REQ_IRQ_INDEX: "REQ",
}


class IrqInfo(NamedTuple):
    index: int  # type: ignore[assignment]  # the kernel's field names shadow tuple's methods
    flags: int
    count: int  # type: ignore[assignment]

    @property
    def eventfd(self) -> bool:
        return bool(self.flags & lib.VFIO_IRQ_INFO_EVENTFD)

    @property
    def maskable(self) -> bool:
        return bool(self.flags & lib.VFIO_IRQ_INFO_MASKABLE)

    @property
    def automasked(self) -> bool:
        return bool(self.flags & lib.VFIO_IRQ_INFO_AUTOMASKED)

    @property
    def noresize(self) -> bool:
        return bool(self.flags & lib.VFIO_IRQ_INFO_NORESIZE)


def irq_info(fd: int, index: int, device: Optional[str] = None) -> IrqInfo:
    p = argsz.new("struct vfio_irq_info", index=index)
    syscalls.ioctl(fd, lib.VFIO_DEVICE_GET_IRQ_INFO, p, device=device)
    return IrqInfo(index, p.flags, p.count)


#: INTx, MSI and MSI-X exclude each other: vfio-pci enables one at a time.
_EXCLUSIVE = (lib.VFIO_PCI_INTX_IRQ_INDEX, lib.VFIO_PCI_MSI_IRQ_INDEX, lib.VFIO_PCI_MSIX_IRQ_INDEX)


class Irq(Handle):
    """One interrupt index of a device, with the eventfds it signals.

    It lives as long as its device: after the device is closed every call
    raises :class:`~pyvfio.errors.ClosedError`.
    """

    def __init__(self, device: Any, index: int) -> None:
        self.device = device
        self._owner = device
        self.index = index
        self.name = INDEX_NAMES.get(index, f"IRQ index {index}")
        self.info = irq_info(device.fd, index, device.name)
        self.eventfds: List[int] = []
        self._triggers: Dict[int, Any] = {}             # vector -> prebuilt SET_IRQS trigger argument

    @property
    def count(self) -> int:
        """How many vectors the index has."""
        return self.info.count

    @property
    def closed(self) -> bool:
        return bool(self.device.closed)

    def _check_open(self) -> int:
        if self.device.closed:
            raise errors.ClosedError(f"{self.name} of VFIO device {self.device.name}",
                                     device=self.device.name)
        return int(self.device.fd)

    def _set(self, flags: int, start: int, count: int, data: bytes = b"") -> None:
        self.device._check_open()
        p = argsz.new_var("struct vfio_irq_set", "data", len(data), flags=flags,
                          index=self.index, start=start, count=count)
        if data:
            ffi.memmove(p.ptr.data, data, len(data))
        syscalls.ioctl(self.device.fd, lib.VFIO_DEVICE_SET_IRQS, p.ptr, device=self.device.name)

    def _vectors(self, start: int, count: int) -> None:
        self._check_open()
        start = args.integer(start, "vector", device=self.device.name, hi=None)
        count = args.integer(count, "count", device=self.device.name, hi=None)
        if start + count > self.info.count:
            raise errors.InvalidArgumentError(
                f"vectors {start}..{start + count - 1} do not exist: {self.name} has "
                f"{self.info.count}", device=self.device.name)

    def enable(self, count: Optional[int] = None) -> List[int]:
        """Connect vectors 0..count-1 to new eventfds (all vectors by default).

        Returns the eventfds; :meth:`wait` reads them.
        """
        self._check_open()
        if count is None:
            count = self.info.count
        else:
            count = args.integer(count, "count", device=self.device.name, lo=1,
                                 hi=max(self.info.count, 1))
        self._vectors(0, count)
        if count == 0:
            raise errors.InvalidArgumentError(f"{self.name} has no vectors", device=self.device.name)
        if self.index in _EXCLUSIVE:
            for other in self.device._irqs.values():
                if other is not self and other.index in _EXCLUSIVE and other.eventfds:
                    raise errors.BusyError(
                        f"{other.name} is enabled: vfio-pci enables one of INTx, MSI and "
                        f"MSI-X at a time", device=self.device.name,
                        remedy=f"disable {other.name} first (device.{_ATTR[other.index]}"
                               ".disable())")
        if self.eventfds:
            self.disable()
        fds = []
        try:
            for v in range(count):
                fds.append(syscalls.eventfd(0, os.O_NONBLOCK,
                                            what=f"eventfd {self.device.name} {self.name}[{v}]"))
            self._set(lib.VFIO_IRQ_SET_DATA_EVENTFD | lib.VFIO_IRQ_SET_ACTION_TRIGGER, 0, count,
                      struct.pack(f"{count}i", *fds))
        except BaseException:
            for fd in fds:
                syscalls.close(fd)
            raise
        self.eventfds = fds
        return list(fds)

    def disable(self) -> None:
        """Disconnect every vector (DATA_NONE, count 0) and close the eventfds."""
        fds, self.eventfds = self.eventfds, []
        try:
            if fds and not self.device.closed:
                self._set(lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0)
        finally:
            for fd in fds:
                syscalls.close(fd)

    def mask(self, vector: int = 0) -> None:
        """ACTION_MASK: hold the vector's interrupts back."""
        self._vectors(vector, 1)
        self._set(lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_MASK, vector, 1)

    def unmask(self, vector: int = 0) -> None:
        """ACTION_UNMASK: let the vector fire again (INTx: after the device was served)."""
        self._vectors(vector, 1)
        self._set(lib.VFIO_IRQ_SET_DATA_NONE | lib.VFIO_IRQ_SET_ACTION_UNMASK, vector, 1)

    def trigger(self, vector: int = 0) -> None:
        """Fire the vector's eventfd from the kernel side, as an interrupt would (for tests)."""
        try:
            arg = self._triggers.get(vector) if type(vector) is int else None
        except TypeError:
            arg = None
        if arg is None:                       # built once per vector: this is a hot path
            self._vectors(vector, 1)
            arg = self._triggers[vector] = argsz.new(
                "struct vfio_irq_set", flags=lib.VFIO_IRQ_SET_DATA_NONE
                | lib.VFIO_IRQ_SET_ACTION_TRIGGER, index=self.index, start=vector, count=1)
        syscalls.ioctl(self.device._check_open(), lib.VFIO_DEVICE_SET_IRQS, arg,
                       device=self.device.name)

    def _fd(self, vector: int) -> int:
        self._check_open()
        if not self.eventfds:
            raise errors.InvalidArgumentError(
                f"{self.name} is not enabled", device=self.device.name,
                remedy=f"call enable() on the {self.name} index first")
        self._vectors(vector, 1)
        if vector >= len(self.eventfds):
            raise errors.InvalidArgumentError(f"vector {vector} is not enabled",
                                              device=self.device.name)
        return self.eventfds[vector]

    def pending(self, vector: int = 0) -> int:
        """How many interrupts arrived since the last read (0 if none); clears the count."""
        return self._read_count(self._fd(vector))

    def _read_count(self, fd: int) -> int:
        try:
            return int.from_bytes(syscalls.read(fd, 8), "little")
        except errors.PyvfioError as exc:
            if exc.errno == errno.EAGAIN:     # nothing pending
                return 0
            raise

    def wait(self, vector: int = 0, timeout: Optional[float] = None) -> int:
        """Wait for an interrupt on ``vector``; returns how many arrived.

        Raises :class:`~pyvfio.errors.TimedOutError` after ``timeout`` seconds
        (None or ``math.inf``: wait forever).
        """
        fd = self._fd(vector)
        timeout = check_timeout(timeout, device=self.device.name)
        events = ((fd, select.POLLIN),)
        deadline = None if timeout is None else time.monotonic() + timeout
        if syscalls.poll(events, timeout):    # the common case: one poll, one read
            n = self._read_count(fd)
            if n:
                return n
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if syscalls.poll(events, left):
                n = self._read_count(fd)
                if n:
                    return n
            if deadline is not None and time.monotonic() >= deadline:
                raise errors.TimedOutError(
                    f"no {self.name} interrupt on vector {vector} within {timeout} s",
                    device=self.device.name,
                    remedy="check that the device raises it and that bus mastering is on")

    async def wait_async(self, vector: int = 0, timeout: Optional[float] = None) -> int:
        """:meth:`wait` for asyncio: the event loop watches the eventfd."""
        fd = self._fd(vector)
        timeout = check_timeout(timeout, device=self.device.name)
        loop = asyncio.get_running_loop()
        while True:
            n = self.pending(vector)
            if n:
                return n
            fut = loop.create_future()
            loop.add_reader(fd, lambda: None if fut.done() else fut.set_result(None))
            try:
                await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                raise errors.TimedOutError(
                    f"no {self.name} interrupt on vector {vector} within {timeout} s",
                    device=self.device.name) from None
            finally:
                loop.remove_reader(fd)

    def close(self) -> None:
        """Disable the index (the Irq object itself lives as long as its device)."""
        self.disable()

    def __repr__(self) -> str:
        return (f"<Irq {self.name} of {self.device.name}: {self.info.count} vectors, "
                f"{len(self.eventfds)} enabled>")
