"""``python -m pyvfio``: the pyvfio command line."""
import sys

from pyvfio.cli import main

sys.exit(main())
