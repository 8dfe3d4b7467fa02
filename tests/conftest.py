"""Shared fixtures: the lab plugin, and an edu device on the real kernel or the mock.

In a lab guest (``PYVFIO_LAB=1``) device tests use QEMU's emulated devices
through the real kernel drivers; on the host they use :mod:`pyvfio.mock`.
"""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.dirname(__file__))

pytest_plugins = ["pyvfio.lab.pytest_plugin"]

from support import EDU, VFIO_PATHS, _real_edu, open_path  # noqa: E402


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test, of every family, gives back each descriptor and mapping it made.

    Compares :func:`pyvfio.core.syscalls.open_fds` and ``live_mappings`` before
    and after the test (its function-scoped fixtures included).
    """
    from pyvfio.core import syscalls
    fds, maps = syscalls.open_fds(), syscalls.live_mappings()
    yield
    left_fds = {fd: p for fd, p in syscalls.open_fds().items() if fds.get(fd) != p}
    gone = {fd: p for fd, p in fds.items() if syscalls.open_fds().get(fd) != p}
    left_maps = list(syscalls.live_mappings())
    for m in maps:
        if m in left_maps:
            left_maps.remove(m)
    if left_fds or left_maps or gone:
        pytest.fail(f"leaked: descriptors {left_fds}, mappings {left_maps}"
                    + (f"; closed what was open before: {gone}" if gone else ""), pytrace=False)


@pytest.fixture(params=VFIO_PATHS)
def vfio_edu(request, lab_target, tmp_path):
    """An edu device given to VFIO, and how to open it through ``request.param``'s path."""
    path = request.param
    if lab_target.kind == "real":
        dev = _real_edu(path, lab_target)
        with dev.bound("vfio-pci"):
            yield SimpleNamespace(path=path, bdf=dev.name, target=lab_target,
                                  open=lambda: open_path(dev.name, path))
        return
    mock_mod = pytest.importorskip("pyvfio.mock")
    bdf = "0000:00:10.0"
    kernel = mock_mod.MockKernel(str(tmp_path), devices=[mock_mod.EduModel(bdf=bdf, group=5)],
                                 iommu="none" if path == "noiommu" else "type1",
                                 iommufd=(path == "iommufd"))
    with kernel.installed():
        yield SimpleNamespace(path=path, bdf=bdf, target=lab_target, mock=kernel,
                              open=lambda: open_path(bdf, path))


