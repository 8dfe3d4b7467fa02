"""Run a command in a lab guest: the layer the command line and the pytest
plugin use.  It picks the kernel, builds what it lacks, chooses the
directories and environment the guest shares with the host, and hands over
to :mod:`pyvfio.lab.machine`."""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from pyvfio.lab._host import warn
from pyvfio.lab.errors import KernelPackageError, ModuleBuildError, ToolMissingError
from pyvfio.lab.initramfs import build_initramfs
from pyvfio.lab.kernel import Kernel, get_kernel
from pyvfio.lab.machine import MachineConfig, RunResult, find_qemu, run_guest
from pyvfio.lab.oot import build_modules, extras_for

__all__ = ["LabOptions", "BootImage", "PASSED_ENV", "prepare", "guest_env", "shared_dirs",
           "repo_dir", "command_line", "run"]

#: Host environment variables the guest inherits.
PASSED_ENV = ("PATH", "HOME", "VIRTUAL_ENV", "PYTHONPATH", "LANG", "TERM", "CI")


@dataclass(frozen=True)
class LabOptions:
    """How to run a guest (the ``pyvfio lab run`` options)."""
    kernel: str = "stock"
    iommu: bool = True
    devices: Tuple[str, ...] = ("edu", "edu")
    mem_mb: int = 2048
    cpus: int = 1
    accel: str = "tcg"
    #: Seconds the whole run may take, boot included.
    timeout: float = 1800.0
    #: Seconds the guest may take to start the command.
    boot_timeout: float = 180.0
    #: More host directories shared read-write (the working directory and the
    #: project checkout always are).
    rw_dirs: Tuple[Path, ...] = ()
    #: More environment for the guest: ``NAME`` (copied from the host) or ``NAME=VALUE``.
    env: Tuple[str, ...] = ()
    append: Tuple[str, ...] = ()
    qemu_args: Tuple[str, ...] = ()
    #: Working directory of the command (default: the current one); shared read-write.
    cwd: Optional[Path] = None
    #: Files to bring back from the guest's ``/run/lab`` (see :attr:`RunResult.files`).
    fetch: Tuple[str, ...] = ()
    keep: bool = False


@dataclass(frozen=True)
class BootImage:
    """A kernel with the initramfs that goes with it."""
    kernel: Kernel
    initrd: Path
    #: Warnings about what the guest lacks.
    notes: Tuple[str, ...] = ()


def prepare(flavour: str) -> BootImage:
    """Fetch or build the kernel of ``flavour`` and its initramfs (cached after the first time).

    This includes the out-of-tree modules of :func:`~pyvfio.lab.oot.extras_for`
    the kernel (vdpa_sim for stock, the project's uio_msi for both); a set
    that cannot be built is left out, with a warning.
    """
    kernel = get_kernel(flavour)
    extra: List[Path] = []
    notes: List[str] = []
    for modules in extras_for(flavour):
        try:
            extra.append(build_modules(kernel, modules))
        except (ToolMissingError, ModuleBuildError, KernelPackageError) as exc:
            notes.append(f"{modules.name} modules unavailable in the {flavour} guest: {exc}")
            warn(notes[-1])
    return BootImage(kernel, build_initramfs(kernel, extra), tuple(notes))


def repo_dir() -> Optional[Path]:
    """The project checkout pyvfio runs from, if it runs from one."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").exists() or (root / ".git").exists():
        return root
    return None


def shared_dirs(cwd: Path, extra: Sequence[Path] = ()) -> List[Path]:
    """The host directories shared read-write: ``cwd``, the checkout and ``extra``,
    without ``/`` and without directories inside another shared one."""
    wanted = [cwd, *(d for d in [repo_dir()] if d is not None), *extra]
    dirs: List[Path] = []
    for d in (Path(os.path.realpath(d)) for d in wanted):
        if d == Path("/") or not d.is_dir():
            continue
        if any(d == s or s in d.parents for s in dirs):
            continue
        dirs = [s for s in dirs if d not in s.parents] + [d]
    return dirs


def guest_env(flavour: str, iommu: bool, extra: Sequence[str] = (),
              plain: bool = False) -> Dict[str, str]:
    """The guest command's environment: :data:`PASSED_ENV` from the host, the
    running interpreter's directory first on ``PATH``, ``extra`` and the
    ``PYVFIO_LAB_*`` variables.  ``plain`` asks programs for output without
    colours (the command's output goes to a serial port, which is a terminal)."""
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    if plain:
        env.update(TERM="dumb", NO_COLOR="1")
    path = env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":")
    pybin = os.path.dirname(sys.executable)
    env["PATH"] = ":".join([pybin, *(p for p in path if p != pybin)])
    for item in extra:
        name, sep, value = item.partition("=")
        if sep:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    env["PYVFIO_LAB_KERNEL"] = flavour
    env["PYVFIO_LAB_IOMMU"] = "on" if iommu else "off"
    return env


def command_line(command: Union[str, Sequence[str]]) -> str:
    """The shell line the guest runs: a string or a single word as is, an argv quoted."""
    if isinstance(command, str):
        return command
    words = list(command)
    return words[0] if len(words) == 1 else shlex.join(words)


def run(command: Union[str, Sequence[str]], options: LabOptions = LabOptions(),
        output: Optional[Callable[[bytes], None]] = None,
        image: Optional[BootImage] = None) -> RunResult:
    """Run ``command`` as root in a guest.

    A list of two or more words runs as that argv (each word quoted with
    :func:`shlex.join`, so ``["python3", "-c", 'print("x")']`` works); a
    string, or a list of one word, is a shell command line (``"lspci; dmesg |
    tail"``).

    ``output`` receives the command's output as it comes (default: this
    process's stdout); ``image`` is a :func:`prepare` result to boot instead
    of preparing ``options.kernel`` here.
    """
    qemu = find_qemu()
    image = image or prepare(options.kernel)
    config = MachineConfig(vmlinux=image.kernel.vmlinux, initrd=image.initrd,
                           iommu=options.iommu, devices=options.devices,
                           mem_mb=options.mem_mb, cpus=options.cpus, accel=options.accel,
                           append=options.append, qemu_args=options.qemu_args, qemu=qemu)
    line = command_line(command)
    cwd = options.cwd or Path.cwd()
    kwargs = {"output": output} if output is not None else {}
    plain = output is not None or not sys.stdout.isatty()
    return run_guest(config, line, env=guest_env(options.kernel, options.iommu, options.env, plain),
                     cwd=cwd, rw_dirs=shared_dirs(cwd, options.rw_dirs),
                     timeout=options.timeout, boot_timeout=options.boot_timeout,
                     fetch=options.fetch, keep=options.keep, **kwargs)
