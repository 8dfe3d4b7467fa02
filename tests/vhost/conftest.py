"""Fixtures for vhost tests: the mock kernel's vhost nodes on the host, the real ones in a guest."""
from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest

from pyvfio.core import syscalls
from pyvfio.core.sysfs import host, use_host


def load_modules(*names: str) -> None:
    """modprobe in a lab guest (the full kernel has them built in; the stock one as modules)."""
    for name in names:
        subprocess.run(["modprobe", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def vhost_env(lab_target, tmp_path):
    """Where vhost nodes are: ``env.real`` tells; on the mock, its /dev is the host's /dev."""
    fds = set(syscalls.open_fds())
    maps = len(syscalls.live_mappings())
    if lab_target.kind == "real":
        load_modules("vhost_net", "vhost_vsock", "vhost_scsi", "tun", "vsock_loopback")
        yield SimpleNamespace(real=True, target=lab_target, mock=None)
    else:
        from pyvfio.mock import mock_kernel
        with mock_kernel(tmp_path) as mk, use_host(host().with_roots(dev=mk.devroot)):
            yield SimpleNamespace(real=False, target=lab_target, mock=mk)
    assert set(syscalls.open_fds()) == fds, "descriptors leaked"
    assert len(syscalls.live_mappings()) == maps, "mappings leaked"
