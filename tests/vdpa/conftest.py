"""Fixtures for vDPA tests: vdpa_sim and VDUSE devices made over netlink in a lab guest.

The full lab kernel has vdpa_sim (net, block), VDUSE and vhost-vdpa built in;
the stock kernel gets vdpa_sim built out of tree and Debian's vdpa,
vhost_vdpa and vduse modules.  On the host there is no vDPA kernel: device
tests run in the guests only (the mock kernel has no vhost-vdpa node yet).
"""
from __future__ import annotations

import itertools
import os

import pytest

from pyvfio.core import syscalls

_names = itertools.count()


def load_modules() -> None:
    for name in ("vdpa", "vhost_vdpa", "vdpa_sim", "vdpa_sim_net", "vdpa_sim_blk", "vduse"):
        try:
            syscalls.modprobe(name)
        except OSError:
            pass


@pytest.fixture
def vdpa_env(lab_target):
    """The real vDPA kernel of a lab guest, with leak accounting around the test."""
    if lab_target.kind != "real":
        pytest.skip("vhost-vdpa and the vdpa netlink family need a lab guest's kernel "
                    "(the mock kernel does not model them)")
    load_modules()
    fds = set(syscalls.open_fds())
    maps = len(syscalls.live_mappings())
    from pyvfio.vdpa.netlink import Vdpa
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
        vdpa_env.dev_del(name)
