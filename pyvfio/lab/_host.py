"""Host-side helpers shared by the lab modules: the cache directory, locks,
progress messages and running host programs."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence, Type

from pyvfio.lab.errors import LabError, LabInterrupted, ToolMissingError

__all__ = ["cache_dir", "locked", "info", "warn", "require_tool", "run_tool", "digest",
           "replace_dir", "interruptible", "signals_blocked"]


def cache_dir() -> Path:
    """The lab's cache: ``$PYVFIO_LAB_CACHE`` or ``~/.cache/pyvfio/lab``."""
    env = os.environ.get("PYVFIO_LAB_CACHE")
    if env:
        return Path(env).expanduser().absolute()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).absolute() / "pyvfio" / "lab"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` + ``.lock`` (so parallel runs share one build)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def info(message: str) -> None:
    """Print a progress line of the lab on stderr."""
    print(f"pyvfio lab: {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """Print a warning of the lab on stderr."""
    print(f"pyvfio lab: WARNING: {message}", file=sys.stderr, flush=True)


def require_tool(name: str, remedy: str) -> str:
    """Absolute path of host program ``name``, or :class:`ToolMissingError`."""
    found = shutil.which(name)
    if found is None:
        raise ToolMissingError(f"{name} not found on this machine", remedy=remedy)
    return found


def run_tool(cmd: Sequence[str], *, error: Type[LabError] = LabError, what: str = "",
             remedy: Optional[str] = None, cwd: Optional[Path] = None) -> str:
    """Run a host program, return its stdout; on failure raise ``error`` with its output."""
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError as exc:
        raise ToolMissingError(f"{cmd[0]} not found on this machine", remedy=remedy) from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-20:])
        raise error(f"{what or cmd[0]} failed (exit {proc.returncode}):\n{tail}",
                    remedy=remedy)
    return proc.stdout


def digest(*parts: bytes, length: int = 12) -> str:
    """Short hex digest of ``parts``, for cache keys."""
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:length]


def replace_dir(dest: Path, fill: Callable[[Path], object]) -> Path:
    """Create ``dest`` atomically: ``fill`` a sibling temporary directory, then rename it."""
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP (and Ctrl-C) into :class:`LabInterrupted`, so that the
    ``finally`` clauses inside (which stop QEMU, make, ...) run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise LabInterrupted(f"interrupted by {signal.Signals(signum).name}", signum=signum)

    previous: Dict[int, object] = {s: signal.signal(s, handler) for s in FORWARDED_SIGNALS}
    try:
        yield
    except KeyboardInterrupt:
        raise LabInterrupted("interrupted by SIGINT (Ctrl-C)", signum=signal.SIGINT) from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)  # type: ignore[arg-type]


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold off Ctrl-C/SIGTERM/SIGHUP while tearing down (they are delivered afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = {signal.SIGINT, *FORWARDED_SIGNALS}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
