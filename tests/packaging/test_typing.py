"""Typing: `mypy --strict pyvfio` is clean, and README-style user code is checked
against the real types.

The whole package must stay clean: an error anywhere in it fails the test.
"""
from __future__ import annotations

import os
import re

import pytest

pytestmark = pytest.mark.host

mypy_api = pytest.importorskip("mypy.api")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _mypy(*targets: str) -> tuple:
    out, err, status = mypy_api.run(["--strict", "--follow-imports=silent",
                                     "--config-file", os.path.join(ROOT, "pyproject.toml"),
                                     *targets])
    m = re.search(r"Found (\d+) error", out)
    return (int(m.group(1)) if m else 0), out


def test_package_is_clean(monkeypatch):
    monkeypatch.chdir(ROOT)
    n, out = _mypy("pyvfio")
    assert n == 0 and "Success: no issues found" in out, out     # not a crash or config error


def test_user_code_sees_real_types(tmp_path):
    """README-style code: the lazy top-level names are typed, so mistakes are caught."""
    user = tmp_path / "user.py"
    user.write_text("import pyvfio\n"
                    "dev = pyvfio.open_device('0000:00:10.0')\n"
                    "reveal_type(dev)\n"
                    "buf = pyvfio.DmaBuffer('4096')\n")
    out, _, _ = mypy_api.run(["--strict", str(user)])
    assert 'Revealed type is "pyvfio.vfio.device.Device"' in out
    assert 'Argument 1 to "DmaBuffer" has incompatible type "str"' in out
