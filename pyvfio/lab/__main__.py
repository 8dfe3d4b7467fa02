"""``python -m pyvfio.lab``: the same subcommands as ``pyvfio lab``."""
import argparse
import sys

from pyvfio.cli import lab

parser = argparse.ArgumentParser(prog="python -m pyvfio.lab", description=lab.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
lab.add_commands(parser)
args = parser.parse_args(lab.normalize_argv(sys.argv[1:]))
sys.exit(args.func(args))
