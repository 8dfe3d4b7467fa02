"""Fault injection at every step of a setup sequence.

:func:`explore` runs a sequence of library calls again and again, failing its
k-th system call for k = 1, 2, ... until a run completes without reaching a
k-th call.  After each run it checks what SQLite's and the kernel selftests'
authors check after an injected failure:

- the caller saw a library error (a :class:`~pyvfio.errors.PyvfioError`), not
  a foreign exception and not silence;
- everything the sequence had acquired before the failure was given back:
  descriptors (eventfds included), mappings, and whatever the ``snapshot``
  function counts (the mock kernel's pins and DMA mappings, the process's
  locked and pinned memory on a real kernel).

Two injectors exist.  ``"syscalls"`` fails the k-th call made through
:mod:`pyvfio.core.syscalls` with the call's typical errno (the call never
reaches the backend).  ``"kernel"`` arms ``/proc/thread-self/fail-nth`` (the
kernel's CONFIG_FAULT_INJECTION, with failslab and fail_page_alloc) so that
the k-th allocation the kernel makes *inside our system calls* fails, and the
kernel chooses the errno; see :func:`kernel_fail_nth`.
"""
from __future__ import annotations

import contextlib
import errno as _errno
import os
import threading
from dataclasses import dataclass, field
from typing import (Any, Callable, ContextManager, Dict, Iterator, List, Optional, Sequence,
                    Tuple)

from pyvfio import errors
from pyvfio.core import syscalls

__all__ = ["Run", "explore", "resources", "format_table",
           "kernel_fail_nth", "KernelFailNth", "setup_kernel_fault_injection"]

@dataclass
class Run:
    """One run of a sequence: the k-th call failed (or the run completed)."""
    sequence: str
    k: int
    op: Optional[str]                 # the call that failed; None: the run completed
    errno: Optional[int]              # errno injected / reported by the kernel
    outcome: str                      # "ok", or the class of the exception raised
    raised: Optional[BaseException] = None
    leaks: List[str] = field(default_factory=list)

    @property
    def foreign(self) -> bool:
        """An exception that is not the library's escaped."""
        return self.raised is not None and not isinstance(self.raised, errors.PyvfioError)

    @property
    def absorbed(self) -> bool:
        """A call failed, yet the sequence completed without an error."""
        return self.op is not None and self.raised is None

    @property
    def good(self) -> bool:
        return not self.leaks and not self.foreign and not self.absorbed


def _status_kb(field_name: str) -> Optional[int]:
    try:
        text = syscalls.read_file(os.path.join(_proc(), "self", "status")).decode()
        for line in text.splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _proc() -> str:
    from pyvfio.core import sysfs
    return sysfs.host().proc


def resources(env: Any = None) -> Dict[str, Any]:
    """What the process holds: our descriptors, our mappings, VmLck and VmPin (kB).

    With a mock kernel as ``env`` (anything with ``leaks()``) its own account
    (mock descriptors, DMA mappings, locked memory) is added.
    """
    snap: Dict[str, Any] = {
        "fds": sorted(f"{fd}:{path}" for fd, path in syscalls.open_fds().items()),
        "mappings": sorted(syscalls.live_mappings()),
        "VmLck": _status_kb("VmLck"),
        "VmPin": _status_kb("VmPin"),
    }
    leaks = getattr(env, "leaks", None)
    if callable(leaks):
        snap["kernel"] = sorted(leaks())
    return snap


def _diff(before: Dict[str, Any], after: Dict[str, Any]) -> List[str]:
    out = []
    for key in before.keys() | after.keys():
        b, a = before.get(key), after.get(key)
        if b == a:
            continue
        if isinstance(b, list) and isinstance(a, list):
            extra = [x for x in a if x not in b]
            gone = [x for x in b if x not in a]
            out += [f"{key}: still held: {x}" for x in extra]
            out += [f"{key}: released though not ours: {x}" for x in gone]
        else:
            out.append(f"{key}: {b} -> {a}")
    return sorted(out)


def explore(name: str, sequence: Callable[[Any], Any], *,
            env: Optional[Callable[[], ContextManager[Any]]] = None,
            snapshot: Callable[[Any], Dict[str, Any]] = resources,
            inject: str = "syscalls", err: Optional[int] = None,
            limit: int = 2000, progress: Optional[Callable[[Run], None]] = None,
            start: int = 1) -> List[Run]:
    """Run ``sequence(env_value)`` failing its k-th call for k = 1, 2, ... until it completes.

    ``env`` makes a fresh environment per run (e.g. a mock kernel installed
    as the backend); it is entered outside the injection.  ``sequence`` must
    hold what it opens in ``with`` blocks, as user code does, so that after
    it returns or raises nothing of its own may remain.  The last row is the
    run that completed (``outcome == "ok"``).  ``inject`` is ``"syscalls"``
    or ``"kernel"`` (``/proc/thread-self/fail-nth``); ``err`` the errno to
    inject (None: each call's typical errno, :data:`syscalls.TYPICAL_ERRNO`).
    ``progress`` is called with each row as it is made; ``start`` skips the
    first k (to resume an exploration).
    """
    rows: List[Run] = []
    for k in range(start, limit + 1):
        with (env() if env is not None else contextlib.nullcontext()) as value:
            before = snapshot(value)
            raised: Optional[BaseException] = None
            op: Optional[str] = None
            got: Optional[int] = None
            if inject == "syscalls":
                with syscalls.fail_nth(k, err) as inj:
                    try:
                        sequence(value)
                    except Exception as exc:    # judged below: must be the library's
                        raised = exc
                op, got = inj.fired, (inj.errno if inj.fired else None)
            elif inject == "kernel":
                with kernel_fail_nth(k) as kinj:
                    try:
                        sequence(value)
                    except Exception as exc:
                        raised = exc
                op = kinj.fired
                got = getattr(raised, "errno", None) if op else None
            else:
                raise errors.InvalidArgumentError(
                    f"inject must be 'syscalls' or 'kernel', not {inject!r}")
            leaks = _diff(before, snapshot(value))
        if op is None and raised is None:
            rows.append(Run(name, k, None, None, "ok", None, leaks))
            if progress:
                progress(rows[-1])
            return rows
        outcome = type(raised).__name__ if raised is not None else "absorbed"
        rows.append(Run(name, k, op, got, outcome, raised, leaks))
        if progress:
            progress(rows[-1])
        if op is None:          # raised without our failure: a bug in the sequence itself
            return rows
    rows.append(Run(name, limit + 1, None, None, f"gave up after {limit} runs"))
    return rows


def format_table(rows: Sequence[Run]) -> str:
    """The rows as a text table: sequence, k, failed call, errno, outcome, leaks."""
    head = ("SEQUENCE", "K", "CALL", "ERRNO", "OUTCOME", "LEAKS")
    lines: List[Tuple[str, ...]] = [head]
    for r in rows:
        lines.append((r.sequence, str(r.k), r.op or "-",
                      _errno.errorcode.get(r.errno, str(r.errno)) if r.errno else "-",
                      r.outcome, "; ".join(r.leaks) if r.leaks else "0"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1]
                     for line in lines)


# -- the real kernel's fail-nth ------------------------------------------------------------

_DEBUGFS_SETTINGS = (
    # fail allocations that may sleep too (GFP_KERNEL): most of what our ioctls allocate
    ("failslab/ignore-gfp-wait", "N"),
    ("fail_page_alloc/ignore-gfp-wait", "N"),
    # order-0 pages too (the pages the IOMMU page tables and pins use)
    ("fail_page_alloc/min-order", "0"),
    # no stack dump per injected failure: the console of an emulated guest is slow
    ("failslab/verbose", "0"),
    ("fail_page_alloc/verbose", "0"),
)


def setup_kernel_fault_injection(debugfs: str = "/sys/kernel/debug") -> List[str]:
    """Configure failslab and fail_page_alloc for fail-nth as the iommufd selftest does.

    User page allocations stay exempt (``ignore-gfp-highmem`` keeps its
    default), so a page fault of the interpreter is not what fails.  Returns
    the settings written; raises NotSupportedError without the debugfs files.
    """
    done = []
    for rel, value in _DEBUGFS_SETTINGS:
        path = os.path.join(debugfs, rel)
        if not os.path.exists(path):
            raise errors.NotSupportedError(
                "no fault-injection control in debugfs", path=path,
                remedy="boot a kernel with CONFIG_FAULT_INJECTION, CONFIG_FAILSLAB, "
                       "CONFIG_FAIL_PAGE_ALLOC and CONFIG_FAULT_INJECTION_DEBUG_FS, and "
                       "mount debugfs on /sys/kernel/debug")
        syscalls.write_file(path, value.encode())
        done.append(f"{rel}={value}")
    return done


class KernelFailNth:
    """A backend that arms ``/proc/thread-self/fail-nth`` around each system call.

    The countdown of fault-injection points runs only inside our calls: before
    each one the remaining count is written to fail-nth, after it the count
    is read back and fail-nth disarmed, so the interpreter's own work between
    calls consumes nothing and the call that met the failure is known.
    """

    def __init__(self, inner: Any, k: int) -> None:
        self._inner = inner
        self.k = k
        self.left = k
        self.fired: Optional[str] = None
        self.calls = 0
        self._thread = threading.get_ident()
        path = os.path.join(_proc(), "thread-self", "fail-nth")
        try:
            self._fd = syscalls.failnth_open(path)
        except OSError as exc:
            raise errors.NotSupportedError(
                "the kernel has no fail-nth", path=path, errno=exc.errno,
                remedy="boot a kernel with CONFIG_FAULT_INJECTION") from None

    def disarm(self) -> None:
        """Stop injecting and close fail-nth (not ``close``: that is the backend's close(2))."""
        syscalls.failnth_close(self._fd)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)
        if not callable(method) or name in syscalls.RELEASE_CALLS:
            return method

        def call(*args: Any, **kw: Any) -> Any:
            if self.left <= 0 or threading.get_ident() != self._thread:
                return method(*args, **kw)
            self.calls += 1
            syscalls.failnth_set(self._fd, self.left)
            try:
                return method(*args, **kw)
            finally:
                left = syscalls.failnth_left(self._fd)
                syscalls.failnth_set(self._fd, 0)
                if left == 0:
                    self.fired = name
                self.left = left
        return call


@contextlib.contextmanager
def kernel_fail_nth(k: int) -> Iterator[KernelFailNth]:
    """Inside the block, the k-th kernel allocation made in our system calls fails."""
    inj = KernelFailNth(syscalls.backend(), k)
    try:
        with syscalls.use(inj):
            yield inj
    finally:
        inj.disarm()
