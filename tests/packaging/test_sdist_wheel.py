"""Packaging: the sdist builds a complete wheel, installable into a fresh venv.

This is the path a distribution or `pip install pyvfio` from an sdist takes:
sdist -> wheel (compiling the uAPI binding) -> install -> import.  The wheel
must carry every uAPI family this machine's headers offer plus the project's
own uio_msi.h, the LICENSE, SPDX license metadata, and the abi3 tag of its
stable-ABI extension.
"""
from __future__ import annotations

import email
import json
import os
import subprocess
import sys
import tarfile
import venv
import zipfile

import pytest

import pyvfio

pytestmark = pytest.mark.host

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("sdist")
    _run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out), ROOT])
    (path,) = out.glob("pyvfio-*.tar.gz")
    return path


def test_sdist_contents(sdist):
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("LICENSE", "kernel_headers/uio_msi.h", "tests/conftest.py",
                   "tests/support.py", "pyvfio/core/_build_uapi.py", "setup.py", "run",
                   "pyvfio/py.typed", "pyvfio/core/_mmio.c", "pyvfio/core/mmio_access.h",
                   "pyvfio/lab/kmod/uio_msi/uio_msi.c", "pyvfio/lab/kmod/uio_msi/Kbuild"):
        assert needed in names, needed
    assert not [n for n in names if n.endswith((".so", ".pyc"))]


def test_wheel_from_sdist_is_complete(sdist, tmp_path):
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(wheels), str(sdist)])
    (whl,) = wheels.glob("pyvfio-*.whl")
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        # the tag must fit the least portable extension: abi3 only if every one is abi3
        exts = [n for n in names if n.endswith(".so")]
        assert [n for n in exts if n.startswith("pyvfio/core/_uapi") and n.endswith(".abi3.so")]
        tag = "-".join(whl.name[:-4].split("-")[-3:])
        py = f"cp{sys.version_info.major}{sys.version_info.minor}"
        if all(n.endswith(".abi3.so") for n in exts):
            assert tag.split("-")[1] == "abi3", (tag, exts)
        else:
            assert tag.startswith(f"{py}-{py}-"), (tag, exts)
        meta = email.message_from_bytes(z.read(f"pyvfio-{pyvfio.__version__}.dist-info/METADATA"))
        assert f"pyvfio-{pyvfio.__version__}.dist-info/licenses/LICENSE" in names
    assert meta["License-Expression"] == "MIT"
    assert meta["Version"] == pyvfio.__version__
    # install into a fresh venv (system site-packages for cffi's dependencies) and import
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, system_site_packages=False)
    py = str(env_dir / "bin" / "python")
    _run([py, "-m", "pip", "install", "-q", "--no-deps", str(whl)])
    _run([py, "-m", "pip", "install", "-q", "cffi>=1.15"])
    probe = ("import json, pyvfio.core.uapi as u, pyvfio.cli as c; "
             "print(json.dumps({'families': sorted(u.FAMILIES), 'missing': u.MISSING}))")
    got = json.loads(_run([py, "-c", probe], cwd=str(tmp_path)).stdout)
    from pyvfio.core import uapi
    assert "uio_msi" in got["families"]
    assert got["families"] == sorted(uapi.FAMILIES)          # as complete as the dev build
    version = _run([str(env_dir / "bin" / "pyvfio"), "--version"], cwd=str(tmp_path)).stdout
    assert version.strip() == f"pyvfio {pyvfio.__version__}"


def test_version_is_one_number():
    from importlib import metadata
    assert metadata.version("pyvfio") == pyvfio.__version__
    out = subprocess.run([sys.executable, "-m", "pyvfio", "--version"], capture_output=True,
                         text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, f"pyvfio {pyvfio.__version__}")
