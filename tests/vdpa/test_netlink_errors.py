"""Netlink errors become library errors with remedies (mock: a vdpa core not loaded, no
CAP_NET_ADMIN), and the CLI prints iproute2's JSON shape."""
from __future__ import annotations

import errno
import json

import pytest

from pyvfio import errors
from pyvfio.cli import main
from pyvfio.core.sysfs import use_host
from pyvfio.mock import mock_kernel
from pyvfio.vdpa.netlink import Vdpa


def test_family_missing_names_the_module(tmp_path):
    with mock_kernel(tmp_path, vdpa_loaded=False) as mk, use_host(mk.host):
        with pytest.raises(errors.ModuleMissingError) as ei:
            Vdpa()
    assert ei.value.errno == errno.ENOENT and "modprobe vdpa_sim_net" in ei.value.remedy


def test_no_cap_net_admin(tmp_path):
    with mock_kernel(tmp_path, net_admin=False) as mk, use_host(mk.host), Vdpa() as nl:
        assert [m.handle for m in nl.mgmtdevs()] == ["vdpasim_net", "vdpasim_blk"]
        with pytest.raises(errors.PermissionDeniedError) as ei:
            nl.dev_add("n0", "vdpasim_net")
        assert ei.value.errno == errno.EPERM and "CAP_NET_ADMIN" in ei.value.remedy
        assert ei.value.op == "VDPA_CMD_DEV_NEW"


def test_bad_arguments_refused_before_the_kernel(tmp_path):
    with mock_kernel(tmp_path) as mk, use_host(mk.host), Vdpa() as nl:
        for kw in ({"mac": "52:54:00"}, {"mtu": 0}, {"max_vqp": 70000}):
            with pytest.raises(errors.InvalidArgumentError):
                nl.dev_add("n0", "vdpasim_net", **kw)
        with pytest.raises(errors.InvalidArgumentError):
            nl.dev_add("a/b", "vdpasim_net")
        assert nl.devs() == []


def test_cli_json(tmp_path, capsys):
    with mock_kernel(tmp_path) as mk, use_host(mk.host):
        assert main(["vdpa", "dev", "add", "n0", "vdpasim_net", "--mac", "52:54:11:22:33:44",
                     "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == {"dev": {"n0": {
            "type": "network", "mgmtdev": "vdpasim_net", "vendor_id": 0, "max_vqs": 3,
            "max_vq_size": 256}}}
        assert main(["vdpa", "mgmtdev", "show", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["mgmtdev"]["vdpasim_blk"] == {"supported_classes": ["block"],
                                                 "max_supported_vqs": 0, "dev_features": []}
        assert out["mgmtdev"]["vdpasim_net"]["dev_features"] == [
            "MTU", "MAC", "STATUS", "CTRL_VQ", "CTRL_MAC_ADDR", "ANY_LAYOUT", "VERSION_1",
            "ACCESS_PLATFORM"]
        assert main(["vdpa", "dev", "config", "n0", "--json"]) == 0
        cfg = json.loads(capsys.readouterr().out)["config"]["n0"]
        assert (cfg["mac"], cfg["link"], cfg["link_announce"], cfg["mtu"]) == (
            "52:54:11:22:33:44", "up", False, 1500)
        assert main(["vdpa", "dev", "del", "n0"]) == 0
        assert main(["vdpa", "dev", "del", "n0"]) == 1
        assert "no such vDPA device" in capsys.readouterr().err
