"""The folder tree is the architecture: layers, the one syscall layer, imports without order.

Each rule (see ``tests/layering.py``) runs on the real source, and once more
on a copy of the source with a deliberate violation, where it must fail and
name the place.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import layering

pytestmark = pytest.mark.host

ROOT = str(Path(__file__).resolve().parents[1] / "pyvfio")


@pytest.fixture
def copy(tmp_path) -> Path:
    """A copy of the package (compiled binding included) to break on purpose."""
    dest = tmp_path / "pyvfio"
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns("__pycache__", "*.o", "*.c"))
    return dest


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n" + text + "\n")


# -- the rules hold --------------------------------------------------------------------------

def test_no_module_imports_a_higher_layer():
    assert layering.layer_violations(ROOT) == []


def test_every_system_call_goes_through_core_syscalls():
    assert layering.syscall_violations(ROOT) == []


def test_every_subpackage_imports_alone():
    assert layering.import_alone_failures(ROOT) == []


def test_every_part_of_the_package_has_a_layer():
    parts = {p.name[:-3] if p.suffix == ".py" else p.name for p in Path(ROOT).iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert parts - set(layering.LAYERS) - {"__main__"} == set()


def test_import_pyvfio_loads_no_family_and_no_binding():
    code = ("import sys, pyvfio; print(sorted(m for m in sys.modules "
            "if m.startswith('pyvfio') or m in ('cffi', '_cffi_backend')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(ROOT), check=True).stdout
    assert out.strip() == "['pyvfio']"


# -- and each check fails when broken ---------------------------------------------------------

def test_layer_check_catches_core_importing_vfio(copy):
    _append(copy / "core" / "memory.py", "from pyvfio.vfio import device  # a layer above")
    _append(copy / "pci" / "device.py",
            "def _late():\n    from pyvfio.mock import kernel  # lazily, still a reach-around")
    found = layering.layer_violations(str(copy))
    assert len(found) == 2
    assert found[0].startswith("pyvfio/core/memory.py:")
    assert "imports pyvfio.vfio" in found[0]
    assert found[1].startswith("pyvfio/pci/device.py:") and "imports pyvfio.mock.kernel" in found[1]


def test_layer_check_catches_a_package_without_a_layer(copy):
    (copy / "newfamily").mkdir()
    (copy / "newfamily" / "__init__.py").write_text("")
    found = layering.layer_violations(str(copy))
    assert found == ["pyvfio/newfamily/__init__.py:1: pyvfio.newfamily has no layer: "
                     "add it to LAYERS in tests/layering.py"]


def test_syscall_check_catches_os_write_and_subprocess(copy):
    _append(copy / "pci" / "device.py",
            "def _poke(fd):\n    os.write(fd, b'1')\n    subprocess.run(['modprobe', 'x'])")
    _append(copy / "vfio" / "region.py",
            "import fcntl as _f\ndef _raw(fd):\n    return _f.ioctl(fd, 0)")
    found = layering.syscall_violations(str(copy))
    assert [f.split(": ", 1)[1].split(" outside")[0] for f in found] == [
        "os.write", "subprocess.run", "fcntl.ioctl"]
    assert all("add a wrapper there" in f for f in found)


def test_syscall_check_leaves_the_exempt_parts_alone(copy):
    _append(copy / "lab" / "machine.py", "def _boot():\n    subprocess.run(['true'])")
    _append(copy / "mock" / "kernel.py", "def _fd():\n    return os.open('/dev/null', 0)")
    assert layering.syscall_violations(str(copy)) == []


def test_import_alone_catches_a_hidden_order(copy):
    # pyvfio.pci now uses pyvfio.vfio without importing it: fine after `import pyvfio.vfio`,
    # broken alone
    _append(copy / "pci" / "__init__.py", "import pyvfio\n_needs = pyvfio.vfio.__name__")
    found = layering.import_alone_failures(str(copy), ["pyvfio.pci", "pyvfio.vfio"])
    assert len(found) == 1
    assert found[0].startswith("pyvfio.pci: AttributeError")
