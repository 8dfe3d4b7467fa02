"""Typing: `mypy --strict pyvfio`, and README-style user code checked against the real types.

The clean set must stay clean; the package as a whole may not get worse than
BASELINE errors (lowered as modules are cleaned; 0 is the goal).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.host

mypy_api = pytest.importorskip("mypy.api")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Modules that are clean under --strict and must stay so.
CLEAN = ["pyvfio/__init__.py", "pyvfio/errors.py", "pyvfio/core/args.py", "pyvfio/core/argsz.py",
         "pyvfio/core/eventfd.py", "pyvfio/core/faults.py", "pyvfio/core/handle.py",
         "pyvfio/core/iova.py", "pyvfio/core/memory.py", "pyvfio/core/mmio.py",
         "pyvfio/core/space.py", "pyvfio/core/syscalls.py", "pyvfio/core/sysfs.py",
         "pyvfio/core/uapi.py", "pyvfio/vfio", "pyvfio/iommufd.py", "pyvfio/kvm",
         "pyvfio/pci", "pyvfio/cli", "pyvfio/drivers", "pyvfio/mock/pin.py", "pyvfio/lab",
         "pyvfio/demo.py", "pyvfio/core/_build_uapi.py"]

#: Errors `mypy --strict pyvfio` may report at most: the mock's families and the newest
#: families (vhost, vdpa, virtio, uio), whose optional attributes need narrowing.
BASELINE = 122


def _mypy(*targets: str) -> tuple:
    out, err, status = mypy_api.run(["--strict", "--follow-imports=silent",
                                     "--config-file", os.path.join(ROOT, "pyproject.toml"),
                                     *targets])
    m = re.search(r"Found (\d+) error", out)
    return (int(m.group(1)) if m else 0), out


def test_clean_modules_stay_clean(monkeypatch):
    monkeypatch.chdir(ROOT)
    n, out = _mypy(*CLEAN)
    assert n == 0, out


def test_whole_package_no_worse_than_baseline(monkeypatch):
    monkeypatch.chdir(ROOT)
    n, out = _mypy("pyvfio")
    print(f"\nmypy --strict pyvfio: {n} errors (baseline {BASELINE})")
    assert n <= BASELINE, out


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
