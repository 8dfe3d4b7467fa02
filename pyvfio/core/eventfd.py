"""eventfd(2): the kernel's 64-bit event counter, the currency of interrupts.

VFIO IRQs, vhost kick/call/err, UIO's uio_msi vectors and KVM's irqfd and
ioeventfd all hand the kernel an eventfd.  The kernel adds to its counter
when the event fires; a read returns the counter and resets it to 0.
"""
from __future__ import annotations

import asyncio
import errno
import math
import select
import time
from typing import Optional

from pyvfio import errors
from pyvfio.core import args, syscalls
from pyvfio.core.handle import Handle

__all__ = ["EventFd", "check_timeout"]

_EFD_NONBLOCK = 0o4000


def check_timeout(timeout: Optional[float], *, device: Optional[str] = None) -> Optional[float]:
    """A wait's timeout in seconds: None or ``math.inf`` wait forever; negative or NaN is refused."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise errors.InvalidArgumentError(
            f"timeout must be a number of seconds or None, not {timeout!r}", device=device)
    if math.isnan(timeout) or timeout < 0:
        raise errors.InvalidArgumentError(
            f"timeout must be >= 0 seconds (None or math.inf: forever), not {timeout!r}",
            device=device)
    return None if math.isinf(timeout) else float(timeout)


class EventFd(Handle):
    """A non-blocking eventfd owned by the library.

    ``what`` names it in messages and in :func:`pyvfio.core.syscalls.open_fds`
    (e.g. ``"vhost-net vring 0 call"``).
    """

    def __init__(self, what: str = "eventfd", *, initval: int = 0) -> None:
        self.name = str(what)
        initval = args.integer(initval, "initval", device=self.name, hi=args.U32)
        self.fd = syscalls.eventfd(initval, _EFD_NONBLOCK, what=self.name)
        self._events = ((self.fd, select.POLLIN),)

    @property
    def closed(self) -> bool:
        return self._closed or getattr(self, "fd", None) is None

    def fileno(self) -> int:
        self._check_open()
        return self.fd

    def _release(self) -> None:
        syscalls.close(self.fd)

    def signal(self, n: int = 1) -> None:
        """Add ``n`` to the counter, as the kernel does when the event fires."""
        self._check_open()
        if not isinstance(n, int) or isinstance(n, bool) or not 0 < n < (1 << 64) - 1:  # noqa
            raise errors.InvalidArgumentError(f"eventfd increment must be 1..2**64-2, not {n!r}",
                                              device=self.name)
        syscalls.write(self.fd, n.to_bytes(8, "little"), device=self.name)

    def pending(self) -> int:
        """The counter (events since the last read), reset to 0; 0 if none."""
        self._check_open()
        try:
            return int.from_bytes(syscalls.read(self.fd, 8, device=self.name), "little")
        except errors.PyvfioError as exc:
            if exc.errno == errno.EAGAIN:
                return 0
            raise

    def wait(self, timeout: Optional[float] = None) -> int:
        """Block until the counter is non-zero; return it (and reset it).

        Raises :class:`~pyvfio.errors.TimedOutError` after ``timeout`` seconds
        (None or ``math.inf``: forever).
        """
        self._check_open()
        timeout = check_timeout(timeout, device=self.name)
        events = self._events
        deadline = None if timeout is None else time.monotonic() + timeout
        left = timeout
        while True:
            if syscalls.poll(events, left):
                n = self.pending()
                if n:
                    return n
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.TimedOutError(f"no event on {self.name} within {timeout} s",
                                               device=self.name)

    async def wait_async(self, timeout: Optional[float] = None) -> int:
        """:meth:`wait` for asyncio: the running loop watches the fd."""
        self._check_open()
        timeout = check_timeout(timeout, device=self.name)
        loop = asyncio.get_running_loop()
        while True:
            n = self.pending()
            if n:
                return n
            fut = loop.create_future()
            loop.add_reader(self.fd, lambda: None if fut.done() else fut.set_result(None))
            try:
                await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                raise errors.TimedOutError(f"no event on {self.name} within {timeout} s",
                                           device=self.name) from None
            finally:
                loop.remove_reader(self.fd)
