"""Fixtures for vDPA tests: vdpa_sim and VDUSE devices made over netlink in a lab guest.

The full lab kernel has vdpa_sim (net, block), VDUSE and vhost-vdpa built in;
the stock kernel gets vdpa_sim built out of tree and Debian's vdpa,
vhost_vdpa and vduse modules.  On the host the mock kernel's ``vdpa`` family
answers the netlink family and the vhost-vdpa state rules; tests of the data
path (requests, frames, VDUSE) call :func:`require_real`: no kernel on the
host offers vDPA, and the mock does not model the simulators' rings.
"""
from __future__ import annotations

import itertools
import os

import pytest

from pyvfio.core import syscalls
from vdpa_helpers import require_real  # noqa: F401

_names = itertools.count()


def load_modules() -> None:
    for name in ("vdpa", "vhost_vdpa", "vdpa_sim", "vdpa_sim_net", "vdpa_sim_blk", "vduse"):
        try:
            syscalls.modprobe(name)
        except OSError:
            pass


@pytest.fixture
def vdpa_env(lab_target, tmp_path):
    """The vdpa netlink client on the real kernel (guest) or the mock (host); leaks checked."""
    fds = set(syscalls.open_fds())
    maps = len(syscalls.live_mappings())
    from pyvfio.vdpa.netlink import Vdpa
    if lab_target.kind == "real":
        load_modules()
        with Vdpa() as nl:
            yield nl
    else:
        from pyvfio.mock import mock_kernel
        from pyvfio.core.sysfs import use_host
        with mock_kernel(tmp_path) as mk, use_host(mk.host):
            with Vdpa() as nl:
                yield nl
    assert set(syscalls.open_fds()) == fds, "descriptors leaked"
    assert len(syscalls.live_mappings()) == maps, "mappings leaked"


@pytest.fixture
def make_dev(vdpa_env):
    """``make_dev(mgmtdev, **attrs)``: a new vDPA device, deleted after the test."""
    made = []

    def make(mgmtdev: str, **kw):
        name = f"pv{os.getpid() % 1000}x{next(_names)}"
        dev = vdpa_env.dev_add(name, mgmtdev, **kw)
        made.append(name)
        return dev

    yield make
    for name in made:
        if name in [d.name for d in vdpa_env.devs()]:
            vdpa_env.dev_del(name)
