"""MockKernel: the file table and node registry behind :mod:`pyvfio.core.syscalls`.

It owns a fake root (``dev/`` and ``sys/`` under a directory the caller
gives), creates one instance of every registered family
(:mod:`pyvfio.mock.core.family`) with that family's configuration, and
answers system calls: open(2) of a path a family claimed creates that
family's :class:`~pyvfio.mock.core.family.MockFile`; calls on its descriptor
go to the file; writes below a prefix a family claimed go to that family;
everything else goes to the real kernel, so eventfds, poll and anonymous
memory are real.

Descriptors of mock nodes are real descriptors (duplicates of /dev/null), so
numbers are unique and leak checks are meaningful.  Errors are
``OSError(errno, strerror)`` raised where Linux returns that errno.  Nothing
here knows a family.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import operator
import os
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from pyvfio.core import syscalls
from pyvfio.core.sysfs import Host, use_host
from pyvfio.mock.core.family import Family, MockFile, NodeFactory, ordered, registered
from pyvfio.mock.core.uaccess import addr_of, fail

__all__ = ["MockKernel"]

PathLike = Union[str, "os.PathLike[str]"]


class MockKernel:
    """A mock kernel for :func:`pyvfio.core.syscalls.use`, made of the registered families.

    ``tmpdir`` receives ``dev/`` (:attr:`devroot`) and ``sys/`` (:attr:`sysfs`).
    Each keyword argument belongs to the family whose ``Config`` declares it
    (``devices=`` to pci, ``iommu=`` to the platform IOMMU, ``memlock=`` to
    the process...; :meth:`options` lists them).  Each family is reachable
    as an attribute named after it: ``kernel.pci``, ``kernel.vfio``.
    """

    name = "mock"

    def __init__(self, tmpdir: PathLike, **config: Any) -> None:
        self.root = os.path.abspath(os.fspath(tmpdir))
        self.devroot = os.path.join(self.root, "dev")
        self.sysfs = os.path.join(self.root, "sys")
        #: The machine the fake tree describes, for :func:`pyvfio.core.sysfs.use_host`.
        self.host = Host(sysfs=self.sysfs, dev=self.devroot)
        self._real = syscalls.Kernel()
        self._files: Dict[int, MockFile] = {}
        self._lock = threading.RLock()
        self._nodes: Dict[str, NodeFactory] = {}
        self._writers: List[Tuple[str, Callable[[str, bytes], None]]] = []
        self._families: Dict[str, Family] = {}
        classes = ordered(registered())
        owner = {f.name: cls for cls in classes for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(config) - set(owner))
        if unknown:
            raise TypeError(f"MockKernel got unknown options {unknown}; "
                            f"the families take {sorted(owner)}")
        os.makedirs(self.devroot, exist_ok=True)
        os.makedirs(self.sysfs, exist_ok=True)
        for cls in classes:
            mine = {k: v for k, v in config.items() if owner[k] is cls}
            family = cls(self, cls.Config(**mine))
            if hasattr(self, cls.name):
                raise ValueError(f"a mock family may not be called {cls.name!r}")
            self._families[cls.name] = family
            setattr(self, cls.name, family)
        for family in self._families.values():
            family.setup()

    @staticmethod
    def options() -> Dict[str, List[str]]:
        """The keyword arguments each registered family takes."""
        return {name: [f.name for f in dataclasses.fields(cls.Config)]
                for name, cls in registered().items()}

    # -- what families use (KernelState) ----------------------------------------------------

    def family(self, name: str) -> Family:
        """The instance of family ``name``."""
        try:
            return self._families[name]
        except KeyError:
            raise LookupError(f"no mock family {name!r} (registered: "
                              f"{sorted(self._families)})") from None

    def add_node(self, path: str, factory: NodeFactory) -> None:
        """Answer open(2) of ``path`` with ``factory(path)``."""
        self._nodes[os.path.abspath(path)] = factory

    def add_writer(self, prefix: str, writer: Callable[[str, bytes], None]) -> None:
        """Answer writes to files below ``prefix`` with ``writer(path, data)``."""
        self._writers.append((os.path.abspath(prefix), writer))

    def install(self, f: MockFile) -> int:
        """Give ``f`` a descriptor (a real one, so numbers are unique).

        A file with an ``open_fd()`` method supplies its own (e.g. an eventfd
        that poll(2) sees become readable); otherwise it is a /dev/null.
        """
        opener = getattr(f, "open_fd", None)
        fd = opener() if opener is not None else os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self._files[fd] = f.get()
        return fd

    def is_mock_fd(self, fd: int) -> bool:
        return fd in self._files

    def file_of(self, fd: int) -> Optional[MockFile]:
        """The mock file behind ``fd``; None for a real file; EBADF if ``fd`` is not open."""
        f = self._files.get(fd)
        if f is not None:
            return f
        try:
            os.fstat(fd)
        except OSError:
            raise fail(errno.EBADF) from None
        return None

    def files(self) -> Iterable[MockFile]:
        """The mock files open now."""
        return list(self._files.values())

    def leaks(self) -> List[str]:
        """What is still open or held: mock fds, then each family's report."""
        with self._lock:
            out = [f"fd {fd} open on {f.path}" for fd, f in sorted(self._files.items())]
            for family in self._families.values():
                out += family.leaks()
            return out

    def _service(self) -> None:
        for family in self._families.values():
            family.service()

    # -- the backend interface of pyvfio.core.syscalls --------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        with self._lock:
            self._service()
            p = os.path.abspath(os.fspath(path))
            factory = self._nodes.get(p)
            if factory is None:
                if (p == self.devroot or p.startswith(self.devroot + os.sep)) and not os.path.isdir(p):
                    raise fail(errno.ENOENT)
                return self._real.open(path, flags, mode)
            return self.install(factory(p))

    def close(self, fd: int) -> None:
        with self._lock:
            f = self._files.pop(fd, None)
            if f is None:
                self._real.close(fd)
                self._service()
                return
            os.close(fd)
            f.put()

    def ioctl(self, fd: int, request: int, arg: Any) -> int:
        with self._lock:
            self._service()
            f = self._files.get(fd)
            if f is None:
                return self._real.ioctl(fd, request, arg)
            ret = f.ioctl(request, addr_of(arg))
            self._service()
            return ret

    def mmap(self, fd: int, length: int, prot: int, flags: int, offset: int) -> Any:
        with self._lock:
            f = self._files.get(fd)
            if f is None:
                return self._real.mmap(fd, length, prot, flags, offset)
            return f.mmap(length, prot, flags, offset)

    def munmap(self, mapping: Any) -> None:
        self._real.munmap(mapping)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        offset = operator.index(offset)
        size = operator.index(size)     # as os.read: a float or NaN size is a TypeError
        if size < 0:
            raise fail(errno.EINVAL)
        with self._lock:
            self._service()
            f = self._files.get(fd)
            if f is None:
                return self._real.pread(fd, size, offset)
            if offset < 0:
                raise fail(errno.EINVAL)
            return bytes(f.rw(offset, size, None))

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        offset = operator.index(offset)
        with self._lock:
            self._service()
            f = self._files.get(fd)
            if f is None:
                return self._real.pwrite(fd, data, offset)
            if offset < 0:
                raise fail(errno.EINVAL)
            ret = f.rw(offset, len(data), bytes(data))
            self._service()
            return int(ret)

    def read(self, fd: int, size: int) -> bytes:
        size = operator.index(size)     # as os.read: a float or NaN size is a TypeError
        if size < 0:
            raise fail(errno.EINVAL)
        with self._lock:
            self._service()
            f = self._files.get(fd)
            if f is None:
                return self._real.read(fd, size)
            return bytes(f.rw(None, size, None))

    def write(self, fd: int, data: Any) -> int:
        with self._lock:
            f = self._files.get(fd)
            if f is None:
                ret = self._real.write(fd, data)
            else:
                ret = f.rw(None, len(data), bytes(data))
            self._service()
            return ret

    def socket(self, family: int, type_: int, proto: int,
               options: Sequence[Tuple[int, int, int]] = ()) -> int:
        """A socket a family models (``Family.socket``), else a real one."""
        with self._lock:
            for fam in self._families.values():
                make = getattr(fam, "socket", None)
                f = make(family, type_, proto) if make is not None else None
                if f is not None:
                    return self.install(f)
        return self._real.socket(family, type_, proto, options)

    def poll(self, fds: Sequence[Tuple[int, int]], timeout_ms: Optional[int]) -> List[Tuple[int, int]]:
        with self._lock:
            self._service()
        return self._real.poll(fds, timeout_ms)

    def write_file(self, path: str, data: bytes) -> int:
        p = os.path.abspath(path)
        with self._lock:
            for prefix, writer in self._writers:
                if p == prefix or p.startswith(prefix + os.sep):
                    writer(p, bytes(data))
                    return len(data)
        return self._real.write_file(path, data)

    def modprobe(self, module: str) -> Tuple[int, str]:
        for family in self._families.values():
            answer = family.modprobe(module)
            if answer is not None:
                return answer
        return 1, f"modprobe: FATAL: Module {module} not found in the mock kernel"

    def __getattr__(self, name: str) -> Any:
        """System calls no family models go to the real kernel."""
        if name.startswith("_") or not hasattr(syscalls.Kernel, name):
            raise AttributeError(f"MockKernel has no attribute {name!r} (its families: "
                                 f"{', '.join(self.__dict__.get('_families', ()))})")
        return getattr(self._real, name)

    # -- end ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def installed(self) -> Iterator["MockKernel"]:
        """Answer every system call and make the fake tree the host, inside the block."""
        with syscalls.use(self), use_host(self.host):
            yield self

    def close_all(self) -> None:
        """Close every mock descriptor still open (as process exit would)."""
        with self._lock:
            for fd in list(self._files):
                self.close(fd)

    def shutdown(self) -> None:
        """Close everything and release the families' host resources."""
        self.close_all()
        for family in self._families.values():
            family.shutdown()
