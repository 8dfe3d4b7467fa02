"""``pyvfio vhost info`` and the errors for a missing node (host, mock kernel)."""
from __future__ import annotations

import json

import pytest

from pyvfio import errors
from pyvfio.cli import main
from pyvfio.mock import mock_kernel
from pyvfio.mock.vhost import NET_FEATURES, VSOCK_FEATURES
from pyvfio.vhost import VhostNet


def test_info_json(tmp_path, capsys):
    with mock_kernel(tmp_path) as mk:
        assert main(["vhost", "info", "--json", "--dev", mk.devroot]) == 0
    recs = json.loads(capsys.readouterr().out)
    by_node = {r["node"].rsplit("/", 1)[1]: r for r in recs}
    assert by_node["vhost-net"]["features"] == f"{NET_FEATURES:#x}"
    assert "VHOST_NET_F_VIRTIO_NET_HDR" in by_node["vhost-net"]["names"]
    assert by_node["vhost-vsock"]["features"] == f"{VSOCK_FEATURES:#x}"
    assert by_node["vhost-scsi"]["abi_version"] == 1


def test_info_text_without_modules(tmp_path, capsys):
    assert main(["vhost", "info", "--dev", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "modprobe vhost_net" in out and "modprobe vhost_scsi" in out


def test_missing_node_names_the_module(tmp_path):
    with pytest.raises(errors.ModuleMissingError) as ei:
        VhostNet(str(tmp_path / "vhost-net"))
    assert "modprobe vhost_net" in ei.value.remedy and ei.value.device == "vhost-net"


def test_node_owned_by_someone_else(tmp_path):
    """EACCES on open names the node's owner and mode and how to grant access."""
    import errno
    import os

    from pyvfio.core import syscalls

    node = tmp_path / "vhost-net"
    node.write_bytes(b"")
    os.chmod(node, 0o600)

    class Refusing(syscalls.Kernel):
        def open(self, path, flags, mode=0o600):
            if path == str(node):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return super().open(path, flags, mode)

    with syscalls.use(Refusing()):
        with pytest.raises(errors.PermissionDeniedError) as ei:
            VhostNet(str(node))
    text = str(ei.value)
    assert "owner uid" in text and "mode rw-------" in text and "chown" in ei.value.remedy
