"""pyvfio lab: run commands against real kernel drivers in a throw-away QEMU guest.

Subcommands:
  run [options] -- COMMAND...   boot a guest, run COMMAND as root, exit with its status
  kernel [--kernel stock|full|all]
                                fetch or build the guest kernels ahead of time
  demo                          run `python -m pyvfio.demo` in a guest with one edu device

Exit status: COMMAND's; 125 when the lab itself failed (no QEMU, no kernel,
boot failure or timeout); 128+N when stopped by signal N.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Tuple

if TYPE_CHECKING:
    from pyvfio.lab.runner import LabOptions

__all__ = ["register", "add_commands", "normalize_argv", "LAB_FAILED"]

#: Exit status when the lab could not run the command.
LAB_FAILED = 125


#: Options whose value may start with "-" (``--qemu-arg -device``).
_DASH_VALUE_OPTIONS = ("--qemu-arg",)


def normalize_argv(argv: List[str]) -> List[str]:
    """Join ``--qemu-arg VALUE`` into ``--qemu-arg=VALUE`` before the ``--`` of the command.

    argparse would take a value starting with ``-`` (``-device``) for an option.
    """
    out: List[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return out + argv[i:]
        if word in _DASH_VALUE_OPTIONS and i + 1 < len(argv):
            out.append(f"{word}={argv[i + 1]}")
            i += 2
            continue
        out.append(word)
        i += 1
    return out


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pyvfio lab`` and its subcommands."""
    parser = subparsers.add_parser(
        "lab", help="run commands against real drivers in a throw-away QEMU guest",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_commands(parser)


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add the lab's subcommands to ``parser`` (``pyvfio lab`` or ``python -m pyvfio.lab``)."""
    sub = parser.add_subparsers(dest="lab_command", metavar="SUBCOMMAND", required=True)

    run = sub.add_parser("run", help="boot a guest and run COMMAND in it as root",
                         description="Boot a guest, run COMMAND as root in it and exit with "
                                     "its status.  Several words run as that argv (quoted); "
                                     "a single word is a shell line: -- 'lspci; dmesg | tail'.")
    _guest_options(run)
    run.add_argument("--timing", action="store_true",
                     help="print the boot-to-command and total times")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                     help="the command line to run in the guest")
    run.set_defaults(func=_guarded(_run))

    kernel = sub.add_parser("kernel", help="fetch or build the guest kernels ahead of time")
    kernel.add_argument("--kernel", choices=("stock", "full", "all"), default="stock",
                        help="which kernel to prepare (default: stock; full builds for "
                             "about 11 minutes on 2 cores the first time)")
    kernel.set_defaults(func=_guarded(_kernel))

    demo = sub.add_parser("demo", help="run the pyvfio demo against an emulated edu device")
    demo.add_argument("--timeout", type=float, default=600.0, metavar="S")
    demo.set_defaults(func=_guarded(_demo))


def _guest_options(parser: argparse.ArgumentParser) -> None:
    from pyvfio.lab.machine import DEVICE_KINDS
    parser.add_argument("--kernel", choices=("stock", "full"), default="stock",
                        help="Debian's 6.12 kernel, or the lab's all-built-in one "
                             "(IOMMUFD, VFIO cdev/no-IOMMU, vdpa_sim, mtty; default: stock)")
    parser.add_argument("--iommu", choices=("on", "off"), default="on",
                        help="emulated Intel IOMMU (default: on)")
    parser.add_argument("--device", action="append", dest="devices",
                        metavar="KIND[,PROP=VALUE...]",
                        help=f"emulated PCI device, repeatable: {', '.join(DEVICE_KINDS)} "
                             "or none (default: two edu), with QEMU properties after commas, "
                             "e.g. nvme,serial=x,msix_qsize=3")
    parser.add_argument("--mem", type=int, default=2048, metavar="MB",
                        help="guest memory (default: 2048)")
    parser.add_argument("--cpus", type=int, default=1, help="guest CPUs (default: 1)")
    parser.add_argument("--accel", choices=("tcg", "kvm"), default="tcg",
                        help="QEMU accelerator (default: tcg)")
    parser.add_argument("--timeout", type=float, default=1800.0, metavar="S",
                        help="seconds the whole run may take (default: 1800)")
    parser.add_argument("--boot-timeout", type=float, default=180.0, metavar="S",
                        help="seconds the guest may take to start COMMAND (default: 180)")
    parser.add_argument("--rw", action="append", default=[], type=Path, metavar="DIR",
                        help="share another host directory read-write (the working "
                             "directory and the pyvfio checkout always are)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                        help="pass another environment variable to the guest")
    parser.add_argument("--append", action="append", default=[], metavar="WORD",
                        help="add a word to the guest kernel's command line")
    parser.add_argument("--qemu-arg", action="append", default=[], metavar="ARG",
                        help="add an argument to the QEMU command line (values may start "
                             "with '-': --qemu-arg -device --qemu-arg virtio-rng-pci)")
    parser.add_argument("--cpu", metavar="MODEL",
                        help="the guest's CPU model instead of the default (e.g. qemu64,+svm: "
                             "an AMD CPU with SVM, which gives the guest /dev/kvm, nested "
                             "under TCG)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run directory (console.log, dmesg, qemu.cmd)")


def _options(args: argparse.Namespace, devices: Tuple[str, ...]) -> LabOptions:
    from pyvfio.lab.runner import LabOptions
    return LabOptions(kernel=args.kernel, iommu=args.iommu == "on", devices=devices,
                      mem_mb=args.mem, cpus=args.cpus, accel=args.accel, timeout=args.timeout,
                      boot_timeout=args.boot_timeout, rw_dirs=tuple(args.rw),
                      env=tuple(args.env), append=tuple(args.append),
                      qemu_args=tuple(args.qemu_arg) + _cpu_args(args), keep=args.keep)


def _cpu_args(args: argparse.Namespace) -> Tuple[str, ...]:
    # QEMU takes the last -cpu it is given, so this overrides the machine's default model
    cpu = getattr(args, "cpu", None)
    return ("-cpu", cpu) if cpu else ()


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a subcommand; report lab failures with their remedy and map them to exit codes."""
    def wrapper(args: argparse.Namespace) -> int:
        from pyvfio.lab._host import interruptible
        from pyvfio.lab.errors import LabError, LabInterrupted
        try:
            with interruptible():
                return func(args)
        except LabInterrupted as exc:
            print(f"pyvfio lab: {exc}", file=sys.stderr)
            return 128 + (exc.signum or 2)
        except LabError as exc:
            print(f"pyvfio lab: error: {exc}", file=sys.stderr)
            return LAB_FAILED
    wrapper.__doc__ = func.__doc__
    return wrapper


def _run(args: argparse.Namespace) -> int:
    """``lab run``."""
    from pyvfio.lab.runner import run
    command: List[str] = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("pyvfio lab run: no COMMAND given (usage: pyvfio lab run [options] -- COMMAND...)",
              file=sys.stderr)
        return 2
    from pyvfio.lab.errors import LabError
    from pyvfio.lab.machine import parse_device
    devices = tuple(d for d in (args.devices or ["edu", "edu"]) if d != "none")
    for spec in devices:
        try:
            parse_device(spec)
        except LabError as exc:
            print(f"pyvfio lab run: {exc}", file=sys.stderr)
            return 2
    result = run(command, _options(args, devices))
    if args.timing:
        boot = f"{result.boot_seconds:.1f} s" if result.boot_seconds is not None else "?"
        uptime = f"{result.guest_uptime:.1f} s" if result.guest_uptime is not None else "?"
        print(f"pyvfio lab: timing: kernel {args.kernel}, boot to command {boot} "
              f"(guest uptime {uptime}), total {result.wall_seconds:.1f} s, "
              f"exit status {result.returncode}", file=sys.stderr)
    return result.returncode


def _kernel(args: argparse.Namespace) -> int:
    """``lab kernel``."""
    from pyvfio.lab.runner import prepare
    flavours = ("stock", "full") if args.kernel == "all" else (args.kernel,)
    for flavour in flavours:
        image = prepare(flavour)
        print(f"{flavour}: {image.kernel.release} (Debian {image.kernel.package_version})\n"
              f"  kernel:    {image.kernel.vmlinux}\n  initramfs: {image.initrd}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """``lab demo``."""
    from pyvfio.lab.runner import LabOptions, run
    options = LabOptions(kernel="stock", devices=("edu",), timeout=args.timeout)
    return run([sys.executable, "-m", "pyvfio.demo"], options).returncode
