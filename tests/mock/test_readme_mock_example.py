"""The README's example of testing a driver with the mock runs as written."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.host

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples",
                       "testing_with_the_mock.py")


def test_testing_with_the_mock_example_runs(tmp_path):
    out = subprocess.run([sys.executable, EXAMPLE], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("driver tested against the mock: factorial, DMA both ways, "
                                  "MSI, no leaks")
