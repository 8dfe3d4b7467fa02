"""`pyvfio doctor` on real kernels: a lab guest with the IOMMU on, and one without it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pyvfio import pci
from pyvfio.core import syscalls

pytestmark = pytest.mark.device


def test_doctor_in_the_lab(lab_target):
    """The real command on a real kernel: IOMMU on -> group verdicts; off -> the IOMMU remedy."""
    if lab_target.kind != "real":
        pytest.skip("needs a real kernel (lab guest); the host's own state is not a fixture")
    if lab_target.flavour == "stock":             # Debian's kernel has VFIO as modules
        syscalls.modprobe("vfio_pci")
    out = subprocess.run([sys.executable, "-m", "pyvfio", "doctor"], capture_output=True,
                         text=True, timeout=120)
    print(out.stdout)
    js = subprocess.run([sys.executable, "-m", "pyvfio", "doctor", "--json"],
                        capture_output=True, text=True, timeout=120)
    checks = {c["name"]: c for c in json.loads(js.stdout)}
    assert out.returncode == js.returncode == (1 if any(c["status"] == "fail"
                                                        for c in checks.values()) else 0)
    assert checks["memlock"]["status"] == "ok"                # root: CAP_IPC_LOCK
    assert checks["vfio"]["status"] == "ok"                   # built in (full) or loaded above
    if lab_target.iommu:
        assert checks["iommu"]["status"] == "ok"
        if lab_target.arch == "x86_64":                    # q35 with the emulated VT-d
            assert "Intel VT-d" in checks["iommu"]["detail"]
        elif lab_target.arch == "ppc64le":                 # pseries: one IOMMU per PHB
            assert "iommu-phb0000" in checks["iommu"]["detail"]
        assert [n for n in checks if n.startswith("group ")]
    else:
        assert checks["iommu"]["status"] == "fail"
        assert checks["iommu"]["remedy"] == pci.IOMMU_OFF_REMEDY
        assert not [n for n in checks if n.startswith("group ")]
