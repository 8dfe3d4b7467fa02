"""Host-only UIO tests: the CLI on the mock's sysfs, the pagemap refusal, the lab's module set."""
from __future__ import annotations

import json
import warnings

import pytest

from pyvfio import errors, uio
from pyvfio.cli import main
from pyvfio.core.memory import DmaBuffer
from uio_env import no_leaks  # noqa: F401 (fixture)


@pytest.fixture
def mock_env(tmp_path):
    from pyvfio.core.sysfs import host, use_host
    from pyvfio.mock import EduModel, mock_kernel
    from pyvfio.mock.uio import MsixModel
    devices = [EduModel("0000:00:10.0", group=5), MsixModel("0000:00:12.0", group=7),
               EduModel("0000:00:13.0", group=8)]
    with mock_kernel(tmp_path, devices=devices, iommu="type1",
                     uio={"0000:00:10.0": "uio_pci_generic", "0000:00:12.0": "uio_msi"},
                     cap_sys_admin=False) as mock:
        with use_host(host().with_roots(sysfs=mock.sysfs, dev=mock.devroot)):
            yield mock


def test_ls_shows_uio_bindings(mock_env, capsys):
    assert main(["--sysfs", mock_env.sysfs, "ls"]) == 0
    out = capsys.readouterr().out.splitlines()
    row = {line.split()[0]: line for line in out[1:]}
    assert "uio_pci_generic (uio0)" in row["0000:00:10.0"]
    assert "uio_msi (uio1)" in row["0000:00:12.0"]
    assert "vfio-pci" in row["0000:00:13.0"] and "(uio" not in row["0000:00:13.0"]
    assert main(["--sysfs", mock_env.sysfs, "ls", "--json"]) == 0
    records = {r["address"]: r for r in json.loads(capsys.readouterr().out)}
    assert records["0000:00:10.0"]["uio"] == "uio0"
    assert records["0000:00:12.0"]["uio"] == "uio1"
    assert records["0000:00:13.0"]["uio"] is None


def test_pagemap_without_privilege_is_refused(mock_env):
    """The mock's pagemap shows frame 0, as Linux does without CAP_SYS_ADMIN."""
    with uio.open_uio("0000:00:10.0") as dev, DmaBuffer(4096) as buf:
        with warnings.catch_warnings():
            warnings.simplefilter("error", uio.UioDmaWarning)  # refused before any warning
            with pytest.raises(errors.PermissionDeniedError) as exc:
                dev.bus_address(buf)
        assert exc.value.device == dev.name
        assert "CAP_SYS_ADMIN" in exc.value.remedy
        assert exc.value.path.endswith("pagemap")


def test_uio_msi_is_built_for_both_lab_kernels():
    from pyvfio.lab.oot import UIO_MSI, extras_for
    assert UIO_MSI in extras_for("stock") and UIO_MSI in extras_for("full")
    assert (UIO_MSI.source_dir / "uio_msi.c").read_text().startswith(
        "// SPDX-License-Identifier: GPL-2.0\n")
    assert [h.name for h in UIO_MSI.headers] == ["uio_msi.h"]
