"""The one place where pyvfio makes system calls.

Every open, close, ioctl, mmap, munmap, pread, pwrite, read, write, eventfd
and poll of the library goes through the functions of this module.  They hand
the call to the current *backend*: :class:`Kernel` (the real system calls) by
default, or a stand-in such as :class:`pyvfio.mock.MockKernel` installed with
:func:`use`.  Failures become :mod:`pyvfio.errors` exceptions that name the
call, the path of the file descriptor and a remedy.

The module also keeps account of the descriptors and mappings it handed out,
so that tests (and users) can check that nothing leaked: :func:`open_fds`,
:func:`live_mappings`.

Fault injection: inside ``with fail_nth(k, errno.ENOMEM) as inj:`` the k-th
system call made through this module by the current thread fails with that
errno before it reaches the backend (the way ``/proc/thread-self/fail-nth``
fails the k-th allocation in the kernel); ``inj.calls`` counts the calls,
``inj.fired`` says whether one was failed.  Release calls (close, munmap)
are never failed: Linux releases the fd or mapping even when they
report an error, so failing them tests nothing real.
"""
from __future__ import annotations

import contextlib
import errno as _errno
import errno as errno_
import mmap as _mmap
import os
import select
import socket as _socket
import threading
from typing import Any, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple, Union, cast

from pyvfio import errors

_builtin_open = open

__all__ = [
    "Kernel", "backend", "use", "open", "close", "ioctl", "mmap", "munmap", "ioperm",
    "pread", "pwrite", "read", "write", "eventfd", "poll", "path_of",
    "open_fds", "live_mappings", "ioctl_name", "memfd_create", "ftruncate", "mlock",
    "read_file", "write_file", "modprobe", "stat", "mkdir", "rmdir", "symlink", "unlink",
    "socket",
    "FaultInjector", "fail_nth", "RELEASE_CALLS", "TYPICAL_ERRNO",
]


class Kernel:
    """The real kernel: thin calls into libc and the os module."""

    name = "real"

    def __init__(self) -> None:
        from pyvfio.core.uapi import ffi, lib  # the compiled binding; loaded on first use
        self._ffi = ffi
        self._lib = lib
        self._null = ffi.NULL
        self._pollers = threading.local()     # per thread: {(fd, events) pairs: select.poll}

    def open(self, path: str, flags: int, mode: int = 0o600) -> int:
        return os.open(path, flags | os.O_CLOEXEC, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def ioctl(self, fd: int, request: int, arg: Any) -> int:
        """ioctl(2) with ``arg`` a cdata pointer, an int, or None."""
        if arg is None:
            arg = self._null
        elif isinstance(arg, int):
            arg = self._ffi.cast("void *", arg)
        ret = self._lib.pyvfio_ioctl(fd, request, arg)
        if ret < 0:
            err = self._ffi.errno
            raise OSError(err, os.strerror(err))
        return int(ret)

    def mmap(self, fd: int, length: int, prot: int, flags: int, offset: int) -> _mmap.mmap:
        return _mmap.mmap(fd, length, flags=flags, prot=prot, offset=offset)

    def munmap(self, mapping: _mmap.mmap) -> None:
        mapping.close()

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def read(self, fd: int, size: int) -> bytes:
        return os.read(fd, size)

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def eventfd(self, initval: int, flags: int) -> int:
        fd = self._lib.eventfd(initval, flags | os.O_CLOEXEC)
        if fd < 0:
            err = self._ffi.errno
            raise OSError(err, os.strerror(err))
        return int(fd)

    def socket(self, family: int, type_: int, proto: int,
               options: Sequence[Tuple[int, int, int]] = ()) -> int:
        s = _socket.socket(family, type_ | _socket.SOCK_CLOEXEC, proto)
        try:
            for level, name, value in options:
                s.setsockopt(level, name, value)
        except BaseException:
            s.close()
            raise
        return s.detach()

    def stat(self, path: str) -> os.stat_result:
        return os.stat(path)

    def poll(self, fds: Sequence[Tuple[int, int]], timeout_ms: Optional[int]) -> List[Tuple[int, int]]:
        """poll(2).  A ``select.poll`` object is only the array poll(2) gets, so the one
        built for a set of (fd, events) pairs is kept and reused by the same thread (a
        poll object must not be polled by two threads at once); at most 32 sets."""
        key: Optional[Tuple[Tuple[int, int], ...]]
        p: Optional[select.poll]
        # the thread-local's own namespace, keyed by (fd, events) pair tuples
        cache = cast(Dict[Tuple[Tuple[int, int], ...], select.poll], self._pollers.__dict__)
        try:
            key = fds if type(fds) is tuple else tuple(fds)
            p = cache.get(key)
        except TypeError:                     # unhashable pairs (lists): a one-off object
            key = p = None
        if p is None:
            p = select.poll()
            for fd, events in fds:
                p.register(fd, events)
            if key is not None:
                if len(cache) >= 32:
                    cache.clear()
                cache[key] = p
        return p.poll(timeout_ms)

    def memfd_create(self, name: str, flags: int) -> int:
        return os.memfd_create(name, flags | os.MFD_CLOEXEC)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def mlock(self, addr: int, length: int) -> None:
        if self._lib.mlock(self._ffi.cast("void *", addr), length) != 0:
            err = self._ffi.errno
            raise OSError(err, os.strerror(err))

    def ioperm(self, start: int, num: int, on: bool) -> None:
        if self._lib.pyvfio_ioperm(start, num, 1 if on else 0) != 0:
            err = self._ffi.errno
            raise OSError(err, os.strerror(err))

    def read_file(self, path: str) -> bytes:
        with _builtin_open(path, "rb") as f:
            return f.read()

    def write_file(self, path: str, data: bytes) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            return os.write(fd, data)
        finally:
            os.close(fd)

    def modprobe(self, module: str) -> Tuple[int, str]:
        import subprocess  # only here: loading modules is rare and subprocess costs import time
        proc = subprocess.run(["modprobe", module], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, check=False)
        return proc.returncode, proc.stderr.decode(errors="replace").strip()


_backend: Any = None
_lock = threading.Lock()
_fds: Dict[int, str] = {}            # fd -> path (or a description)
_maps: Dict[int, Tuple[Any, str]] = {}  # id(mapping) -> (mapping, description)


# -- fault injection ---------------------------------------------------------------

#: Calls that release something; never failed by :func:`fail_nth`.
RELEASE_CALLS = frozenset({"close", "munmap"})

_armed = 0                       # injectors active in any thread (fast path: 0)
_tls = threading.local()


#: The errno a failing call of each kind typically returns (what :func:`fail_nth` injects
#: when no errno is given).
TYPICAL_ERRNO: Dict[str, int] = {
    "open": _errno.ENOMEM, "ioctl": _errno.ENOMEM, "mmap": _errno.ENOMEM,
    "eventfd": _errno.EMFILE, "memfd_create": _errno.EMFILE, "ftruncate": _errno.ENOSPC,
    "mlock": _errno.ENOMEM, "read": _errno.EIO, "write": _errno.EIO, "pread": _errno.EIO,
    "pwrite": _errno.EIO, "poll": _errno.ENOMEM, "read_file": _errno.EIO,
    "write_file": _errno.EIO,
}


class FaultInjector:
    """The state of one :func:`fail_nth` block in one thread.

    ``calls`` counts the system calls seen (release calls excluded) and
    ``trace`` names them; ``fired`` is the name of the call that was failed
    (None if none) and ``errno`` what it failed with; ``k == 0`` only counts.
    """

    def __init__(self, k: int, err: Optional[int], ops: Optional[FrozenSet[str]]) -> None:
        self.k = k
        self.errno = err
        self.ops = ops
        self.calls = 0
        self.fired: Optional[str] = None
        self.trace: List[str] = []

    def _check(self, op: str) -> None:
        if op in RELEASE_CALLS or (self.ops is not None and op not in self.ops):
            return
        self.calls += 1
        self.trace.append(op)
        if self.calls == self.k:
            self.fired = op
            if self.errno is None:
                self.errno = TYPICAL_ERRNO.get(op, _errno.ENOMEM)
            raise OSError(self.errno, os.strerror(self.errno))


@contextlib.contextmanager
def fail_nth(k: int, err: Optional[int] = None, *,
             ops: Optional[Iterable[str]] = None) -> Iterator[FaultInjector]:
    """Fail the ``k``-th system call (1-based) of this thread inside the block.

    It fails with ``err``, or the call's typical errno (:data:`TYPICAL_ERRNO`)
    if None.  ``k=0`` fails nothing and just counts.  ``ops`` limits which
    calls count (names of this module's functions: ``"ioctl"``, ``"open"``,
    ``"mmap"`` ...).  The failure takes the library's normal error path, so
    the caller sees the :mod:`pyvfio.errors` exception a real failure gives.
    """
    global _armed
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise errors.InvalidArgumentError(f"fail_nth: k must be an int >= 0, not {k!r}")
    if err is not None and (isinstance(err, bool) or not isinstance(err, int)
                            or not 0 < err < 4096):
        raise errors.InvalidArgumentError(f"fail_nth: err must be an errno (1..4095), not {err!r}")
    if getattr(_tls, "injector", None) is not None:
        raise errors.BusyError("fail_nth blocks do not nest in one thread", op="fail_nth")
    inj = FaultInjector(k, err, frozenset(ops) if ops is not None else None)
    _tls.injector = inj
    with _lock:
        _armed += 1
    try:
        yield inj
    finally:
        _tls.injector = None
        with _lock:
            _armed -= 1


# The kernel's own fail-nth (/proc/thread-self/fail-nth) is armed and read around each
# call by pyvfio.core.faults; these four touch that file directly, never through the
# backend, because the backend is what is being wrapped.

def failnth_open(path: str) -> int:
    """Open a thread's fail-nth file (``/proc/thread-self/fail-nth``)."""
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


def failnth_set(fd: int, n: int) -> None:
    """Make the n-th fault-injection point of this task fail (0: disarm)."""
    os.write(fd, str(n).encode())


def failnth_left(fd: int) -> int:
    """The points left before the failure (0: it fired, or nothing armed)."""
    return int(os.pread(fd, 32, 0).split()[0])


def failnth_close(fd: int) -> None:
    """Disarm and close the fail-nth file."""
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)


def _inject(op: str) -> None:
    """Raise the injected OSError if this is the call to fail (called by every wrapper)."""
    inj = getattr(_tls, "injector", None)
    if inj is not None:
        inj._check(op)


def backend() -> Any:
    """The backend now in use (created on first use)."""
    global _backend
    if _backend is None:
        _backend = Kernel()
    return _backend


@contextlib.contextmanager
def use(new_backend: Any) -> Iterator[Any]:
    """Make ``new_backend`` take every system call inside the ``with`` block."""
    global _backend
    old = _backend
    _backend = new_backend
    try:
        yield new_backend
    finally:
        _backend = old


def path_of(fd: int) -> Optional[str]:
    """The path an fd of ours was opened with, for messages."""
    return _fds.get(fd)


def open_fds() -> Dict[int, str]:
    """The descriptors opened here and not yet closed (fd -> path)."""
    with _lock:
        return dict(_fds)


def live_mappings() -> List[str]:
    """Descriptions of the mappings made here and not yet unmapped."""
    with _lock:
        return [desc for _, desc in _maps.values()]


def _fail(exc: OSError, op: str, path: Optional[str], device: Optional[str],
          remedy: Optional[str] = None, dma: bool = False) -> errors.PyvfioError:
    if isinstance(exc, errors.PyvfioError):
        return exc
    err = exc.errno if exc.errno is not None else 0
    return errors.from_errno(err, op=op, path=path, device=device, remedy=remedy, dma=dma)


def open(path: str, flags: int = os.O_RDWR, *, device: Optional[str] = None) -> int:  # noqa: A001
    """open(2) a device node or file; the fd is remembered until :func:`close`."""
    try:
        if _armed:
            _inject("open")
        fd = backend().open(path, flags)
    except OSError as exc:
        raise _fail(exc, "open", path, device) from None
    return adopt(int(fd), path)


def adopt(fd: int, description: str) -> int:
    """Account for an fd the kernel handed out (e.g. by an ioctl) so it is closed like ours."""
    with _lock:
        _fds[fd] = description
    return fd


def close(fd: int) -> None:
    """close(2); closing an fd twice is refused rather than closing a stranger's fd."""
    with _lock:
        path = _fds.pop(fd, None)
    if path is None:
        raise errors.ClosedError(f"file descriptor {fd}", op="close")
    try:
        backend().close(fd)
    except OSError as exc:
        raise _fail(exc, "close", path, None) from None


_names: Optional[Dict[int, List[str]]] = None

# Which ioctl names fit which node: VFIO reuses request numbers across
# container, group and device fds, so the number alone is ambiguous.
_NODE_PREFIXES = (
    ("/dev/vfio/vfio", ("VFIO_IOMMU_", "VFIO_GET_API", "VFIO_CHECK_EXT", "VFIO_SET_IOMMU")),
    ("/dev/vfio/devices/", ("VFIO_DEVICE_",)),
    ("/dev/iommu", ("IOMMU_",)),
    ("/dev/vhost", ("VHOST_",)),
    ("/dev/uio", ("UIO_",)),
    ("/dev/kvm", ("KVM_",)),
    ("/dev/vfio/", ("VFIO_GROUP_", "VFIO_DEVICE_")),
)


def ioctl_name(request: int, path: Optional[str] = None) -> str:
    """The uAPI name of an ioctl request number on the node ``path`` (for messages)."""
    global _names
    if _names is None:
        from pyvfio.core import uapi
        table: Dict[int, List[str]] = {}
        for name in uapi.IOCTLS:
            table.setdefault(getattr(uapi.lib, name), []).append(name)
        _names = table
    names = _names.get(request)
    if not names:
        return f"ioctl {request:#x}"
    if path and len(names) > 1:
        for node, prefixes in _NODE_PREFIXES:
            if node in path:
                if node == "/dev/vfio/" and ":" not in path:
                    prefixes = ("VFIO_GROUP_",)
                for n in names:
                    if n.startswith(prefixes):
                        return n
                break
    return names[0]


def ioctl(fd: int, request: int, arg: Any = None, *, device: Optional[str] = None,
          remedy: Optional[str] = None, dma: bool = False) -> int:
    """ioctl(2): ``arg`` is a cffi pointer (the kernel reads/writes it in place) or an int.

    ``dma=True`` tells the error mapping that the call pins memory.
    """
    b = _backend if _backend is not None else backend()
    try:
        if _armed:
            _inject("ioctl")
        return int(b.ioctl(fd, request, arg))
    except OSError as exc:
        path = _fds.get(fd, f"fd {fd}")
        raise _fail(exc, ioctl_name(request, path), path, device, remedy, dma) from None


def mmap(fd: int, length: int, offset: int = 0, *, prot: int = _mmap.PROT_READ | _mmap.PROT_WRITE,
         flags: int = _mmap.MAP_SHARED, device: Optional[str] = None,
         what: str = "mapping") -> _mmap.mmap:
    """mmap(2) ``length`` bytes of ``fd`` at ``offset`` (fd -1: anonymous memory)."""
    try:
        if _armed:
            _inject("mmap")
        m = backend().mmap(fd, length, prot, flags, offset)
    except (OSError, ValueError) as exc:
        err = getattr(exc, "errno", None) or 22
        raise errors.from_errno(err, op="mmap", path=_fds.get(fd, f"fd {fd}"),
                                device=device) from None
    with _lock:
        _maps[id(m)] = (m, f"{what}: {length:#x} bytes of {_fds.get(fd, 'anonymous memory')}"
                           f" at {offset:#x}")
    return cast("_mmap.mmap", m)


def munmap(mapping: _mmap.mmap) -> None:
    """munmap(2) a mapping made by :func:`mmap`.

    Refused with a clear error while Python objects (memoryviews) still point
    into it: unmapping then would turn their next access into a crash.
    """
    with _lock:
        entry = _maps.get(id(mapping))
    try:
        backend().munmap(mapping)
    except BufferError:
        raise errors.BusyError(
            "memory is still exported to Python objects",
            op="munmap", path=entry[1] if entry else None,
            remedy="release memoryviews and numpy arrays taken from the buffer "
                   "(`del view` or `view.release()`) before closing it") from None
    with _lock:
        _maps.pop(id(mapping), None)


def pread(fd: int, size: int, offset: int, *, device: Optional[str] = None) -> bytes:
    """pread(2): read ``size`` bytes at ``offset``."""
    try:
        if _armed:
            _inject("pread")
        data = backend().pread(fd, size, offset)
    except OSError as exc:
        raise _fail(exc, "pread", _fds.get(fd, f"fd {fd}"), device) from None
    if len(data) != size:
        raise errors.OutOfBoundsError(
            f"short read: {len(data)} of {size} bytes at {offset:#x}",
            op="pread", path=_fds.get(fd), device=device)
    return bytes(data)


def pwrite(fd: int, data: Union[bytes, bytearray, memoryview], offset: int, *,
           device: Optional[str] = None) -> int:
    """pwrite(2): write ``data`` at ``offset``."""
    try:
        if _armed:
            _inject("pwrite")
        n = backend().pwrite(fd, data, offset)
    except OSError as exc:
        raise _fail(exc, "pwrite", _fds.get(fd, f"fd {fd}"), device) from None
    if n != len(data):
        raise errors.OutOfBoundsError(
            f"short write: {n} of {len(data)} bytes at {offset:#x}",
            op="pwrite", path=_fds.get(fd), device=device)
    return int(n)


def read(fd: int, size: int, *, device: Optional[str] = None) -> bytes:
    """read(2)."""
    try:
        if _armed:
            _inject("read")
        return bytes(backend().read(fd, size))
    except OSError as exc:
        raise _fail(exc, "read", _fds.get(fd, f"fd {fd}"), device) from None


def write(fd: int, data: bytes, *, device: Optional[str] = None) -> int:
    """write(2)."""
    try:
        if _armed:
            _inject("write")
        return int(backend().write(fd, data))
    except OSError as exc:
        raise _fail(exc, "write", _fds.get(fd, f"fd {fd}"), device) from None


def eventfd(initval: int = 0, flags: int = 0, *, what: str = "eventfd") -> int:
    """eventfd(2); the fd is accounted like an opened one and closed with :func:`close`."""
    try:
        if _armed:
            _inject("eventfd")
        fd = backend().eventfd(initval, flags)
    except OSError as exc:
        raise _fail(exc, "eventfd", None, None) from None
    return adopt(int(fd), what)


def socket(family: int, type_: int, proto: int = 0, *,
           options: Sequence[Tuple[int, int, int]] = (), what: str = "socket") -> int:
    """socket(2) plus setsockopt(2) of ``(level, name, value)`` options; closed with :func:`close`.

    Data goes through :func:`read` and :func:`write` (a netlink socket sends
    to the kernel and receives its answers that way).
    """
    try:
        fd = backend().socket(family, type_, proto, options)
    except OSError as exc:
        raise _fail(exc, "socket", what, None) from None
    return adopt(int(fd), what)


def poll(fds: Sequence[Tuple[int, int]], timeout: Optional[float]) -> List[Tuple[int, int]]:
    """poll(2) on (fd, events) pairs; ``timeout`` in seconds, None waits forever."""
    ms = None if timeout is None else max(0, int(timeout * 1000))
    try:
        if _armed:
            _inject("poll")
        return cast("List[Tuple[int, int]]", backend().poll(fds, ms))
    except OSError as exc:
        raise _fail(exc, "poll", None, None) from None


def stat(path: str) -> os.stat_result:
    """stat(2) a path (owner and mode of a device node, for messages)."""
    b = backend()
    fn = getattr(b, "stat", None) or os.stat
    try:
        return fn(path)
    except OSError as exc:
        raise _fail(exc, "stat", path, None) from None


def _path_call(name: str, op: str, *args: Any) -> None:
    b = backend()
    fn = getattr(b, name, None) or getattr(os, name)
    try:
        fn(*args)
    except OSError as exc:
        raise _fail(exc, op, str(args[-1] if name == "symlink" else args[0]), None) from None


def mkdir(path: str, mode: int = 0o755) -> None:
    """mkdir(2) (configfs objects are made by mkdir)."""
    _path_call("mkdir", "mkdir", path, mode)


def rmdir(path: str) -> None:
    """rmdir(2)."""
    _path_call("rmdir", "rmdir", path)


def symlink(target: str, path: str) -> None:
    """symlink(2): ``path`` points at ``target`` (configfs links objects so)."""
    _path_call("symlink", "symlink", target, path)


def unlink(path: str) -> None:
    """unlink(2)."""
    _path_call("unlink", "unlink", path)


def memfd_create(name: str, flags: int = 0) -> int:
    """memfd_create(2) (close-on-exec); the fd is accounted like an opened one."""
    try:
        if _armed:
            _inject("memfd_create")
        fd = backend().memfd_create(name, flags)
    except OSError as exc:
        raise _fail(exc, "memfd_create", f"memfd:{name}", None) from None
    return adopt(int(fd), f"memfd:{name}")


def ftruncate(fd: int, length: int) -> None:
    """ftruncate(2): set the size of a file (a memfd's, before mapping it)."""
    try:
        if _armed:
            _inject("ftruncate")
        backend().ftruncate(fd, length)
    except OSError as exc:
        raise _fail(exc, "ftruncate", _fds.get(fd, f"fd {fd}"), None) from None


def mlock(addr: int, length: int) -> None:
    """mlock(2): keep ``length`` bytes at user address ``addr`` resident."""
    try:
        if _armed:
            _inject("mlock")
        backend().mlock(addr, length)
    except OSError as exc:
        raise _fail(exc, "mlock", None, None, dma=True) from None


def ioperm(start: int, num: int, on: bool = True, *, device: Optional[str] = None) -> None:
    """ioperm(2): let this thread (x86) use I/O ports ``start`` .. ``start + num - 1`` (or stop)."""
    b = backend()
    try:
        if not hasattr(b, "ioperm"):
            raise OSError(38, os.strerror(38))          # ENOSYS: the backend has no ports
        b.ioperm(start, num, on)
    except OSError as exc:
        raise _fail(exc, "ioperm", None, device,
                    remedy="run as root (CAP_SYS_RAWIO) on x86; ports above 0xffff are "
                           "out of ioperm's reach") from None


def read_file(path: str, *, device: Optional[str] = None, op: str = "read") -> bytes:
    """The whole contents of a (sysfs, procfs) file; a missing file raises FileNotFoundError."""
    try:
        if _armed:
            _inject("read_file")
        return bytes(backend().read_file(path))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _fail(exc, op, path, device) from None


def write_file(path: str, data: bytes) -> None:
    """Write ``data`` to a sysfs attribute in one write(2), as the kernel's store expects.

    Errors stay plain :class:`OSError` (with the errno), for the caller to name
    what the write meant (:func:`pyvfio.core.sysfs.write_attr`).
    """
    if _armed:
        _inject("write_file")
    written = backend().write_file(path, bytes(data))
    if written != len(data):
        raise OSError(errno_.EIO, f"short write ({written} of {len(data)} bytes)")


def modprobe(module: str) -> None:
    """Load a kernel module with modprobe(8); :class:`ModuleMissingError` if it cannot."""
    try:
        code, said = backend().modprobe(module)
    except OSError as exc:
        raise errors.ModuleMissingError(
            f"cannot run modprobe to load {module}: {exc.strerror}",
            remedy=f"install kmod, or load the module by hand (`modprobe {module}`)") from None
    if code != 0:
        raise errors.ModuleMissingError(
            f"cannot load kernel module {module}" + (f": {said}" if said else ""),
            remedy=(f"install the module for the running kernel (`modinfo {module}` finds it "
                    f"when it is installed)" if os.geteuid() == 0 else
                    f"run as root, or install the module for the running kernel "
                    f"(`modinfo {module}` finds it when it is installed)"))
