"""The ``pyvfio`` command line.

Each topic module ``pyvfio/cli/<topic>.py`` exposes ``register(subparsers)``,
which adds its subcommands and sets ``func`` to a function taking the parsed
arguments and returning the exit status.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Callable, List, Optional

__all__ = ["build_parser", "main", "reports_errors"]


def reports_errors(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a subcommand; a pyvfio error becomes its message (with the remedy) and status 1."""
    def run(args: argparse.Namespace) -> int:
        from pyvfio import errors
        try:
            return int(func(args))
        except errors.PyvfioError as exc:
            print(f"pyvfio {args.topic}: {exc}", file=sys.stderr)
            return 1
    return run


def build_parser() -> argparse.ArgumentParser:
    """The parser with every topic's subcommands registered."""
    __version__ = sys.modules["pyvfio"].__version__   # the package, loaded before its cli
    parser = argparse.ArgumentParser(prog="pyvfio", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pyvfio {__version__}")
    # another machine's sysfs and /dev (a copy, or the mock kernel's tree); for tests
    parser.add_argument("--sysfs", help=argparse.SUPPRESS)
    parser.add_argument("--dev", help=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="topic", metavar="COMMAND", required=True)
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}").register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; return the exit status."""
    from pyvfio.cli.lab import normalize_argv
    argv = normalize_argv(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    if args.sysfs or args.dev:
        from pyvfio.core.sysfs import host, use_host
        with use_host(host().with_roots(sysfs=args.sysfs, dev=args.dev)):
            return int(args.func(args))
    return int(args.func(args))
